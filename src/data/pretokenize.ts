/**
 * Stage 1's targets computed once instead of every batch: each shard is copied with a `<key>.codes` member added to
 * every sample, the frozen MaskGIT-VQGAN's codes of its image (int32 little-endian, `grid²` of them, row-major),
 * taken from the centre crop the reference evaluates (shorter side to the model's size, bicubic, centre crop).
 * Training reads them when its augmentation produces exactly that crop (`random_crop` and `random_flip` false,
 * `resize_shorter_edge` = `crop_size` = the MaskGIT size); a random crop or a flip changes the image, and with them
 * the trainer encodes each batch itself.
 *
 * Ranks split the shards as training does (`RANK` / `WORLD_SIZE`, shard i to rank i mod world size), so a job array
 * pretokenizes a large dataset with no coordination; finished shards are kept when a run is repeated.
 */
import { existsSync, mkdirSync, renameSync } from 'node:fs'
import { rm } from 'node:fs/promises'
import { basename, join } from 'node:path'

import { MarvelError, integerParameter, optionsParameter } from '../errors.js'
import { prepareImage, type RgbImage } from '../image.js'
import { MaskgitVqgan } from '../maskgit.js'
import { pathParameter } from '../files.js'
import { ranksOf } from '../train/data-parallel.js'
import { IMAGE_EXTENSIONS, resolveSource } from './shards.js'
import { splitKey } from './stream.js'
import { TarError, TarReader } from './tar.js'
import { TarWriter } from './tar-writer.js'

/** The member a pretokenized sample carries its codes in. */
export const CODES_EXTENSION = 'codes'

export interface PretokenizeOptions {
  /** MaskGIT-VQGAN weights (a file, or a folder with one and an optional config.json). */
  maskgit: string
  /** Folder for the new shards (same file names as the input shards). */
  out: string
  /** Default: `RANK`, else 0. */
  rank?: number
  /** Default: `WORLD_SIZE`, else 1. */
  worldSize?: number
  /** Images per MaskGIT call. Default 16. */
  batchSize?: number
  onShard?: (shard: { path: string; samples: number; existed: boolean }) => void
}

export interface Pretokenized {
  /** The shards this rank wrote or found written. */
  shards: string[]
  reused: number
  /** Samples given codes. */
  samples: number
  /** Samples copied without codes (no image, or one that does not decode), and damaged members or shards skipped. */
  skipped: number
}

interface PendingSample {
  key: string
  members: Array<[string, Buffer]>
  /** Image members by extension; the sample's image is chosen as training chooses it. */
  images: Map<string, Buffer>
}

function imageOf(s: PendingSample): Buffer | null {
  const ext = IMAGE_EXTENSIONS.find((e) => s.images.has(e))
  return ext === undefined ? null : s.images.get(ext)!
}

export async function pretokenize(shards: string, options: PretokenizeOptions): Promise<Pretokenized> {
  options = optionsParameter('pretokenize', options, ['maskgit', 'out', 'rank', 'worldSize', 'batchSize', 'onShard'])
  pathParameter('pretokenize', 'maskgit', options.maskgit)
  const out = pathParameter('pretokenize', 'out', options.out)
  const batchSize = integerParameter('pretokenize', 'batchSize', options.batchSize ?? 16, 1, 4096)
  const source = resolveSource(shards, 'shards')
  if (source.kind !== 'shards') throw new MarvelError('MARVEL_INVALID_ARGUMENT', `pretokenize reads .tar shards; ${shards} is an image folder (make shards of it first: marvel make-shards)`)
  const ranks = ranksOf({ rank: options.rank, worldSize: options.worldSize })
  const mine = source.units.filter((_, i) => i % ranks.worldSize === ranks.rank)
  const names = new Set(source.units.map((u) => basename(u)))
  if (names.size !== source.units.length) throw new MarvelError('MARVEL_INVALID_ARGUMENT', 'pretokenize writes shards under their own names, so two input shards may not share a file name')
  mkdirSync(out, { recursive: true })

  const model = await MaskgitVqgan.fromPretrained(options.maskgit)
  const size = model.info.imageSize
  const perImage = model.info.grid * model.info.grid
  const result: Pretokenized = { shards: [], reused: 0, samples: 0, skipped: 0 }
  try {
    for (const input of mine) {
      const target = join(out, basename(input))
      result.shards.push(target)
      if (existsSync(target)) {
        result.reused++
        options.onShard?.({ path: target, samples: 0, existed: true })
        continue
      }
      const partial = `${target}.partial`
      const writer = await TarWriter.create(partial)
      const reader = await TarReader.open(input)
      let samples = 0
      try {
        const flush = async (batch: PendingSample[]) => {
          const prepared: Array<RgbImage | null> = await Promise.all(batch.map((s) => imageOf(s)).map((image) => (image ? prepareImage(image, { size }).catch(() => null) : null)))
          const ok = prepared.filter((p): p is RgbImage => p !== null)
          const codes = ok.length > 0 ? await model.encode(ok, { resize: 'none', batchSize }) : new Uint32Array(0)
          let k = 0
          for (const [i, s] of batch.entries()) {
            for (const [name, data] of s.members) await writer.add(name, data)
            if (prepared[i] === null) {
              result.skipped++
              continue
            }
            const own = Int32Array.from(codes.subarray(k * perImage, (k + 1) * perImage))
            k++
            await writer.add(`${s.key}.${CODES_EXTENSION}`, Buffer.from(own.buffer))
            samples++
          }
        }
        let batch: PendingSample[] = []
        let current = null as PendingSample | null
        for (let offset = 0; ; ) {
          let member
          try {
            member = await reader.member(offset)
          } catch (e) {
            if (!(e instanceof TarError)) throw e
            result.skipped++
            const next = e.damage === 'corrupt' ? await reader.resync(offset) : null
            if (next === null) break
            offset = next
            continue
          }
          if (member === null) break
          offset = member.next
          const parts = splitKey(member.name)
          // Codes computed earlier are replaced, not doubled.
          if (parts === null || parts.ext === CODES_EXTENSION) continue
          if (current?.key !== parts.key) {
            if (current) batch.push(current)
            if (batch.length >= batchSize) {
              await flush(batch)
              batch = []
            }
            current = { key: parts.key, members: [], images: new Map() }
          }
          let data: Buffer
          try {
            data = await reader.data(member)
          } catch (e) {
            if (!(e instanceof TarError)) throw e
            result.skipped++
            continue
          }
          current.members.push([member.name, data])
          if ((IMAGE_EXTENSIONS as readonly string[]).includes(parts.ext)) current.images.set(parts.ext, data)
        }
        if (current) batch.push(current)
        if (batch.length > 0) await flush(batch)
        await writer.close()
      } catch (e) {
        await writer.abandon()
        await rm(partial, { force: true })
        throw e
      } finally {
        await reader.close()
      }
      renameSync(partial, target)
      result.samples += samples
      options.onShard?.({ path: target, samples, existed: false })
    }
  } finally {
    model.dispose()
  }
  return result
}
