/**
 * A tar reader for webdataset shards: random access by byte offset (a data position is a shard and an offset), one
 * member's data in memory at a time, and damage reported per member instead of per shard. Reads POSIX ustar, GNU
 * tar (long names, base-256 sizes) and pax headers, which is what `tar`, Python's `tarfile` and webdataset write.
 *
 * Every read advances by at least one 512-byte block and never past the end of the file, so no input can make a
 * reader loop; malformed input is a `TarError` (code `MARVEL_IO`) saying what was found where.
 */
import { open, type FileHandle } from 'node:fs/promises'

import { MarvelError } from '../errors.js'

const BLOCK = 512
/** A webdataset member is an image or a label; anything larger is damage (a bogus size field), not data. */
export const MAX_MEMBER_BYTES = 256 * 1024 * 1024
/** pax and GNU long-name records hold a path; larger ones are damage too. */
const MAX_META_BYTES = 1024 * 1024

/** `corrupt`: a header that is not one (bad checksum, bad size); `truncated`: the file ends inside a member. */
export type TarDamage = 'corrupt' | 'truncated'

export class TarError extends MarvelError {
  readonly damage: TarDamage
  readonly offset: number

  constructor(damage: TarDamage, path: string, offset: number, why: string) {
    super('MARVEL_IO', `${damage} tar ${path} at byte ${offset}: ${why}`)
    this.name = 'TarError'
    this.damage = damage
    this.offset = offset
  }
}

/** One regular file of the archive. */
export interface TarMember {
  name: string
  /** Offset of the member's first header (pax / long-name headers included): where a reader resumes to read it again. */
  offset: number
  dataOffset: number
  size: number
  /** Offset of the next member's first header. */
  next: number
}

function text(block: Buffer, start: number, length: number): string {
  const field = block.subarray(start, start + length)
  const end = field.indexOf(0)
  return field.subarray(0, end < 0 ? length : end).toString('utf8')
}

/** A numeric field: octal digits (space/NUL padded), or GNU base-256 when the high bit of the first byte is set. */
function number(block: Buffer, start: number, length: number): number {
  const field = block.subarray(start, start + length)
  if (field[0] & 0x80) {
    if (field[0] !== 0x80) return NaN // negative, or beyond 2^53: never a member size
    let n = 0
    for (let i = 1; i < length; i++) n = n * 256 + field[i]
    return Number.isSafeInteger(n) ? n : NaN
  }
  const digits = field.toString('latin1').replace(/[\0 ]+$/, '').replace(/^ +/, '')
  return /^[0-7]+$/.test(digits) ? parseInt(digits, 8) : digits === '' ? 0 : NaN
}

/** The header checksum is the byte sum with its own field read as spaces; old tars summed signed bytes. */
function checksumOk(block: Buffer): boolean {
  const stored = number(block, 148, 8)
  if (!Number.isFinite(stored)) return false
  let unsigned = 0
  let signed = 0
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 32 : block[i]
    unsigned += b
    signed += b > 127 ? b - 256 : b
  }
  return stored === unsigned || stored === signed
}

/** pax records: `<length> <key>=<value>\n`, repeated. Only `path` and `size` matter to a reader. */
function paxRecords(data: Buffer): Map<string, string> {
  const out = new Map<string, string>()
  let at = 0
  while (at < data.length) {
    const space = data.indexOf(0x20, at)
    if (space < 0) break
    const length = Number(data.toString('latin1', at, space))
    if (!Number.isInteger(length) || length <= space - at || at + length > data.length) break
    const record = data.toString('utf8', space + 1, at + length - 1)
    const eq = record.indexOf('=')
    if (eq > 0) out.set(record.slice(0, eq), record.slice(eq + 1))
    at += length
  }
  return out
}

export class TarReader {
  readonly path: string
  readonly size: number
  #file: FileHandle
  #block = Buffer.alloc(BLOCK)

  private constructor(path: string, file: FileHandle, size: number) {
    this.path = path
    this.#file = file
    this.size = size
  }

  static async open(path: string): Promise<TarReader> {
    let file: FileHandle
    try {
      file = await open(path, 'r')
    } catch (e) {
      const missing = (e as NodeJS.ErrnoException).code === 'ENOENT'
      throw new MarvelError('MARVEL_IO', `cannot read shard ${path}: ${missing ? 'file not found' : (e as Error).message}`, { cause: e })
    }
    try {
      const info = await file.stat()
      if (!info.isFile()) throw new MarvelError('MARVEL_IO', `cannot read shard ${path}: not a regular file`)
      return new TarReader(path, file, info.size)
    } catch (e) {
      await file.close()
      throw e
    }
  }

  async close(): Promise<void> {
    await this.#file.close().catch(() => {})
  }

