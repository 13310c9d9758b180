/**
 * An endless, seeded stream of training samples: per epoch a fresh shard order, samples read from each shard in
 * turn, a shuffle buffer across them, and each emitted sample's augmentation draws. Its whole state — epoch, shard
 * cursor, byte offset, generator state and *where* the buffered samples came from (not their bytes) — is a small
 * JSON value, `StreamPosition`; a stream built from one continues exactly as the stream that wrote it would have.
 *
 * Damaged data is skipped and counted, never fatal: a corrupt member header (reading resumes at the next valid
 * header), a truncated shard (its remaining members are lost), a shard that vanished mid-run, a sample without
 * an image. Each skip is reported through `onSkip` with its place.
 */
import { readFile } from 'node:fs/promises'
import { basename, extname, relative, sep } from 'node:path'

import { MarvelError } from '../errors.js'
import { Random } from './random.js'
import { IMAGE_EXTENSIONS, type DataSource } from './shards.js'
import { TarError, TarReader, type TarMember } from './tar.js'

export type SkipReason = 'corrupt_member' | 'truncated_shard' | 'unreadable_shard' | 'no_image' | 'unreadable_image'

export interface Skip {
  reason: SkipReason
  /** Where: `shard.tar@offset`, `shard.tar` or an image file. */
  where: string
  message: string
}

export interface StreamPosition {
  /** Shards (or images) of the data when saved: a position only fits the data it was taken from. */
  units: number
  epoch: number
  /** Index into the epoch's unit order of the unit being read. */
  unit: number
  /** Byte offset in that unit of the next sample (0 for an image file not yet read). */
  offset: number
  /** Samples read from units so far (rank striding counts them). */
  read: number
  rng: number[]
  /** The shuffle buffer's samples as [unit id, offset] pairs, in buffer order. */
  buffer: Array<[number, number]>
  skipped: Partial<Record<SkipReason, number>>
}

/** One sample: its image bytes, its origin, and the uniform draws that place its crop and flip. */
export interface Sample {
  key: string
  image: Buffer
  /** The image's format, from its extension (`jpg`, `png`, ...). */
  format: string
  ref: [number, number]
  /** Uniform [0, 1) draws: crop x, crop y, flip. */
  draws: [number, number, number]
  /** Pretokenized MaskGIT-VQGAN codes of the image's centre crop (a `<key>.codes` member), when the shard has them. */
  codes?: Int32Array
}

interface Loaded {
  key: string
  image: Buffer
  format: string
  ref: [number, number]
  codes?: Int32Array
}

export interface StreamOptions {
  seed: number
  /** Samples held for shuffling (webdataset's `shuffle(n)`); 0 or 1: none. */
  bufferSize: number
  /** Read units in their given order every epoch (a fixed validation batch) instead of a seeded shuffle. */
  ordered?: boolean
  /** Keep samples `read % sampleStride === sampleOffset` (ranks sharing shards). */
  sampleStride?: number
  sampleOffset?: number
  /**
   * This rank: its own stream of augmentation and shuffle draws (rank 0's is a single rank's), so ranks that read
   * the same image do not crop and flip it alike. The shard order stays common, as ranks sharing shards need.
   */
  rank?: number
  onSkip?: (skip: Skip) => void
}

/** webdataset's key/extension split: the key is the path up to the first dot of the file name. */
export function splitKey(name: string): { key: string; ext: string } | null {
  const slash = name.lastIndexOf('/')
  const dot = name.indexOf('.', slash + 1)
  if (dot <= slash + 1) return null
  return { key: name.slice(0, dot), ext: name.slice(dot + 1).toLowerCase() }
}

export class SampleStream {
  readonly source: DataSource
  readonly #options: Required<Omit<StreamOptions, 'onSkip'>> & Pick<StreamOptions, 'onSkip'>
  #epoch = 0
  #unit = 0
  #offset = 0
  #read = 0
  #order: number[] = []
  #rng: Random
  #buffer: Loaded[] = []
  #skipped: Partial<Record<SkipReason, number>> = {}
  #reader: { id: number; tar: TarReader } | null = null
  /** Units finished in a row without one sample: a whole epoch of them means the data holds nothing readable. */
  #emptyUnits = 0

