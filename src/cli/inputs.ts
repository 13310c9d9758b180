/**
 * Command-line image arguments to a list of files: a file stands for itself, a folder for its image files, a glob
 * for the image files it matches (folder contents and glob matches sorted by name, not recursive).
 */
import * as fs from 'node:fs'
import { readdir, stat } from 'node:fs/promises'
import { dirname, extname, join, sep } from 'node:path'

import { MarvelError } from '../errors.js'
import { UsageError } from './common.js'

/** What folders and globs select (the formats sharp decodes). */
export const IMAGE_EXTENSIONS = ['.png', '.jpg', '.jpeg', '.webp', '.tif', '.tiff', '.gif']

const isImageFile = (name: string) => IMAGE_EXTENSIONS.includes(extname(name).toLowerCase())
const hasWildcard = (s: string) => /[*?]/.test(s)

type GlobFn = (pattern: string) => AsyncIterable<string>

/** `*` and `?` of one path segment as a regex; like a shell, wildcards do not match a leading dot. */
function segmentRegex(segment: string): RegExp {
  const body = segment.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]')
  return new RegExp(`^${/^[*?]/.test(segment) ? '(?!\\.)' : ''}${body}$`)
}

/** Node 22+ has `fs.promises.glob` (any segment, `**`); on Node 20 wildcards are matched in the last segment. */
async function glob(pattern: string): Promise<string[]> {
  const nodeGlob = (fs.promises as unknown as { glob?: GlobFn }).glob
  const found: string[] = []
  if (nodeGlob) {
    for await (const path of nodeGlob(pattern)) found.push(path)
  } else {
    const normalized = pattern.split(sep).join('/')
    const slash = normalized.lastIndexOf('/')
    const dir = slash < 0 ? '.' : normalized.slice(0, slash) || '/'
    if (hasWildcard(dir)) {
      throw new UsageError(`glob ${pattern}: on Node ${process.versions.node} wildcards (* and ?) work in the last path segment only`)
    }
    const re = segmentRegex(normalized.slice(slash + 1))
    const names = await readdir(dir).catch(() => [] as string[])
    for (const name of names) if (re.test(name)) found.push(slash < 0 ? name : join(dir, name))
  }
  // As for a folder: what is named like an image but is not a regular file is kept, to be refused by name.
  return found.filter(isImageFile).sort()
}

async function folderImages(dir: string): Promise<string[]> {
  let entries
  try {
    entries = await readdir(dir, { withFileTypes: true })
  } catch (e) {
    throw new MarvelError('MARVEL_IO', `cannot list folder ${dir}: ${(e as Error).message}`, { cause: e })
  }
  // Every entry named like an image, whatever it is: a FIFO, a folder or a dangling link called e.png is then refused
  // by name when it is read (skipped with --skip-errors), instead of vanishing from the count.
  return entries
    .filter((e) => isImageFile(e.name))
    .map((e) => join(dir, e.name))
    .sort()
}

/** Every argument expanded, in argument order. A path that does not exist, an empty folder or a glob that matches nothing is an error. */
export async function expandInputs(args: readonly string[]): Promise<string[]> {
  const out: string[] = []
  for (const arg of args) {
    const info = await stat(arg).catch(() => undefined)
    if (info?.isDirectory()) {
      const images = await folderImages(arg)
      if (images.length === 0) throw new MarvelError('MARVEL_IO', `folder ${arg} holds no image files (${IMAGE_EXTENSIONS.join(' ')})`)
      out.push(...images)
    } else if (info) {
      out.push(arg)
    } else if (hasWildcard(arg)) {
      const images = await glob(arg)
      if (images.length === 0) throw new MarvelError('MARVEL_IO', `no image files match ${arg} (in ${dirname(arg)})`)
      out.push(...images)
    } else {
      throw new MarvelError('MARVEL_IO', `input ${arg} not found`)
    }
  }
  return out
}
