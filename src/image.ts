/**
 * Image I/O through sharp: any format sharp reads (PNG, JPEG, WebP, TIFF, GIF's first frame, ...) in any
 * colour layout (greyscale, alpha, CMYK) becomes tightly packed 8-bit RGB; RGB images are written as PNG.
 */
import sharp, { type Sharp } from 'sharp'

import { MarvelError, integerParameter, invalidParameter, optionsParameter } from './errors.js'
import { expectKind, outputPath, pathParameter } from './files.js'
import { getNumThreads } from './threads.js'

/** libvips' limit on an image side. */
const MAX_SIDE = 10_000_000

/** 8-bit RGB pixels, row-major, `data.length === width * height * 3`. */
export interface RgbImage {
  data: Uint8Array
  width: number
  height: number
}

/** Raw pixels with any channel count sharp understands (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA). */
export interface RawImage {
  data: Uint8Array
  width: number
  height: number
  channels: 1 | 2 | 3 | 4
}

/** What `readImage` accepts: a file path, an encoded image in memory, or a sharp pipeline. */
export type ImageSource = string | Buffer | Uint8Array | Sharp

function describe(src: ImageSource): string {
  if (typeof src === 'string') return src
  if (src instanceof Uint8Array) return `buffer of ${src.length} bytes`
  return 'sharp instance'
}

/**
 * Decoding slots shared by the whole process. Each decode holds a full-resolution bitmap (36 MB for a 4K photo)
 * until it is resized, and sharp's own queue only bounds the work, not those bitmaps; so without a bound, 200
 * concurrent `encode()` calls held 200 of them (5.9 GB against 0.53 GB sequentially). The bound is the compute
 * thread count (`getNumThreads()`, read at each acquire so `setNumThreads` applies at once): more decodes at
 * once than cores only adds memory, not speed.
 */
class DecodeSlots {
  #active = 0
  #waiting: Array<() => void> = []
  /** Most decodes seen running at once (read by the tests and the memory bench). */
  peak = 0

