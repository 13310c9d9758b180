/**
 * Writes POSIX ustar archives member by member to a file (webdataset shards): nothing but the current member is held
 * in memory. Names longer than ustar's 100 bytes get a pax `path` record, as GNU tar and Python's tarfile write them.
 */
import { open, type FileHandle } from 'node:fs/promises'

import { MarvelError } from '../errors.js'

const BLOCK = 512

function octal(header: Buffer, start: number, length: number, value: number): void {
  header.write(value.toString(8).padStart(length - 1, '0') + '\0', start, length, 'latin1')
}

function header(name: string, size: number, type: string, mtime: number): Buffer {
  const h = Buffer.alloc(BLOCK)
  h.write(name, 0, 100, 'utf8')
  octal(h, 100, 8, 0o644)
  octal(h, 108, 8, 0)
  octal(h, 116, 8, 0)
  octal(h, 124, 12, size)
  octal(h, 136, 12, mtime)
  h.write(type, 156, 1, 'latin1')
  h.write('ustar\0' + '00', 257, 8, 'latin1')
  h.fill(0x20, 148, 156)
  let sum = 0
  for (const b of h) sum += b
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'latin1')
  return h
}

function padding(size: number): Buffer {
  return Buffer.alloc((BLOCK - (size % BLOCK)) % BLOCK)
}

export class TarWriter {
  readonly path: string
  #file: FileHandle
  #mtime: number

  private constructor(path: string, file: FileHandle, mtime: number) {
    this.path = path
    this.#file = file
    this.#mtime = mtime
  }

  /** A new archive at `path` (replacing a file there). `mtime` (seconds) goes into every header: fixed, shards are reproducible. */
  static async create(path: string, mtime = 0): Promise<TarWriter> {
    try {
      return new TarWriter(path, await open(path, 'w'), mtime)
    } catch (e) {
      throw new MarvelError('MARVEL_IO', `cannot write ${path}: ${(e as Error).message}`, { cause: e })
    }
  }

  async add(name: string, data: Uint8Array): Promise<void> {
    const parts: Uint8Array[] = []
    if (Buffer.byteLength(name) > 99) {
      const body = ` path=${name}\n`
      // The record's length counts its own digits.
      let length = Buffer.byteLength(body) + 1
      while (String(length).length + Buffer.byteLength(body) !== length) length = String(length).length + Buffer.byteLength(body)
      const record = Buffer.from(`${length}${body}`)
      parts.push(header('PaxHeader', record.length, 'x', this.#mtime), record, padding(record.length))
    }
    parts.push(header(name, data.length, '0', this.#mtime), data, padding(data.length))
    await this.#write(parts)
  }

  /** Writes the end-of-archive blocks and closes the file. */
  async close(): Promise<void> {
    await this.#write([Buffer.alloc(2 * BLOCK)])
    await this.#file.close()
  }

  /** Closes the file without finishing the archive (after a failure). */
  async abandon(): Promise<void> {
    await this.#file.close().catch(() => {})
  }

  async #write(parts: Uint8Array[]): Promise<void> {
    try {
      await this.#file.writev(parts)
    } catch (e) {
      throw new MarvelError('MARVEL_IO', `cannot write ${this.path}: ${(e as Error).message}`, { cause: e })
    }
  }
}