  private constructor(source: DataSource, options: StreamOptions) {
    if (source.units.length === 0) throw new MarvelError('MARVEL_IO', 'the training data holds no shards or images')
    this.source = source
    this.#options = { sampleStride: 1, sampleOffset: 0, ordered: false, rank: 0, ...options }
    this.#rng = new Random(options.seed, 0x5eed, options.rank ?? 0)
  }

  /** A stream at the start of epoch 0, or continuing from `position`. */
  static async open(source: DataSource, options: StreamOptions, position?: StreamPosition | null): Promise<SampleStream> {
    const s = new SampleStream(source, options)
    if (position) await s.#restore(position)
    s.#order = s.#epochOrder(s.#epoch)
    return s
  }

  #epochOrder(epoch: number): number[] {
    if (this.#options.ordered) return this.source.units.map((_, i) => i)
    return new Random(this.#options.seed, epoch, 0x0de7).permutation(this.source.units.length)
  }

  async #restore(p: StreamPosition): Promise<void> {
    const ok = (n: unknown) => Number.isSafeInteger(n) && (n as number) >= 0
    const valid =
      p && p.units === this.source.units.length && ok(p.epoch) && ok(p.unit) && ok(p.offset) && ok(p.read) && Array.isArray(p.rng) && p.rng.length === 4 && Array.isArray(p.buffer) &&
      p.buffer.every((r) => Array.isArray(r) && ok(r[0]) && r[0] < this.source.units.length && ok(r[1]))
    if (!valid) {
      const was = Number.isInteger(p?.units) ? ` was saved for ${p.units} ${this.#unitName()}, the data now has ${this.source.units.length}` : ' does not match this data'
      throw new MarvelError('MARVEL_CHECKPOINT', `the data position${was}; resuming would not continue the same stream`)
    }
    this.#epoch = p.epoch
    this.#unit = p.unit
    this.#offset = p.offset
    this.#read = p.read
    this.#rng = Random.fromState(p.rng)
    this.#skipped = { ...p.skipped }
    for (const [id, offset] of p.buffer) {
      const loaded = await this.#readAt(id, offset)
      if (loaded?.sample) this.#buffer.push(loaded.sample)
    }
  }