  async run<T>(task: () => Promise<T>): Promise<T> {
    // A woken waiter finds its slot already counted (see #release), so no newcomer can slip in between.
    if (this.#active < getNumThreads()) this.#active++
    else await new Promise<void>((wake) => this.#waiting.push(wake))
    this.peak = Math.max(this.peak, this.#active)
    try {
      return await task()
    } finally {
      this.#release()
    }
  }

  #release(): void {
    this.#active--
    while (this.#waiting.length > 0 && this.#active < getNumThreads()) {
      this.#active++
      this.#waiting.shift()!()
    }
  }
}

export const decodeSlots = new DecodeSlots()

/** Decode an image to RGB. Alpha is dropped (as PIL's `convert("RGB")`); CMYK and greyscale convert to sRGB. */
export async function readImage(src: ImageSource): Promise<RgbImage> {
  return decodeSlots.run(() => decode(src))
}

async function decode(src: ImageSource): Promise<RgbImage> {
  let pipeline: Sharp
  if (typeof src === 'string' || src instanceof Uint8Array) {
    if (src instanceof Uint8Array && src.length === 0) throw new MarvelError('MARVEL_IMAGE', 'cannot decode image: buffer is empty')
    if (typeof src === 'string') {
      pathParameter('readImage', 'an image path', src)
      await expectKind(src, 'image')
    }
    // sharp's levels, from lenient to strict: none, truncated, error, warning. 'truncated' still accepts a cut
    // JPEG-compressed TIFF (sharp's default TIFF) as a black image; 'error' refuses every cut, and unlike
    // 'warning' it keeps accepting valid files whose metadata libvips merely warns about.
    pipeline = sharp(src, { failOn: 'error', pages: 1, page: 0 })
  } else if (src && typeof (src as Sharp).toBuffer === 'function') {
    pipeline = (src as Sharp).clone()
  } else {
    throw invalidParameter('readImage', 'the image', 'a path, a Buffer/Uint8Array or a sharp instance', src)
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
    // Gone between the check above and the read.
    if (typeof src === 'string' && /Input file is missing|no such file/i.test(err.message)) {
      throw new MarvelError('MARVEL_IO', `cannot read image ${src}: file not found`, { cause: e })
    }
    throw new MarvelError('MARVEL_IMAGE', `cannot decode image (${describe(src)}): ${err.message}`, { cause: e })
  }
}

function checkRgb(where: string, image: RgbImage): void {
  if (image === null || typeof image !== 'object') throw invalidParameter(where, 'image', 'an RGB image { data: Uint8Array, width, height }', image)
  const { data, width, height } = image
  if (!(data instanceof Uint8Array)) throw invalidParameter(where, 'image.data', 'a Uint8Array', data)
  integerParameter(where, 'image.width', width, 1, MAX_SIDE)
  integerParameter(where, 'image.height', height, 1, MAX_SIDE)
  if (data.length !== width * height * 3) {
    throw new MarvelError(
      'MARVEL_SHAPE_MISMATCH',
      `${where}: RGB image of ${width}x${height} needs ${width * height * 3} bytes, got ${data.length}`,
    )
  }
}

/** Encode an RGB image as PNG. */
export async function encodePng(image: RgbImage): Promise<Buffer> {
  checkRgb('encodePng', image)
  try {
    return await sharp(image.data, { raw: { width: image.width, height: image.height, channels: 3 } }).png().toBuffer()
  } catch (e) {
    throw new MarvelError('MARVEL_IMAGE', `cannot encode a ${image.width}x${image.height} image as PNG: ${(e as Error).message}`, { cause: e })
  }
}

/** Write an RGB image to a PNG file. */
export async function writePng(image: RgbImage, path: string): Promise<void> {
  checkRgb('writePng', image)
  await outputPath('writePng', 'path', path, 'image')
  const png = await encodePng(image)
  const { writeFile } = await import('node:fs/promises')
  try {
    await writeFile(path, png)
  } catch (e) {
    throw new MarvelError('MARVEL_IO', `cannot write ${path}: ${(e as Error).message}`, { cause: e })
  }
}

/** How `prepareImage` brings an image to the model's square input size. */
export interface PrepareOptions {
  /** Side of the square model input. Default 256. */
  size?: number
  /**
   * `'center-crop'` (default): the reference evaluation preprocessing — resize the shorter side to `size` with an
   * antialiased bicubic filter, then take the centre `size`×`size` crop. `'none'`: the image must already be
   * `size`×`size` and passes through untouched (an error otherwise).
   */
  resize?: 'center-crop' | 'none'
}

/** Python's round(): halves go to the even neighbour (torchvision's CenterCrop offsets use it). */
function roundHalfEven(x: number): number {
  const r = Math.round(x)
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r
}

/**
 * Decode and bring an image to the model input: `size`×`size` RGB. Matches torchvision's
 * `Resize(size, BICUBIC, antialias=True)` + `CenterCrop(size)` geometry: the longer side becomes
 * `floor(size * long / short)` and the crop offsets are `round((side - size) / 2)`.
 */
export async function prepareImage(src: ImageSource | RgbImage | RawImage, options: PrepareOptions = {}): Promise<RgbImage> {
  options = optionsParameter('prepareImage', options, ['size', 'resize'])
  const size = integerParameter('prepareImage', 'size', options.size ?? 256, 1, MAX_SIDE)
  const mode = options.resize ?? 'center-crop'
  if (mode !== 'center-crop' && mode !== 'none') throw invalidParameter('prepareImage', 'resize', "'center-crop' or 'none'", mode)
  // One slot from decode to crop: the full-resolution bitmap lives until the resize below has run.
  return decodeSlots.run(async () => cropped(isRgbImage(src) ? await rgbOf(src) : await decode(src), size, mode))
}

async function cropped(image: RgbImage, size: number, mode: 'center-crop' | 'none'): Promise<RgbImage> {
  const { width: w, height: h } = image
  if (w === size && h === size) return image
  if (mode === 'none') {
    throw new MarvelError('MARVEL_SHAPE_MISMATCH', `image is ${w}x${h}; with resize 'none' it must be ${size}x${size}`)
  }
  const [nw, nh] = w <= h ? [size, Math.floor((size * h) / w)] : [Math.floor((size * w) / h), size]
  const left = roundHalfEven((nw - size) / 2)
  const top = roundHalfEven((nh - size) / 2)
  try {
    const { data } = await sharp(image.data, { raw: { width: w, height: h, channels: 3 } })
      .resize(nw, nh, { fit: 'fill', kernel: 'cubic' })
      .extract({ left, top, width: size, height: size })
      .raw()
      .toBuffer({ resolveWithObject: true })
    return { data: new Uint8Array(data.buffer, data.byteOffset, data.length), width: size, height: size }
  } catch (e) {
    throw new MarvelError('MARVEL_IMAGE', `cannot resize ${w}x${h} image to ${size}x${size}: ${(e as Error).message}`, { cause: e })
  }
}

/** Raw pixels as RGB: 3 channels pass through (checked), others convert through sharp. */
async function rgbOf(src: RgbImage | RawImage): Promise<RgbImage> {
  const channels = 'channels' in src ? src.channels : 3
  if (channels === 3) {
    checkRgb('prepareImage', src)
    return src
  }
  if (![1, 2, 4].includes(channels)) throw invalidParameter('prepareImage', 'image.channels', '1, 2, 3 or 4', channels)
  integerParameter('prepareImage', 'image.width', src.width, 1, MAX_SIDE)
  integerParameter('prepareImage', 'image.height', src.height, 1, MAX_SIDE)
  const expected = src.width * src.height * channels
  if (src.data.length !== expected) {
    throw new MarvelError('MARVEL_SHAPE_MISMATCH', `raw ${src.width}x${src.height}x${channels} image needs ${expected} bytes, got ${src.data.length}`)
  }
  return decode(sharp(src.data, { raw: { width: src.width, height: src.height, channels } }))
}

export function isRgbImage(x: unknown): x is RgbImage | RawImage {
  return !!x && typeof x === 'object' && (x as RgbImage).data instanceof Uint8Array && 'width' in x && 'height' in x && !(x instanceof Uint8Array)
}

/** What an encoder takes as one image (the `ImageInput` of `Tokenizer.encode` and `MaskgitVqgan.encode`). */
export function isImageInput(x: unknown): boolean {
  return typeof x === 'string' || x instanceof Uint8Array || (!!x && typeof (x as Sharp).toBuffer === 'function') || isRgbImage(x)
}

/**
 * `images` (one image or an array of them) as a non-empty list, every entry checked before any is decoded: a hole
 * in the array or a number would otherwise surface as a bare TypeError from deep inside a batch.
 */
export function imageList<T>(where: string, images: T | T[]): T[] {
  const list = Array.isArray(images) ? images : [images]
  if (list.length === 0) throw invalidParameter(where, 'images', 'an image or a non-empty array of images', images)
  const many = Array.isArray(images)
  // An index loop: forEach and map skip holes.
  for (let i = 0; i < list.length; i++) {
    if (!isImageInput(list[i])) {
      throw invalidParameter(where, many ? `images[${i}]` : 'images', 'a path, an encoded image (Buffer), a sharp instance or raw pixels { data, width, height }', list[i])
    }
  }
  return list
}
