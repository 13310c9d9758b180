/**
 * TensorBoard event files without a TensorBoard package: Event protobufs (event-proto.ts) in TFRecord framing
 * (tfrecord.ts), the format `tensorboard --logdir` reads. Scalars are `simple_value` summaries and images are
 * `Summary.Image` PNGs, the forms TensorBoard's data compatibility layer turns into its scalar and image plugins.
 *
 * Records are encoded when logged and appended in batches (periodically, when a batch grows large, and on close)
 * by asynchronous writes, so logging never waits on the disk. Only whole records are ever handed to a write; a
 * process killed in the middle of one can leave the last record short, which readers (TensorBoard's and
 * `readTensorBoardEvents`) treat as not yet written.
 */
import { mkdir, open, readFile, type FileHandle } from 'node:fs/promises'
import { hostname } from 'node:os'
import { join } from 'node:path'

import { MarvelError, integerParameter, invalidParameter, optionsParameter } from '../errors.js'
import { pathParameter } from '../files.js'
import { ProtoError, decodeEvent, encodeEvent, type SummaryValue } from './event-proto.js'
import type { TrainingSink } from './log.js'
import { RecordError, frameRecord, scanRecords } from './tfrecord.js'


export interface TensorBoardWriterOptions {
  /** Milliseconds between periodic writes of what was logged. Default 2000. */
  flushMs?: number
  /** For a resumed run: its first new step, marked by a SessionLog START (TensorBoard's purge of orphaned steps). */
  restartAt?: number
}

/** Logged bytes that trigger a write before the next periodic one (an image grid is a few hundred KB). */
const FLUSH_BYTES = 1 << 20

/** Numbers the files of writers opened in this process, the last part of their names (as TensorFlow's writers). */
let opened = 0

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])

/** TensorBoard's colorspace for each PNG colour type (palette images decode to RGB). */
const COLORSPACE: Record<number, number> = { 0: 1, 2: 3, 3: 3, 4: 2, 6: 4 }

/** Width, height and TensorBoard colorspace from a PNG's IHDR chunk, or null when `png` is not a PNG. */
function pngHeader(png: Uint8Array): { width: number; height: number; colorspace: number } | null {
  if (png.length < 33 || !PNG_SIGNATURE.equals(Buffer.from(png.buffer, png.byteOffset, 8))) return null
  const b = Buffer.from(png.buffer, png.byteOffset, 33)
  if (b.toString('latin1', 12, 16) !== 'IHDR') return null
  const colorspace = COLORSPACE[b[25]]
  const width = b.readUInt32BE(16)
  const height = b.readUInt32BE(20)
  if (colorspace === undefined || width === 0 || height === 0) return null
  return { width, height, colorspace }
}

function ioError(message: string, cause: unknown): MarvelError {
  return new MarvelError('MARVEL_IO', `${message}: ${(cause as Error)?.message ?? String(cause)}`, { cause })
}

export class TensorBoardWriter implements TrainingSink {
  /** The event file this writer appends to. */
  readonly file: string
  readonly #handle: FileHandle
  #pending: Buffer[] = []
  #pendingBytes = 0
  /** The chain of writes: each starts when the one before has ended, so records land in logged order. */
  #writes: Promise<void> = Promise.resolve()
  #failure: MarvelError | null = null
  readonly #timer: NodeJS.Timeout
  #closing: Promise<void> | null = null

  private constructor(file: string, handle: FileHandle, flushMs: number) {
    this.file = file
    this.#handle = handle
    this.#timer = setInterval(() => void this.flush(), flushMs)
    // Periodic writes must not keep a finished process alive; close() writes the rest.
    this.#timer.unref()
  }

  /** A writer of a new event file `events.out.tfevents.<secs>.<host>.<pid>.<n>` in `logdir` (created if needed). */
  static async open(logdir: string, options?: TensorBoardWriterOptions): Promise<TensorBoardWriter> {
    pathParameter('TensorBoardWriter.open', 'logdir', logdir)
    options = optionsParameter('TensorBoardWriter.open', options, ['flushMs', 'restartAt'])
    const flushMs = integerParameter('TensorBoardWriter.open', 'flushMs', options.flushMs ?? 2000, 1, 3_600_000)
    const restartAt = options.restartAt === undefined ? undefined : integerParameter('TensorBoardWriter.open', 'restartAt', options.restartAt, 0, Number.MAX_SAFE_INTEGER)
    const now = Date.now()
    const secs = String(Math.floor(now / 1000)).padStart(10, '0')
    const file = join(logdir, `events.out.tfevents.${secs}.${hostname()}.${process.pid}.${opened++}`)
    let handle: FileHandle
    try {
      await mkdir(logdir, { recursive: true })
      handle = await open(file, 'wx')
    } catch (e) {
      throw ioError(`TensorBoardWriter.open: cannot create ${file}`, e)
    }
    const writer = new TensorBoardWriter(file, handle, flushMs)
    // The version record first and at once, so TensorBoard recognises the file before the first flush.
    writer.#append({ wallTime: now / 1000, step: 0, fileVersion: 'brain.Event:2' })
    // A resumed run's earlier files hold steps logged after its checkpoint, which this run takes again: a session
    // start at the first new step makes TensorBoard drop those orphans rather than draw two curves.
    if (restartAt !== undefined) writer.#append({ wallTime: now / 1000, step: restartAt, sessionStart: true })
    await writer.flush()
    return writer
  }