  #unitName(): string {
    return this.source.kind === 'shards' ? 'shards' : 'images'
  }

  position(): StreamPosition {
    return {
      units: this.source.units.length,
      epoch: this.#epoch,
      unit: this.#unit,
      offset: this.#offset,
      read: this.#read,
      rng: this.#rng.state(),
      buffer: this.#buffer.map((s) => s.ref),
      skipped: { ...this.#skipped },
    }
  }

  get skipped(): Partial<Record<SkipReason, number>> {
    return { ...this.#skipped }
  }

  async close(): Promise<void> {
    await this.#reader?.tar.close()
    this.#reader = null
  }

  #skip(reason: SkipReason, where: string, message: string): void {
    this.#skipped[reason] = (this.#skipped[reason] ?? 0) + 1
    this.#options.onSkip?.({ reason, where, message })
  }

  /** The next sample, with its augmentation draws. */
  async next(): Promise<Sample> {
    const size = this.#options.bufferSize
    let chosen: Loaded
    if (size <= 1) {
      chosen = await this.#readNext()
    } else {
      while (this.#buffer.length < size) this.#buffer.push(await this.#readNext())
      const j = this.#rng.below(this.#buffer.length)
      chosen = this.#buffer[j]
      this.#buffer[j] = await this.#readNext()
    }
    const draws: [number, number, number] = [this.#rng.float(), this.#rng.float(), this.#rng.float()]
    return { key: chosen.key, image: chosen.image, format: chosen.format, ref: chosen.ref, draws, ...(chosen.codes ? { codes: chosen.codes } : {}) }
  }

  /** The next sample with an image in read order, across units and epochs. */
  async #readNext(): Promise<Loaded> {
    for (;;) {
      if (this.#unit >= this.#order.length) {
        this.#epoch++
        this.#unit = 0
        this.#offset = 0
        this.#order = this.#epochOrder(this.#epoch)
      }
      const id = this.#order[this.#unit]
      const got = await this.#readAt(id, this.#offset, true)
      if (got === null || got.next === null) {
        this.#unit++
        this.#offset = 0
        if (++this.#emptyUnits > this.source.units.length && got?.sample == null) {
          throw new MarvelError('MARVEL_IO', `no readable sample in a whole epoch of ${this.source.units.length} ${this.#unitName()} (see the skipped counts)`)
        }
      } else {
        this.#offset = got.next
      }
      if (!got?.sample) continue
      this.#emptyUnits = 0
      const mine = this.#read++ % this.#options.sampleStride === this.#options.sampleOffset
      if (mine) return got.sample
    }
  }

  /**
   * The sample of unit `id` at `offset`, and where the one after it starts (null: the unit is done). Null when the
   * unit cannot be read at all. `sequential` keeps the unit's reader open for the next call.
   */
  async #readAt(id: number, offset: number, sequential = false): Promise<{ sample: Loaded | null; next: number | null } | null> {
    const path = this.source.units[id]
    if (this.source.kind === 'images') {
      if (offset > 0) return { sample: null, next: null }
      try {
        const image = await readFile(path)
        const rel = relative(this.source.root, path).split(sep).join('/')
        return { sample: { key: rel.slice(0, rel.length - extname(rel).length), image, format: extname(path).slice(1).toLowerCase(), ref: [id, 0] }, next: null }
      } catch (e) {
        this.#skip('unreadable_image', path, (e as Error).message)
        return { sample: null, next: null }
      }
    }
    let tar: TarReader
    let owned = false
    if (this.#reader?.id === id) {
      tar = this.#reader.tar
    } else {
      try {
        tar = await TarReader.open(path)
      } catch (e) {
        this.#skip('unreadable_shard', path, (e as Error).message)
        return null
      }
      if (sequential) {
        await this.#reader?.tar.close()
        this.#reader = { id, tar }
      } else {
        owned = true
      }
    }
    try {
      return await this.#readSample(tar, id, offset)
    } finally {
      if (owned) await tar.close()
    }
  }

  /** One webdataset sample: the consecutive members sharing a key. */
  async #readSample(tar: TarReader, id: number, offset: number): Promise<{ sample: Loaded | null; next: number | null }> {
    const where = (at: number) => `${basename(tar.path)}@${at}`
    let first: TarMember | null
    for (;;) {
      try {
        first = await tar.member(offset)
        break
      } catch (e) {
        if (!(e instanceof TarError)) throw e
        if (e.damage === 'truncated') {
          this.#skip('truncated_shard', where(offset), e.message)
          return { sample: null, next: null }
        }
        this.#skip('corrupt_member', where(offset), e.message)
        const next = await tar.resync(offset)
        if (next === null) return { sample: null, next: null }
        offset = next
      }
    }
    if (first === null) return { sample: null, next: null }
    const parts = splitKey(first.name)
    let member: TarMember | null = first
    const fields = new Map<string, TarMember>()
    let next: number | null = first.next
    // A name without an extension belongs to no sample (webdataset drops it too).
    if (parts === null) return { sample: null, next }
    while (member !== null) {
      const p = splitKey(member.name)
      if (p === null || p.key !== parts.key) break
      fields.set(p.ext, member)
      next = member.next
      try {
        member = await tar.member(member.next)
      } catch (e) {
        // The damage belongs to the next read, which reports it.
        if (!(e instanceof TarError)) throw e
        member = null
      }
    }
    const format = IMAGE_EXTENSIONS.find((ext) => fields.has(ext))
    if (format === undefined) {
      this.#skip('no_image', where(first.offset), `sample ${parts.key} has no image member (${[...fields.keys()].join(', ') || 'none'})`)
      return { sample: null, next }
    }
    let image: Buffer
    try {
      image = await tar.data(fields.get(format)!)
    } catch (e) {
      if (!(e instanceof TarError)) throw e
      this.#skip('corrupt_member', where(first.offset), e.message)
      return { sample: null, next }
    }
    let codes: Int32Array | undefined
    const codesMember = fields.get('codes')
    if (codesMember && codesMember.size % 4 === 0 && codesMember.size > 0) {
      try {
        const bytes = await tar.data(codesMember)
        codes = new Int32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length))
      } catch (e) {
        // Codes are an optimisation: without them the trainer encodes the image itself.
        if (!(e instanceof TarError)) throw e
      }
    }
    return { sample: { key: parts.key, image, format, ref: [id, first.offset], ...(codes ? { codes } : {}) }, next }
  }
}
