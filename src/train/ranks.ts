/**
 * Data-parallel ranks. A rank is told its place by `--rank` / `--world-size` or, as torchrun and Slurm job scripts
 * set them, the `RANK` / `WORLD_SIZE` environment variables. Each rank reads its own part of the data; rank 0 alone
 * writes checkpoints, logs and grids. `stepBatch` is the one place a rank's batch meets the trainer: averaging the
 * gradients across ranks before the optimizer step belongs there.
 */
import { MarvelError } from '../errors.js'
import type { StepOptions, Trainer, TrainStepResult } from '../trainer.js'

export interface Ranks {
  rank: number
  worldSize: number
}

function parse(name: string, value: string | number | undefined, min: number): number | undefined {
  if (value === undefined || value === '') return undefined
  const n = typeof value === 'number' ? value : /^\d+$/.test(value.trim()) ? Number(value) : NaN
  if (!Number.isSafeInteger(n) || n < min) throw new MarvelError('MARVEL_INVALID_ARGUMENT', `${name} must be an integer ≥ ${min}, got ${JSON.stringify(value)}`)
  return n
}

/** This process's rank: explicit values first, then the environment, then a single rank. */
export function ranksOf(explicit: { rank?: number; worldSize?: number } = {}, env: NodeJS.ProcessEnv = process.env): Ranks {
  const worldSize = parse('world size', explicit.worldSize, 1) ?? parse('WORLD_SIZE', env.WORLD_SIZE, 1) ?? 1
  const rank = parse('rank', explicit.rank, 0) ?? parse('RANK', env.RANK, 0) ?? 0
  if (rank >= worldSize) throw new MarvelError('MARVEL_INVALID_ARGUMENT', `rank ${rank} is not below the world size ${worldSize}`)
  return { rank, worldSize }
}

/** A batch as the trainer takes it. */
export interface TrainBatch {
  images: Uint8Array
  proxyCodes?: Int32Array
}

/**
 * One micro-batch through the trainer. With several ranks, this is where their gradients must be averaged before
 * the update; until the core offers that exchange, several ranks are refused when training starts (see
 * `checkRanks`), so no rank ever trains alone believing it is in a group.
 */
export async function stepBatch(trainer: Trainer, batch: TrainBatch): Promise<TrainStepResult> {
  const options: StepOptions = batch.proxyCodes ? { proxyCodes: batch.proxyCodes } : {}
  return trainer.step(batch.images, options)
}

/**
 * Every rank's `mine`, in rank order, on every rank: rank 0 saves all ranks' data positions in its checkpoint so each
 * rank resumes its own stream. With one rank that is `[mine]`; several ranks exchange them through the collective.
 */
export async function gatherPositions<T>(ranks: Ranks, mine: T): Promise<T[]> {
  if (ranks.worldSize === 1) return [mine]
  throw new MarvelError('MARVEL_INVALID_ARGUMENT', `world size ${ranks.worldSize}: gathering the ranks' data positions needs the collective`)
}

export function checkRanks(ranks: Ranks): void {
  if (ranks.worldSize > 1) {
    throw new MarvelError(
      'MARVEL_INVALID_ARGUMENT',
      `world size ${ranks.worldSize}: averaging gradients across ranks is not available in this build, so several ranks would train apart; run one rank`,
    )
  }
}
