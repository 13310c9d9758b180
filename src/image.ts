/**
 * Image I/O through sharp: any format sharp reads (PNG, JPEG, WebP, TIFF, GIF's first frame, ...) in any
 * colour layout (greyscale, alpha, CMYK) becomes tightly packed 8-bit RGB; RGB images are written as PNG.
 */
import sharp, { type Sharp } from 'sharp'

import { MarvelError, invalidArgument } from './errors.js'

/** 8-bit RGB pixels, row-major, `data.length === width * height * 3`. */
export interface RgbImage {
  data: Uint8Array
  width: number
  height: number
}

/** What `readImage` accepts: a file path, an encoded image in memory, or a sharp pipeline. */
export type ImageSource = string | Buffer | Uint8Array | Sharp

function describe(src: ImageSource): string {
  if (typeof src === 'string') return src
  if (src instanceof Uint8Array) return `buffer of ${src.length} bytes`
  return 'sharp instance'
}

/** Decode an image to RGB. Alpha is dropped (as PIL's `convert("RGB")`); CMYK and greyscale convert to sRGB. */
export async function readImage(src: ImageSource): Promise<RgbImage> {
  let pipeline: Sharp
  if (typeof src === 'string' || src instanceof Uint8Array) {
    if (src instanceof Uint8Array && src.length === 0) throw new MarvelError('MARVEL_IMAGE', 'cannot decode image: buffer is empty')
    // failOn 'error' (not the default 'warning') would accept truncated files; reject them instead.
    pipeline = sharp(src, { failOn: 'truncated', pages: 1, page: 0 })
  } else if (src && typeof (src as Sharp).toBuffer === 'function') {
    pipeline = (src as Sharp).clone()
  } else {
    throw invalidArgument(`readImage: expected a path, a Buffer/Uint8Array or a sharp instance, got ${typeof src}`)
  }
  try {
    const { data, info } = await pipeline
      .toColourspace('srgb')
      .removeAlpha()
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true })
    if (info.channels !== 3) {
      throw new MarvelError('MARVEL_IMAGE', `cannot convert ${describe(src)} to RGB: decoder gave ${info.channels} channels`)
    }
    return { data: new Uint8Array(data.buffer, data.byteOffset, data.length), width: info.width, height: info.height }
  } catch (e) {
    if (e instanceof MarvelError) throw e
    const err = e as NodeJS.ErrnoException
    if (typeof src === 'string' && /Input file is missing|no such file/i.test(err.message)) {
      throw new MarvelError('MARVEL_IO', `cannot read image ${src}: file not found`, { cause: e })
    }
    throw new MarvelError('MARVEL_IMAGE', `cannot decode image (${describe(src)}): ${err.message}`, { cause: e })
  }
}

function checkRgb(image: RgbImage): void {
  const { data, width, height } = image ?? ({} as RgbImage)
  if (!(data instanceof Uint8Array)) throw invalidArgument('image.data must be a Uint8Array')
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw invalidArgument(`image size must be positive integers, got ${width}x${height}`)
  }
  if (data.length !== width * height * 3) {
    throw new MarvelError(
      'MARVEL_SHAPE_MISMATCH',
      `RGB image of ${width}x${height} needs ${width * height * 3} bytes, got ${data.length}`,
    )
  }
}

/** Encode an RGB image as PNG. */
export async function encodePng(image: RgbImage): Promise<Buffer> {
  checkRgb(image)
  return sharp(image.data, { raw: { width: image.width, height: image.height, channels: 3 } }).png().toBuffer()
}

/** Write an RGB image to a PNG file. */
export async function writePng(image: RgbImage, path: string): Promise<void> {
  const png = await encodePng(image)
  const { writeFile } = await import('node:fs/promises')
  try {
    await writeFile(path, png)
  } catch (e) {
    throw new MarvelError('MARVEL_IO', `cannot write ${path}: ${(e as Error).message}`, { cause: e })
  }
}
