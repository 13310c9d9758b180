/**
 * A minimal reader for tar archives (webdataset shards): an index of the regular files from the 512-byte headers
 * alone (ustar names with their prefix, GNU long names `L`, pax `path` records), then any member's bytes read on
 * demand. Memory stays at one member, however large the shard.
 */
import { open, type FileHandle } from 'node:fs/promises'

import { MarvelError } from '../errors.js'

const BLOCK = 512

export interface TarEntry {
  /** Member path inside the archive. */
  name: string
  /** Byte offset of its data in the archive. */
  offset: number
  size: number
}

const text = (b: Buffer, start: number, len: number) => {
  const field = b.subarray(start, start + len)
  const end = field.indexOf(0)
  return field.subarray(0, end < 0 ? len : end).toString('utf8')
}

/** A numeric header field: octal text, or GNU base-256 when the high bit of its first byte is set. */
function number(b: Buffer, start: number, len: number): number {
  if (b[start] & 0x80) {
    let v = b[start] & 0x7f
    for (let i = 1; i < len; i++) v = v * 256 + b[start + i]
    return v
  }
  const s = text(b, start, len).trim()
  return s === '' ? 0 : parseInt(s, 8)
}

/** The header's checksum: the sum of its bytes with the checksum field itself counted as spaces. */
function checksumOk(b: Buffer): boolean {
  let sum = 0
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 32 : b[i]
  return sum === number(b, 148, 8)
}

/** The `path` record of a pax extended header, if any (`"<len> path=<value>\n"` records). */
function paxPath(data: Buffer): string | undefined {
  const s = data.toString('utf8')
  const m = /(?:^|\n)\d+ path=([^\n]*)\n/.exec(s)
  return m?.[1]
}

async function readAt(fh: FileHandle, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length)
  let done = 0
  while (done < length) {
    const { bytesRead } = await fh.read(buf, done, length - done, offset + done)
    if (bytesRead === 0) break
    done += bytesRead
  }
  return buf.subarray(0, done)
}

/** The regular files of the tar archive at `path`, in archive order. */
export async function tarIndex(path: string): Promise<TarEntry[]> {
  let fh: FileHandle
  try {
    fh = await open(path, 'r')
  } catch (e) {
    throw new MarvelError('MARVEL_IO', `cannot open shard ${path}: ${(e as Error).message}`, { cause: e })
  }
  const entries: TarEntry[] = []
  try {
    const { size: total } = await fh.stat()
    let offset = 0
    let longName: string | undefined
    while (offset + BLOCK <= total) {
      const header = await readAt(fh, offset, BLOCK)
      if (header.every((v) => v === 0)) break
      if (!checksumOk(header)) throw new MarvelError('MARVEL_IO', `shard ${path} is not a tar archive (bad header checksum at byte ${offset})`)
      const size = number(header, 124, 12)
      const type = String.fromCharCode(header[156] || 48)
      const dataOffset = offset + BLOCK
      if (dataOffset + size > total) throw new MarvelError('MARVEL_IO', `shard ${path} is truncated: a member at byte ${offset} needs ${size} bytes`)
      if (type === 'L' || type === 'x') {
        const data = await readAt(fh, dataOffset, size)
        longName = type === 'L' ? text(data, 0, data.length) : (paxPath(data) ?? longName)
      } else {
        if (type === '0' || type === '7') {
          const prefix = header.subarray(257, 263).toString('latin1').startsWith('ustar') ? text(header, 345, 155) : ''
          const name = longName ?? (prefix ? `${prefix}/${text(header, 0, 100)}` : text(header, 0, 100))
          entries.push({ name, offset: dataOffset, size })
        }
        longName = undefined
      }
      offset = dataOffset + Math.ceil(size / BLOCK) * BLOCK
    }
  } finally {
    await fh.close()
  }
  return entries
}

/** The bytes of one member listed by `tarIndex(path)`. */
export async function readTarEntry(path: string, entry: TarEntry): Promise<Buffer> {
  const fh = await open(path, 'r')
  try {
    const data = await readAt(fh, entry.offset, entry.size)
    if (data.length !== entry.size) throw new MarvelError('MARVEL_IO', `shard ${path} is truncated in ${entry.name}`)
    return data
  } finally {
    await fh.close()
  }
}
