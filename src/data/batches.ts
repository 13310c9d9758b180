/**
 * Batches of augmented images, `[B, S, S, 3]` bytes, decoded ahead of the trainer. Samples are drawn from the stream
 * one at a time in order; their decodes run concurrently (bounded by the process's decode slots) and are consumed
 * in draw order, so a batch holds the same images whatever the timing. An image that fails to decode is skipped,
 * counted and replaced by the next sample; so many failures in a row that the data plainly holds no decodable image
 * (`maxFailuresInRow`) end the stream with an error instead of an endless search.
 *
 * Each batch carries the data position *after* its last image: the stream's state when that sample was drawn,
 * before any look-ahead. Saved with a checkpoint, it makes a resumed run draw the very next sample.
 */
import { MarvelError } from '../errors.js'
import { decodeSlots } from '../image.js'
import { augment, type Augmentation } from './augment.js'
import type { SampleStream, SkipReason, Skip, StreamPosition } from './stream.js'

export interface Batch {
  images: Uint8Array
  /** Every image's pretokenized codes, concatenated; absent unless each image of the batch has them. */
  codes?: Int32Array
  size: number
  keys: string[]
  position: StreamPosition
}

interface Pending {
  decoded: Promise<{ key: string; where: string; position: StreamPosition; pixels: Buffer | null; codes?: Int32Array; error?: Error }>
}

export class BatchStream {
  readonly #stream: SampleStream
  readonly #aug: Augmentation
  readonly #batchSize: number
  readonly #lookahead: number
  readonly #onSkip?: (skip: Skip) => void
  #pending: Pending[] = []
  #draw: Promise<unknown> = Promise.resolve()
  /** Decode failures consumed by this object; a restored stream's counts already hold the earlier ones. */
  #unreadable = 0
  /** Decode failures since the last image that decoded. */
  #failedInRow = 0
  readonly #maxFailuresInRow: number

  /**
   * `maxFailuresInRow` (default max(1000, 10 × batchSize)): the stream's own guard sees only reads, and a shard
   * whose members all read but none decodes would otherwise be searched forever.
   */
  constructor(stream: SampleStream, options: { augmentation: Augmentation; batchSize: number; lookahead?: number; onSkip?: (skip: Skip) => void; maxFailuresInRow?: number }) {
    this.#stream = stream
    this.#aug = options.augmentation
    this.#batchSize = options.batchSize
    this.#lookahead = options.lookahead ?? 2 * options.batchSize
    this.#onSkip = options.onSkip
    this.#maxFailuresInRow = options.maxFailuresInRow ?? Math.max(1000, 10 * options.batchSize)
  }

  #fill(): void {
    while (this.#pending.length < this.#lookahead) {
      // Draws are chained: the stream is read by one caller at a time, in order.
      const drawn = this.#draw.then(async () => {
        const sample = await this.#stream.next()
        return { sample, position: this.#stream.position() }
      })
      this.#draw = drawn.catch(() => {})
      const decoded = drawn.then(({ sample, position }) => {
        const where = `${this.#stream.source.units[sample.ref[0]]}${this.#stream.source.kind === 'shards' ? `@${sample.ref[1]}` : ''}`
        return decodeSlots.run(() => augment(sample.image, this.#aug, sample.draws)).then(
          (pixels) => ({ key: sample.key, where, position, pixels, codes: sample.codes }),
          (error: Error) => ({ key: sample.key, where, position, pixels: null, error }),
        )
      })
      // A failure surfaces when consumed; until then it must not count as unhandled.
      decoded.catch(() => {})
      this.#pending.push({ decoded })
    }
  }

  async next(): Promise<Batch> {
    const frame = this.#aug.cropSize * this.#aug.cropSize * 3
    const images = new Uint8Array(this.#batchSize * frame)
    const keys: string[] = []
    const codes: Int32Array[] = []
    let position: StreamPosition | undefined
    while (keys.length < this.#batchSize) {
      this.#fill()
      const head = await this.#pending.shift()!.decoded
      if (head.pixels === null) {
        this.#unreadable++
        const message = head.error?.message ?? 'not an image'
        this.#onSkip?.({ reason: 'unreadable_image', where: head.where, message })
        position = head.position
        if (++this.#failedInRow >= this.#maxFailuresInRow) {
          const units = this.#stream.source.units.length
          throw new MarvelError(
            'MARVEL_IO',
            `${this.#failedInRow} images in a row failed to decode (the last, ${head.where}: ${message}); the data ` +
              `(${units} ${this.#stream.source.kind === 'shards' ? 'shard' : 'image'}${units === 1 ? '' : 's'}) holds no image that decodes`,
          )
        }
        continue
      }
      this.#failedInRow = 0
      images.set(head.pixels, keys.length * frame)
      keys.push(head.key)
      if (head.codes) codes.push(head.codes)
      position = head.position
    }
    this.#fill()
    const skipped: Partial<Record<SkipReason, number>> = { ...position!.skipped }
    if (this.#unreadable > 0) skipped.unreadable_image = (skipped.unreadable_image ?? 0) + this.#unreadable
    const complete = codes.length === keys.length && codes.every((c) => c.length === codes[0].length)
    const batch: Batch = { images, size: this.#batchSize, keys, position: { ...position!, skipped } }
    if (complete) {
      batch.codes = new Int32Array(codes.length * codes[0].length)
      codes.forEach((c, i) => batch.codes!.set(c, i * c.length))
    }
    return batch
  }

  /** Stops reading ahead; pending decodes finish on their own. */
  async close(): Promise<void> {
    this.#pending = []
    await this.#draw
    await this.#stream.close()
  }
}