  #check(where: string): void {
    if (this.#closing) throw new MarvelError('MARVEL_INVALID_ARGUMENT', `${where}: this TensorBoard writer was closed`)
    if (this.#failure) throw this.#failure
  }

  #append(event: Parameters<typeof encodeEvent>[0]): void {
    const record = frameRecord(encodeEvent(event))
    this.#pending.push(record)
    this.#pendingBytes += record.length
    if (this.#pendingBytes >= FLUSH_BYTES) void this.flush()
  }

  /** One event holding a scalar per key of `values` (the key is the tag, `loss/total`-style names group in TensorBoard). */
  scalars(step: number, values: Record<string, number>): void {
    this.#check('scalars')
    step = integerParameter('scalars', 'step', step, 0, Number.MAX_SAFE_INTEGER)
    if (values === null || typeof values !== 'object' || Array.isArray(values)) throw invalidParameter('scalars', 'values', 'an object of numbers', values)
    const summary: SummaryValue[] = []
    for (const [tag, value] of Object.entries(values)) {
      // NaN and infinities are kept: a diverging loss is worth seeing.
      if (typeof value !== 'number') throw invalidParameter('scalars', `values[${JSON.stringify(tag)}]`, 'a number', value)
      if (tag === '') throw invalidParameter('scalars', 'a tag in values', 'a non-empty string', tag)
      summary.push({ tag, simpleValue: value })
    }
    if (summary.length > 0) this.#append({ wallTime: Date.now() / 1000, step, summary })
  }

  /** One PNG image under `tag` (width, height and colours are read from the PNG's header). */
  image(step: number, tag: string, png: Buffer): void {
    this.#check('image')
    step = integerParameter('image', 'step', step, 0, Number.MAX_SAFE_INTEGER)
    if (typeof tag !== 'string' || tag === '') throw invalidParameter('image', 'tag', 'a non-empty string', tag)
    const header = png instanceof Uint8Array ? pngHeader(png) : null
    if (header === null) throw invalidParameter('image', 'png', 'an encoded PNG image', png)
    this.#append({ wallTime: Date.now() / 1000, step, summary: [{ tag, image: { ...header, encoded: png } }] })
  }

  /** Writes what was logged so far; resolves once it is in the file. */
  flush(): Promise<void> {
    if (this.#pending.length > 0) {
      const chunk = Buffer.concat(this.#pending)
      this.#pending = []
      this.#pendingBytes = 0
      this.#writes = this.#writes.then(() => this.#write(chunk))
    }
    return this.#writes
  }

  async #write(chunk: Buffer): Promise<void> {
    if (this.#failure) return
    try {
      let done = 0
      while (done < chunk.length) done += (await this.#handle.write(chunk, done)).bytesWritten
    } catch (e) {
      // Kept, not thrown here: the periodic flush has no caller. The next call and close() report it.
      this.#failure = ioError(`TensorBoardWriter: cannot write ${this.file}`, e)
    }
  }

  /** Writes everything logged and closes the file; rejects if any write failed. Later calls on the writer throw. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      clearInterval(this.#timer)
      await this.flush()
      try {
        await this.#handle.close()
      } catch (e) {
        this.#failure ??= ioError(`TensorBoardWriter: cannot close ${this.file}`, e)
      }
      if (this.#failure) throw this.#failure
    })()
    return this.#closing
  }
}

export interface TensorBoardScalar {
  step: number
  /** Seconds since the epoch when it was logged. */
  wallTime: number
  tag: string
  value: number
}

export interface TensorBoardImage {
  step: number
  wallTime: number
  tag: string
  width: number
  height: number
  /** 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA. */
  colorspace: number
  /** The encoded image as logged. */
  png: Buffer
}

export interface TensorBoardEvents {
  /** The first record's `file_version` (`brain.Event:2`), null when the file has none. */
  fileVersion: string | null
  /** Events in the file, the version record included. */
  events: number
  scalars: TensorBoardScalar[]
  images: TensorBoardImage[]
  /** True when the file ends in the middle of a record: a writer still appending it, or killed while it did. */
  truncated: boolean
  /** Steps of the file's SessionLog START events (a resumed run's first new step). */
  sessionStarts: number[]
}

/**
 * The scalars and images of an event file, every record's CRCs checked. A checksum that does not match or a record
 * that is not an Event is a `MARVEL_IO` error naming the file and the record's byte offset.
 */
export async function readTensorBoardEvents(file: string): Promise<TensorBoardEvents> {
  pathParameter('readTensorBoardEvents', 'file', file)
  let buf: Buffer
  try {
    buf = await readFile(file)
  } catch (e) {
    throw ioError(`readTensorBoardEvents: cannot read ${file}`, e)
  }
  const out: TensorBoardEvents = { fileVersion: null, events: 0, scalars: [], images: [], truncated: false, sessionStarts: [] }
  let scan
  try {
    scan = scanRecords(buf)
  } catch (e) {
    if (!(e instanceof RecordError)) throw e
    throw new MarvelError('MARVEL_IO', `${file}: ${e.message}; the event file is corrupt`)
  }
  out.truncated = scan.truncatedAt !== null
  for (const [i, record] of scan.records.entries()) {
    let event
    try {
      event = decodeEvent(record)
    } catch (e) {
      if (!(e instanceof ProtoError)) throw e
      throw new MarvelError('MARVEL_IO', `${file}: record ${i} is not a TensorBoard event (${e.message})`)
    }
    out.events++
    if (i === 0 && event.fileVersion !== undefined) out.fileVersion = event.fileVersion
    if (event.sessionStart) out.sessionStarts.push(event.step)
    for (const v of event.summary ?? []) {
      const at = { step: event.step, wallTime: event.wallTime, tag: v.tag }
      if (v.simpleValue !== undefined) out.scalars.push({ ...at, value: v.simpleValue })
      if (v.image !== undefined) {
        const { width, height, colorspace, encoded } = v.image
        out.images.push({ ...at, width, height, colorspace, png: Buffer.from(encoded) })
      }
    }
  }
  return out
}
