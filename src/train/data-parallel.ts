/**
 * Data-parallel ranks in the training loop. A rank is told its place by `--rank` / `--world-size` or, as torchrun and
 * Slurm job scripts set them, the `RANK` / `WORLD_SIZE` environment variables. Each rank reads its own part of the
 * data; rank 0 alone writes checkpoints, logs and grids. With several ranks, every exchange goes through the one
 * collective of `ProcessGroup` (`allReduceMean`): gradients before each update, the stop decision after each step, and
 * the data positions each checkpoint keeps.
 */
import { MarvelError } from '../errors.js'
import { Trainer, type StepOptions, type TrainStepResult } from '../trainer.js'
import { MAX_WORLD_SIZE, ProcessGroup, rankInteger } from './ranks.js'

export interface Ranks {
  rank: number
  worldSize: number
}

/** This process's rank: explicit values first, then the environment, then a single rank. */
export function ranksOf(explicit: { rank?: number; worldSize?: number } = {}, env: NodeJS.ProcessEnv = process.env): Ranks {
  const worldSize = rankInteger('worldSize', explicit.worldSize, 1, MAX_WORLD_SIZE) ?? rankInteger('WORLD_SIZE', env.WORLD_SIZE, 1, MAX_WORLD_SIZE) ?? 1
  const rank = rankInteger('rank', explicit.rank, 0, MAX_WORLD_SIZE - 1) ?? rankInteger('RANK', env.RANK, 0, MAX_WORLD_SIZE - 1) ?? 0
  if (rank >= worldSize) throw new MarvelError('MARVEL_INVALID_ARGUMENT', `rank ${rank} is not below the world size ${worldSize}`)
  return { rank, worldSize }
}

/** The collective of these ranks: none for a single rank; several need a process started by `launchRanks`. */
export function groupOf(ranks: Ranks): ProcessGroup | null {
  if (ranks.worldSize === 1) return null
  return ProcessGroup.fromEnv({ ...process.env, RANK: String(ranks.rank), WORLD_SIZE: String(ranks.worldSize) })
}

/** A batch as the trainer takes it. */
export interface TrainBatch {
  images: Uint8Array
  proxyCodes?: Int32Array
}

/**
 * One micro-batch through the trainer. With several ranks, each accumulates its micro-batches locally and the
 * accumulated gradients are averaged across the ranks once per optimizer step, before the update.
 */
export async function stepBatch(trainer: Trainer, batch: TrainBatch, group: ProcessGroup | null): Promise<TrainStepResult> {
  const options: StepOptions = batch.proxyCodes ? { proxyCodes: batch.proxyCodes } : {}
  // GPU ranks joined by `joinDevices` average inside `step`, on the devices.
  if (!group || trainer.device !== 'cpu') return trainer.step(batch.images, options)
  const r = await trainer.gradients(batch.images, options)
  if (r.gradients === null) return { step: r.step, lr: r.lr, loss: r.loss, components: r.components, gradNorm: null }
  return trainer.applyGradients(await group.allReduceMean(r.gradients))
}

/** Whether any rank wants to stop: all ranks stop after the same step, so none is left waiting in a collective. */
export async function agreeToStop(group: ProcessGroup | null, mine: boolean): Promise<boolean> {
  if (!group) return mine
  return (await group.allReduceMean(Float32Array.of(mine ? 1 : 0)))[0] > 0
}

/**
 * Every rank's `mine`, in rank order, on every rank: rank 0 saves all ranks' data positions in its checkpoint so each
 * rank resumes its own stream. Through the averaging collective: each rank puts its JSON's bytes in its own slot and
 * zeros elsewhere, so the mean times the world size gives back every byte (below 256, exactly, after rounding).
 */
export async function gatherPositions<T>(group: ProcessGroup | null, mine: T): Promise<T[]> {
  if (!group) return [mine]
  const n = group.worldSize
  const bytes = new TextEncoder().encode(JSON.stringify(mine))
  const lengths = new Float32Array(n)
  lengths[group.rank] = bytes.length
  const sizes = Array.from(await group.allReduceMean(lengths), (v) => Math.round(v * n))
  const offsets = sizes.map((_, r) => sizes.slice(0, r).reduce((a, b) => a + b, 0))
  const slots = new Float32Array(sizes.reduce((a, b) => a + b, 0))
  slots.set(bytes, offsets[group.rank])
  const all = await group.allReduceMean(slots)
  const decoder = new TextDecoder()
  return sizes.map((size, r) => {
    const part = Uint8Array.from(all.subarray(offsets[r], offsets[r] + size), (v) => Math.round(v * n))
    return JSON.parse(decoder.decode(part)) as T
  })
}

/**
 * GPU ranks: rank 0 makes the NCCL id and every rank joins the NCCL group with it, so each step's gradient mean is an
 * all-reduce on the GPUs. The id travels through the launcher's averaging collective like `gatherPositions`' bytes:
 * rank 0 contributes its bytes and the others zeros, so the mean times the world size is rank 0's bytes.
 */
export async function joinDevices(trainer: Trainer, group: ProcessGroup | null): Promise<void> {
  if (!group || trainer.device === 'cpu') return
  const n = group.worldSize
  const mine = new Float32Array(128)
  if (group.rank === 0) {
    const hex = Trainer.ncclId()
    for (let i = 0; i < 128; i++) mine[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16)
  }
  const bytes = Array.from(await group.allReduceMean(mine), (v) => Math.round(v * n))
  await trainer.joinNccl(bytes.map((b) => b.toString(16).padStart(2, '0')).join(''), group.rank, n)
}

/**
 * One GPU per rank: before any CUDA call, a rank of a multi-rank GPU run sees only its own GPU (the `LOCAL_RANK`-th
 * of those visible), so `'cuda'` in the shared config means a different GPU on each rank and a checkpoint resumes on
 * any set of GPUs. The driver reads `CUDA_VISIBLE_DEVICES` when CUDA starts, which is after this.
 */
export function pinLocalGpu(ranks: Ranks, configuredDevice: unknown, env: NodeJS.ProcessEnv = process.env): void {
  if (ranks.worldSize === 1 || typeof configuredDevice !== 'string' || !configuredDevice.startsWith('cuda')) return
  if (configuredDevice !== 'cuda') {
    throw new MarvelError('MARVEL_CONFIG', `training.device is ${configuredDevice}; a run of ${ranks.worldSize} ranks takes 'cuda' (each rank uses the GPU of its LOCAL_RANK)`)
  }
  const local = Number(env.LOCAL_RANK ?? ranks.rank)
  const visible = env.CUDA_VISIBLE_DEVICES?.split(',').filter((d) => d !== '')
  if (visible && visible.length > 0 && local >= visible.length) {
    // Two ranks on one GPU would each hold a whole model and fail later inside NCCL with a less telling error.
    throw new MarvelError('MARVEL_CONFIG', `rank ${local} has no GPU of its own: CUDA_VISIBLE_DEVICES lists ${visible.length} (${visible.join(',')}); run at most ${visible.length} ranks`)
  }
  env.CUDA_VISIBLE_DEVICES = visible && visible.length > 0 ? visible[local] : String(local)
}
