/**
 * Classic codecs at a given size: an image encoded with WebP or JPEG (sharp / libvips, default settings: 4:2:0
 * chroma, no metadata) at the quality whose file is closest to a byte budget — how the tokens' rate is put beside
 * what a general-purpose codec does with the same bytes. At the few hundred bytes of a handful of tokens neither
 * codec can write a full-resolution 256x256 file, so each also runs on a downscaled copy (1/2, 1/4 or 1/8 of the
 * side, upscaled back after decoding): the rate a thumbnail spends, which is what a codec user would do at that size.
 */
import sharp from 'sharp'

import { compare } from '../metrics.js'
import { MarvelError } from '../errors.js'
import type { RgbImage } from '../image.js'

export type Codec = 'webp' | 'jpeg'
export const CODECS: readonly Codec[] = ['webp', 'jpeg']
/** A codec at full resolution, or on a downscaled copy (`<codec>-downscaled`). */
export type CodecVariant = Codec | `${Codec}-downscaled`
export const CODEC_VARIANTS: readonly CodecVariant[] = ['webp', 'jpeg', 'webp-downscaled', 'jpeg-downscaled']
/** The downscale factors tried by `encodeDownscaledWithin`. */
export const DOWNSCALE_FACTORS: readonly number[] = [2, 4, 8]

export interface CodedImage {
  codec: CodecVariant
  /** The quality (1..100) chosen. */
  quality: number
  /** The side was divided by this before encoding (1: full resolution). */
  downscale: number
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

/** A file decoded to RGB, resized to `size` (width, height) when given (lanczos3, sharp's default). */
async function decodeRgb(file: Buffer, size?: [number, number]): Promise<RgbImage> {
  let pipeline = sharp(file).removeAlpha()
  if (size) pipeline = pipeline.resize(size[0], size[1], { fit: 'fill' })
  const { data, info } = await pipeline.raw().toBuffer({ resolveWithObject: true })
  return { data: new Uint8Array(data.buffer, data.byteOffset, data.length), width: info.width, height: info.height }
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
  return { codec, quality, downscale: 1, bytes: file.length, image: await decodeRgb(file) }
}

/**
 * `image` downscaled by 2, 4 or 8 (lanczos3), through `codec` at the highest quality whose file fits `budgetBytes`,
 * decoded and upscaled back to the original size: of the factors whose file fits, the one with the best PSNR against
 * the original. When no factor fits (the smallest file of the smallest copy is over the budget), that smallest file.
 */
export async function encodeDownscaledWithin(image: RgbImage, codec: Codec, budgetBytes: number): Promise<CodedImage> {
  const { width, height } = image
  let best: { coded: CodedImage; psnr: number } | undefined
  let smallest: { file: Buffer; factor: number } | undefined
  for (const factor of DOWNSCALE_FACTORS) {
    const w = Math.max(1, Math.round(width / factor))
    const h = Math.max(1, Math.round(height / factor))
    const { data } = await raw(image).resize(w, h, { fit: 'fill' }).raw().toBuffer({ resolveWithObject: true })
    const at = qualityLadder({ data: new Uint8Array(data.buffer, data.byteOffset, data.length), width: w, height: h }, codec)
    const lowest = await at(1)
    if (!smallest || lowest.length < smallest.file.length) smallest = { file: lowest, factor }
    if (lowest.length > budgetBytes) continue
    // The highest quality that fits: one below the first that goes over (100 when none does).
    const over = await firstQualityReaching(at, budgetBytes + 1)
    const quality = (await at(over)).length > budgetBytes ? over - 1 : over
    const file = await at(quality)
    const restored = await decodeRgb(file, [width, height])
    const [score] = await compare(image, restored)
    if (!best || score.psnr > best.psnr) {
      best = { coded: { codec: `${codec}-downscaled`, quality, downscale: factor, bytes: file.length, image: restored }, psnr: score.psnr }
    }
  }
  if (best) return best.coded
  const { file, factor } = smallest!
  return { codec: `${codec}-downscaled`, quality: 1, downscale: factor, bytes: file.length, image: await decodeRgb(file, [width, height]) }
}
