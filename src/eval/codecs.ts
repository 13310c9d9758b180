/**
 * Classic codecs at a given size: an image encoded with WebP or JPEG (sharp / libvips, default settings: 4:2:0
 * chroma, no metadata) at the quality whose file is closest to a byte budget — how the tokens' rate is put beside
 * what a general-purpose codec does with the same bytes. At the few hundred bytes of a handful of tokens neither
 * codec can write a full-resolution 256x256 file, so each also runs on a downscaled copy (1/2, 1/4 or 1/8 of the
 * side, upscaled back after decoding): the rate a thumbnail spends, which is what a codec user would do at that size.
 * Some budgets are below any file a codec writes (JPEG's headers alone take a few hundred bytes): the smallest file
 * then stands in, flagged as over the budget.
 */
import sharp from 'sharp'

import { MarvelError } from '../errors.js'
import type { RgbImage } from '../image.js'

export type Codec = 'webp' | 'jpeg'
export const CODECS: readonly Codec[] = ['webp', 'jpeg']
/** A codec at full resolution, or on a downscaled copy (`<codec>-downscaled`). */
export type CodecVariant = Codec | `${Codec}-downscaled`
/** The downscale factors tried by `encodeDownscaledWithin` (16: a 256x256 image as 16x16, for budgets of tens of bytes). */
export const DOWNSCALE_FACTORS: readonly number[] = [2, 4, 8, 16]

export interface CodedImage {
  codec: CodecVariant
  /** The quality (1..100) chosen. */
  quality: number
  /** The side was divided by this before encoding (1: full resolution). */
  downscale: number
  /** The file is no larger than the budget (a downscaled result may be over it when no file is that small). */
  withinBudget: boolean
  /** Its file size in bytes. */
  bytes: number
  /** The decoded result. */
  image: RgbImage
}

const raw = (image: RgbImage) =>
  sharp(Buffer.from(image.data.buffer, image.data.byteOffset, image.data.byteLength), { raw: { width: image.width, height: image.height, channels: 3 } })

async function encode(image: RgbImage, codec: Codec, quality: number): Promise<Buffer> {
  const input = raw(image)
  return codec === 'webp' ? input.webp({ quality }).toBuffer() : input.jpeg({ quality }).toBuffer()
}

/** sharp work on a codec's files, its failures coded as MARVEL_IMAGE. */
async function imageStep<T>(what: string, run: () => Promise<T>): Promise<T> {
  try {
    return await run()
  } catch (e) {
    throw new MarvelError('MARVEL_IMAGE', `cannot ${what}: ${(e as Error).message}`, { cause: e })
  }
}

/** A file decoded to RGB, resized to `size` (width, height) when given (lanczos3, sharp's default). */
async function decodeRgb(file: Buffer, size?: [number, number]): Promise<RgbImage> {
  const { data, info } = await imageStep('decode a codec file', () => {
    let pipeline = sharp(file).removeAlpha()
    if (size) pipeline = pipeline.resize(size[0], size[1], { fit: 'fill' })
    return pipeline.raw().toBuffer({ resolveWithObject: true })
  })
  return { data: new Uint8Array(data.buffer, data.byteOffset, data.length), width: info.width, height: info.height }
}

/** PSNR of two images of one size (data range 255), enough to rank the downscaled candidates. */
function psnr(a: RgbImage, b: RgbImage): number {
  let sum = 0
  for (let i = 0; i < a.data.length; i++) sum += (a.data[i] - b.data[i]) ** 2
  return sum === 0 ? Infinity : 10 * Math.log10((255 * 255 * a.data.length) / sum)
}

/** An encoder of one image at any quality, each file made once. */
function qualityLadder(image: RgbImage, codec: Codec): (q: number) => Promise<Buffer> {
  const files = new Map<number, Buffer>()
  return async (q) => {
    let f = files.get(q)
    if (!f) {
      try {
        f = await encode(image, codec, q)
      } catch (e) {
        throw new MarvelError('MARVEL_IMAGE', `cannot encode a ${image.width}x${image.height} image as ${codec}: ${(e as Error).message}`, { cause: e })
      }
      files.set(q, f)
    }
    return f
  }
}

/** The smallest quality whose file reaches `targetBytes` (100 when none does): sizes grow with quality. */
async function firstQualityReaching(at: (q: number) => Promise<Buffer>, targetBytes: number): Promise<number> {
  let lo = 1
  let hi = 100
  while (lo < hi) {
    const mid = (lo + hi) >> 1
    if ((await at(mid)).length >= targetBytes) hi = mid
    else lo = mid + 1
  }
  return lo
}

/**
 * `image` through `codec` at the quality whose file size is closest to `targetBytes` (ties: the smaller file).
 * Sizes grow with quality, so a binary search over 1..100 needs about eight encodes. Below the smallest file the
 * codec can write (its headers alone outweigh a few dozen bytes of tokens) the answer is quality 1.
 */
export async function encodeAtBytes(image: RgbImage, codec: Codec, targetBytes: number): Promise<CodedImage> {
  const at = qualityLadder(image, codec)
  const lo = await firstQualityReaching(at, targetBytes)
  let quality = lo
  if (lo > 1) {
    const below = await at(lo - 1)
    if (Math.abs(below.length - targetBytes) <= Math.abs((await at(lo)).length - targetBytes)) quality = lo - 1
  }
  const file = await at(quality)
  return { codec, quality, downscale: 1, withinBudget: file.length <= targetBytes, bytes: file.length, image: await decodeRgb(file) }
}

/**
 * `image` downscaled by 2, 4, 8 or 16 (lanczos3), through `codec` at the highest quality whose file fits
 * `budgetBytes` (found by bisection: sizes grow with quality), decoded and upscaled back to the original size: of the
 * factors whose file fits, the one with the best PSNR against the original. When no factor fits (the smallest file
 * of every copy is over the budget), the smallest of those files, with `withinBudget` false.
 */
export async function encodeDownscaledWithin(image: RgbImage, codec: Codec, budgetBytes: number): Promise<CodedImage> {
  const { width, height } = image
  const variant: CodecVariant = `${codec}-downscaled`
  let best: { coded: CodedImage; psnr: number } | undefined
  let smallest: { file: Buffer; factor: number } | undefined
  for (const factor of DOWNSCALE_FACTORS) {
    const w = Math.max(1, Math.round(width / factor))
    const h = Math.max(1, Math.round(height / factor))
    const { data } = await imageStep(`downscale a ${width}x${height} image`, () =>
      raw(image).resize(w, h, { fit: 'fill' }).raw().toBuffer({ resolveWithObject: true }),
    )
    const at = qualityLadder({ data: new Uint8Array(data.buffer, data.byteOffset, data.length), width: w, height: h }, codec)
    const lowest = await at(1)
    if (!smallest || lowest.length < smallest.file.length) smallest = { file: lowest, factor }
    if (lowest.length > budgetBytes) continue
    // One below the first quality that goes over (100 when none does); quality 1 fits, so that one was seen to fit.
    const over = await firstQualityReaching(at, budgetBytes + 1)
    const quality = (await at(over)).length > budgetBytes ? over - 1 : over
    const file = await at(quality)
    const restored = await decodeRgb(file, [width, height])
    const score = psnr(image, restored)
    if (!best || score > best.psnr) {
      best = { coded: { codec: variant, quality, downscale: factor, withinBudget: true, bytes: file.length, image: restored }, psnr: score }
    }
  }
  if (best) return best.coded
  const { file, factor } = smallest!
  return { codec: variant, quality: 1, downscale: factor, withinBudget: false, bytes: file.length, image: await decodeRgb(file, [width, height]) }
}
