/**
 * A run's checkpoints: `<output_dir>/checkpoint-<step>` folders in the core's format (written aside and renamed
 * into place by `Trainer.save`), and `latest`, a symbolic link to the newest complete one. `latest` is replaced by
 * renaming a fresh link over it, so at every instant it names a complete checkpoint — the previous or the new one —
 * and a run killed at any moment resumes from it. Only the newest `keep` checkpoints stay.
 */
import { existsSync, readdirSync, readlinkSync, renameSync, rmSync, statSync, symlinkSync, unlinkSync } from 'node:fs'
import { join, resolve } from 'node:path'

import { MarvelError } from '../errors.js'
import type { Trainer } from '../trainer.js'

const PATTERN = /^checkpoint-(\d+)$/

export function checkpointName(step: number): string {
  return `checkpoint-${step}`
}

/** The folder `latest` names, or null when the run has none yet (or `latest` names a folder that is gone). */
export function latestCheckpoint(outputDir: string): string | null {
  const link = join(outputDir, 'latest')
  let target: string
  try {
    target = readlinkSync(link)
  } catch {
    return null
  }
  // A Windows junction stores an absolute target; a POSIX link the relative name written below.
  const dir = resolve(outputDir, target)
  try {
    return statSync(dir).isDirectory() ? dir : null
  } catch {
    return null
  }
}

/**
 * The checkpoint a run continues from: the folder `latest` names, else the newest `checkpoint-<step>` folder (each is
 * renamed into place only once complete, so one exists without `latest` when a run was killed between its first
 * save's rename and the link, or `latest` was lost); null for a run that has none. `recovered` says `latest` did not
 * name it.
 */
export function resumePoint(outputDir: string): { dir: string; recovered: boolean } | null {
  const latest = latestCheckpoint(outputDir)
  if (latest) return { dir: latest, recovered: false }
  const steps = checkpointSteps(outputDir)
  if (steps.length === 0) return null
  return { dir: join(outputDir, checkpointName(steps[steps.length - 1])), recovered: true }
}

/** Points `latest` at `name` in one rename (a link made beside it first). */
export function pointLatest(outputDir: string, name: string): void {
  const tmp = join(outputDir, `.latest-${process.pid}`)
  try {
    if (existsSync(tmp) || isLink(tmp)) unlinkSync(tmp)
    // 'junction' lets Windows make the link without privileges; elsewhere the type is ignored.
    symlinkSync(name, tmp, 'junction')
    renameSync(tmp, join(outputDir, 'latest'))
  } catch (e) {
    throw new MarvelError('MARVEL_IO', `cannot point ${join(outputDir, 'latest')} at ${name}: ${(e as Error).message}`, { cause: e })
  }
}

function isLink(path: string): boolean {
  try {
    readlinkSync(path)
    return true
  } catch {
    return false
  }
}

/** The steps of the run's checkpoint folders, ascending. */
export function checkpointSteps(outputDir: string): number[] {
  let names: string[]
  try {
    names = readdirSync(outputDir)
  } catch {
    return []
  }
  return names
    .map((n) => PATTERN.exec(n))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]))
    .sort((a, b) => a - b)
}

/** Saves `checkpoint-<step>` with the data position, points `latest` at it, then removes all but the newest `keep`. */
export async function saveCheckpoint(trainer: Trainer, outputDir: string, step: number, position: unknown, keep: number): Promise<string> {
  const name = checkpointName(step)
  const dir = join(outputDir, name)
  await trainer.save(dir, position)
  pointLatest(outputDir, name)
  const steps = checkpointSteps(outputDir)
  for (const old of steps.slice(0, Math.max(0, steps.length - keep))) {
    if (old !== step) rmSync(join(outputDir, checkpointName(old)), { recursive: true, force: true })
  }
  return dir
}

/**
 * Removes what a killed run left half-written: checkpoint folders being written (`.checkpoint-<step>.partial-<pid>`,
 * as large as a checkpoint) or being replaced, and `latest` links being made. Called by the only writer before it
 * writes anything, so nothing in flight is removed.
 */
export function removeLeftovers(outputDir: string): string[] {
  let names: string[]
  try {
    names = readdirSync(outputDir)
  } catch {
    return []
  }
  const stale = names.filter((n) => /^\.checkpoint-\d+\.(partial|old)-\d+$/.test(n) || /^\.latest-\d+$/.test(n))
  for (const n of stale) rmSync(join(outputDir, n), { recursive: true, force: true })
  return stale
}
