/**
 * Classic codecs at a given size: an image encoded with WebP or JPEG (sharp / libvips, default settings: 4:2:0
 * chroma, no metadata) at the quality whose file is closest to a byte budget — how the tokens' rate is put beside
 * what a general-purpose codec does with the same bytes.
 */
import sharp from 'sharp'

import { MarvelError } from '../errors.js'
import type { RgbImage } from '../image.js'

export type Codec = 'webp' | 'jpeg'
export const CODECS: readonly Codec[] = ['webp', 'jpeg']

export interface CodedImage {
  codec: Codec
  /** The quality (1..100) whose file is closest to the budget. */
  quality: number
  /** Its file size in bytes. */
  bytes: number
  /** The decoded result. */
  image: RgbImage
}

async function encode(image: RgbImage, codec: Codec, quality: number): Promise<Buffer> {
  const input = sharp(Buffer.from(image.data.buffer, image.data.byteOffset, image.data.byteLength), {
    raw: { width: image.width, height: image.height, channels: 3 },
  })
  return codec === 'webp' ? input.webp({ quality }).toBuffer() : input.jpeg({ quality }).toBuffer()
}

async function decodeRgb(file: Buffer): Promise<RgbImage> {
  const { data, info } = await sharp(file).removeAlpha().raw().toBuffer({ resolveWithObject: true })
  return { data: new Uint8Array(data.buffer, data.byteOffset, data.length), width: info.width, height: info.height }
}

/**
 * `image` through `codec` at the quality whose file size is closest to `targetBytes` (ties: the smaller file).
 * Sizes grow with quality, so a binary search over 1..100 needs about eight encodes. Below the smallest file the
 * codec can write (its headers alone outweigh a few dozen bytes of tokens) the answer is quality 1.
 */
export async function encodeAtBytes(image: RgbImage, codec: Codec, targetBytes: number): Promise<CodedImage> {
  const files = new Map<number, Buffer>()
  const at = async (q: number) => {
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
  // Smallest quality whose file reaches the target (100 when none does).
  let lo = 1
  let hi = 100
  while (lo < hi) {
    const mid = (lo + hi) >> 1
    if ((await at(mid)).length >= targetBytes) hi = mid
    else lo = mid + 1
  }
  let quality = lo
  if (lo > 1) {
    const below = await at(lo - 1)
    if (Math.abs(below.length - targetBytes) <= Math.abs((await at(lo)).length - targetBytes)) quality = lo - 1
  }
  const file = await at(quality)
  return { codec, quality, bytes: file.length, image: await decodeRgb(file) }
}
