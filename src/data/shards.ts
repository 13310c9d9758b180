/**
 * What `dataset.params.train_shards_path_or_url` names: webdataset `.tar` shards (a path, a brace pattern
 * `train-{0000..0127}.tar` or `{a,b}`, several of these joined by `::` as webdataset does, or a folder of shards) or a
 * folder of images. Everything it names must exist when training starts: a missing shard is an error naming it
 * then, not a gap discovered hours later.
 */
import { readdirSync, statSync } from 'node:fs'
import { extname, join, relative, sep } from 'node:path'

import { MarvelError } from '../errors.js'

/** Image file extensions read from folders and from webdataset samples, in order of preference within a sample. */
export const IMAGE_EXTENSIONS = ['jpg', 'jpeg', 'png', 'webp', 'ppm', 'bmp', 'tif', 'tiff', 'gif'] as const

/** The most names one pattern may expand to: a typo such as `{0..99999999}` should fail, not allocate. */
const MAX_EXPANSION = 1_000_000

export type DataSource =
  | { kind: 'shards'; units: string[] }
  /** `units` are image files; `classes` the sorted sub-folder names (a file's class is its first folder). */
  | { kind: 'images'; root: string; units: string[]; classes: string[] }

function expandOne(pattern: string, key: string): string[] {
  const m = /\{([^{}]*)\}/.exec(pattern)
  if (!m) return [pattern]
  const body = m[1]
  let items: string[]
  const range = /^(\d+)\.\.(\d+)$/.exec(body)
  if (range) {
    const [a, b] = [Number(range[1]), Number(range[2])]
    if (b < a) throw new MarvelError('MARVEL_CONFIG', `${key}: the range {${body}} runs backwards`)
    if (b - a + 1 > MAX_EXPANSION) throw new MarvelError('MARVEL_CONFIG', `${key}: the range {${body}} names more than ${MAX_EXPANSION} shards`)
    // Zero padding follows the first bound, as braceexpand does: {0000..0127} gives 0000, 0001, ...
    const width = range[1].length
    items = Array.from({ length: b - a + 1 }, (_, i) => String(a + i).padStart(width, '0'))
  } else {
    items = body.split(',')
  }
  const head = pattern.slice(0, m.index)
  const tail = pattern.slice(m.index + m[0].length)
  const out: string[] = []
  for (const item of items) {
    for (const rest of expandOne(tail, key)) {
      out.push(head + item + rest)
      if (out.length > MAX_EXPANSION) throw new MarvelError('MARVEL_CONFIG', `${key}: ${pattern} names more than ${MAX_EXPANSION} shards`)
    }
  }
  return out
}

/** Brace patterns expanded (`a-{00..02}.tar` → `a-00.tar`, `a-01.tar`, `a-02.tar`); `::` separates patterns. */
export function expandBraces(spec: string, key = 'shards'): string[] {
  return spec.split('::').filter((s) => s !== '').flatMap((s) => expandOne(s, key))
}

function isImageFile(name: string): boolean {
  return (IMAGE_EXTENSIONS as readonly string[]).includes(extname(name).slice(1).toLowerCase())
}

/** Image files under `root`, recursively, in a fixed (sorted) order. */
export function listImages(root: string): string[] {
  const out: string[] = []
  const walk = (dir: string) => {
    for (const entry of readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
      const path = join(dir, entry.name)
      if (entry.isDirectory()) walk(path)
      else if (isImageFile(entry.name)) out.push(path)
    }
  }
  walk(root)
  return out
}

/** The class names of an image folder: its sorted first-level sub-folders holding images (torchvision ImageFolder's rule). */
export function classesOf(root: string, files: readonly string[]): string[] {
  const names = new Set<string>()
  for (const f of files) {
    const parts = relative(root, f).split(sep)
    if (parts.length > 1) names.add(parts[0])
  }
  return [...names].sort()
}

function kindOf(path: string): 'file' | 'directory' | 'missing' | 'other' {
  try {
    const s = statSync(path)
    return s.isFile() ? 'file' : s.isDirectory() ? 'directory' : 'other'
  } catch {
    return 'missing'
  }
}

/**
 * The shards or images `spec` names, checked to exist. `key` names the config key in errors. A folder holding
 * `.tar` files is a folder of shards; any other folder is read as images.
 */
export function resolveSource(spec: string, key: string): DataSource {
  if (typeof spec !== 'string' || spec.trim() === '') throw new MarvelError('MARVEL_CONFIG', `${key} must name shards or an image folder`)
  const paths = expandBraces(spec, key)
  if (paths.length === 1 && kindOf(paths[0]) === 'directory') {
    const dir = paths[0]
    const tars = readdirSync(dir).filter((f) => f.endsWith('.tar')).sort()
    if (tars.length > 0) return { kind: 'shards', units: tars.map((f) => join(dir, f)) }
    const units = listImages(dir)
    if (units.length === 0) throw new MarvelError('MARVEL_IO', `${key}: folder ${dir} holds neither .tar shards nor images`)
    return { kind: 'images', root: dir, units, classes: classesOf(dir, units) }
  }
  const missing = paths.filter((p) => kindOf(p) !== 'file')
  if (missing.length > 0) {
    const shown = missing.slice(0, 3).join(', ') + (missing.length > 3 ? ` and ${missing.length - 3} more` : '')
    throw new MarvelError('MARVEL_IO', `${key}: shard${missing.length > 1 ? 's' : ''} not found (or not a regular file): ${shown}`)
  }
  return { kind: 'shards', units: paths }
}

/**
 * Rank `rank` of `worldSize`'s part of the units. Whole shards go to ranks round-robin when there are at least as
 * many shards as ranks (each rank then reads only its own files); otherwise every rank reads every shard and keeps
 * every `worldSize`-th sample (see `SampleStream`'s `sampleStride`).
 */
export function unitsOfRank(units: readonly string[], rank: number, worldSize: number): { units: string[]; sampleStride: number; sampleOffset: number } {
  if (worldSize <= 1) return { units: [...units], sampleStride: 1, sampleOffset: 0 }
  if (units.length >= worldSize) return { units: units.filter((_, i) => i % worldSize === rank), sampleStride: 1, sampleOffset: 0 }
  return { units: [...units], sampleStride: worldSize, sampleOffset: rank }
}
