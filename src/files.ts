/**
 * Checks on paths before anything reads them. A FIFO or a character device handed to a reader blocks a libuv worker
 * forever (and with it process exit), and C readers such as libvips stop a path at its first NUL byte, so a path
 * with one would silently name another file: both are refused here, before any read starts.
 */
import { realpathSync } from 'node:fs'
import { stat } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'

import { MarvelError, invalidParameter } from './errors.js'

/** `value` as a non-empty path string without NUL bytes, or an argument error naming `name` in `where`. */
export function pathParameter(where: string, name: string, value: unknown): string {
  if (typeof value !== 'string' || value === '') throw invalidParameter(where, name, 'a non-empty path', value)
  if (value.includes('\0')) throw invalidParameter(where, name, 'a path without NUL bytes', value)
  return value
}

type Kind = 'file' | 'directory'

function kindOf(info: { isFile(): boolean; isDirectory(): boolean; isFIFO(): boolean; isSocket(): boolean; isCharacterDevice(): boolean; isBlockDevice(): boolean }): string {
  if (info.isFile()) return 'a regular file'
  if (info.isDirectory()) return 'a directory'
  if (info.isFIFO()) return 'a FIFO (named pipe)'
  if (info.isSocket()) return 'a socket'
  if (info.isCharacterDevice()) return 'a character device'
  if (info.isBlockDevice()) return 'a block device'
  return 'not a regular file'
}

/**
 * Resolves when `path` (symbolic links followed) is a regular file, or a directory when `kind` says so; otherwise
 * a `MARVEL_IO` error saying what `what` (e.g. "image") is instead: missing, a FIFO, a directory, ...
 */
export async function expectKind(path: string, what: string, kind: Kind = 'file'): Promise<void> {
  let info
  try {
    info = await stat(path)
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code
    const why = code === 'ENOENT' || code === 'ENOTDIR' ? 'file not found' : (e as Error).message
    throw new MarvelError('MARVEL_IO', `cannot read ${what} ${path}: ${why}`, { cause: e })
  }
  const ok = kind === 'file' ? info.isFile() : info.isDirectory()
  if (!ok) {
    const expected = kind === 'file' ? 'a regular file' : 'a directory'
    throw new MarvelError('MARVEL_IO', `cannot read ${what} ${path}: it is ${kindOf(info)}, not ${expected}`)
  }
}

/**
 * `value` as a path a file may be written to: a path parameter (see `pathParameter`) naming nothing yet or a
 * regular file (links followed). Writing to a FIFO blocks until some reader opens it, which from a CLI is forever,
 * and a device or a socket is never what an output path means: both are refused with `MARVEL_IO` before any write.
 */
export async function outputPath(where: string, name: string, value: unknown, what: string): Promise<string> {
  const path = pathParameter(where, name, value)
  const info = await stat(path).catch(() => undefined)
  // Absent (or unreachable: the write itself then fails with the system's reason).
  if (info && !info.isFile()) throw new MarvelError('MARVEL_IO', `cannot write ${what} ${path}: it is ${kindOf(info)}, not a regular file`)
  return path
}

/**
 * The canonical form of `path`: symbolic links of its longest existing prefix resolved, the rest appended. Two
 * paths naming one folder (`out`, `./out/`, a link to it) compare equal even when the folder does not exist yet.
 */
export function canonicalPath(path: string): string {
  let head = resolve(path)
  const tail: string[] = []
  for (;;) {
    try {
      return resolve(realpathSync(head), ...tail.reverse())
    } catch {
      const up = dirname(head)
      if (up === head) return resolve(path)
      tail.push(head.slice(up.length).replace(/^[\\/]/, ''))
      head = up
    }
  }
}
