/**
 * Data-parallel ranks in the training loop. A rank is told its place by `--rank` / `--world-size` or, as torchrun and
 * Slurm job scripts set them, the `RANK` / `WORLD_SIZE` environment variables. Each rank reads its own part of the
 * data; rank 0 alone writes checkpoints, logs and grids. With several ranks, every exchange goes through the one
 * collective of `ProcessGroup` (`allReduceMean`): gradients before each update, the stop decision after each step, and
 * the data positions each checkpoint keeps.
 */
import { MarvelError } from '../errors.js'
import type { StepOptions, Trainer, TrainStepResult } from '../trainer.js'
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
  if (!group) return trainer.step(batch.images, options)
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