  async #read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const buf = into ?? Buffer.allocUnsafe(length)
    let done = 0
    while (done < length) {
      const { bytesRead } = await this.#file.read(buf, done, length - done, offset + done)
      if (bytesRead === 0) throw new TarError('truncated', this.path, offset, `the file ends after ${offset + done} bytes, inside a member`)
      done += bytesRead
    }
    return buf
  }

  /**
   * The regular file whose headers start at `offset`, or null at the end of the archive (two zero blocks, or the end
   * of the file on a block boundary). Directories, links and other entries are stepped over.
   */
  async member(offset: number): Promise<TarMember | null> {
    let start = offset
    let longName: string | undefined
    let paxPath: string | undefined
    let paxSize: number | undefined
    for (;;) {
      if (offset + BLOCK > this.size) {
        if (offset === this.size && start === offset) return null
        throw new TarError('truncated', this.path, offset, `the file ends after ${this.size} bytes, inside a header`)
      }
      const block = await this.#read(offset, BLOCK, this.#block)
      if (block.every((b) => b === 0)) {
        if (start !== offset) throw new TarError('corrupt', this.path, offset, 'an end-of-archive block follows an extended header')
        return null
      }
      if (!checksumOk(block)) throw new TarError('corrupt', this.path, offset, 'header checksum mismatch')
      const size = paxSize ?? number(block, 124, 12)
      const type = String.fromCharCode(block[156])
      if (!Number.isSafeInteger(size) || size < 0) throw new TarError('corrupt', this.path, offset, 'bad size field')
      const dataOffset = offset + BLOCK
      const next = dataOffset + Math.ceil(size / BLOCK) * BLOCK
      if (dataOffset + size > this.size) {
        throw new TarError('truncated', this.path, offset, `a ${size}-byte member runs past the end of the ${this.size}-byte file`)
      }
      if (type === 'x' || type === 'L' || type === 'g') {
        if (size > MAX_META_BYTES) throw new TarError('corrupt', this.path, offset, `a ${size}-byte extended header`)
        const data = await this.#read(dataOffset, size)
        if (type === 'L') longName = text(data, 0, data.length)
        if (type === 'x') {
          const pax = paxRecords(data)
          paxPath = pax.get('path') ?? paxPath
          const s = pax.get('size')
          if (s !== undefined) paxSize = /^\d+$/.test(s) ? Number(s) : NaN
        }
        // A global header describes the archive, not a member: the member headers start after it.
        if (type === 'g') start = next
        offset = next
        continue
      }
      if (type === '0' || type === '\0' || type === '7') {
        const magic = block.toString('latin1', 257, 262)
        const prefix = magic === 'ustar' ? text(block, 345, 155) : ''
        const name = longName ?? paxPath ?? (prefix ? `${prefix}/${text(block, 0, 100)}` : text(block, 0, 100))
        return { name, offset: start, dataOffset, size, next }
      }
      // A directory, link or device: nothing to read; its extended headers applied to it alone.
      offset = next
      start = next
      longName = paxPath = paxSize = undefined
    }
  }

  /** The member's bytes (refused above `MAX_MEMBER_BYTES`, so a damaged size field cannot exhaust memory). */
  async data(member: TarMember): Promise<Buffer> {
    if (member.size > MAX_MEMBER_BYTES) {
      throw new TarError('corrupt', this.path, member.offset, `member ${member.name} is ${member.size} bytes, over the ${MAX_MEMBER_BYTES}-byte limit`)
    }
    return this.#read(member.dataOffset, member.size)
  }

  /**
   * The offset of the first block after `offset` that holds a valid member header, or null when none does: where
   * reading picks up again after a corrupt header, so one damaged member costs that member, not the shard's rest.
   */
  async resync(offset: number): Promise<number | null> {
    const chunk = Buffer.allocUnsafe(64 * BLOCK)
    for (let at = Math.ceil((offset + 1) / BLOCK) * BLOCK; at + BLOCK <= this.size; ) {
      const n = Math.min(chunk.length, Math.floor((this.size - at) / BLOCK) * BLOCK)
      await this.#read(at, n, chunk.subarray(0, n))
      for (let i = 0; i < n; i += BLOCK) {
        const block = chunk.subarray(i, i + BLOCK)
        if (block[0] !== 0 && block.toString('latin1', 257, 262) === 'ustar' && checksumOk(block)) return at + i
      }
      at += n
    }
    return null
  }
}

/** The regular files of the archive at `path`, in archive order; damage is a `TarError` naming where. */
export async function tarMembers(path: string): Promise<TarMember[]> {
  const reader = await TarReader.open(path)
  try {
    const members: TarMember[] = []
    for (let m = await reader.member(0); m; m = await reader.member(m.next)) members.push(m)
    return members
  } finally {
    await reader.close()
  }
}

/** The bytes of one member listed by `tarMembers(path)`. */
export async function readTarMember(path: string, member: TarMember): Promise<Buffer> {
  const reader = await TarReader.open(path)
  try {
    return await reader.data(member)
  } finally {
    await reader.close()
  }
}
