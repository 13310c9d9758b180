/**
 * The reference's training augmentation (1d-tokenizer `data/webdataset_reader.py`): resize the shorter side to
 * `resize_shorter_edge` (bicubic, antialiased), crop `crop_size` square (random or centre), flip horizontally with
 * probability 1/2. sharp decodes and resizes on libuv's threads; the main thread only places the crop.
 */
import sharp from 'sharp'

import { MarvelError } from '../errors.js'

export interface Augmentation {
  resizeShorterEdge: number
  cropSize: number
  randomCrop: boolean
  randomFlip: boolean
}

/** Python's round(): halves to the even neighbour (torchvision's CenterCrop offsets). */
function roundHalfEven(x: number): number {
  const r = Math.round(x)
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r
}

/**
 * `cropSize`² RGB bytes of the encoded image `bytes`. `draws` are three uniform [0, 1) numbers: crop x, crop y and
 * flip; drawn by the caller from the data stream's generator, so the result does not depend on decode order.
 */
export async function augment(bytes: Uint8Array, aug: Augmentation, draws: readonly [number, number, number]): Promise<Buffer> {
  const short = aug.resizeShorterEdge
  const size = aug.cropSize
  try {
    // Decoded in full before resizing, as prepareImage (and PIL in the reference) does: resizing straight from the
    // file would let libvips shrink a JPEG or WebP on load (DCT scaling), a different filter, and pretokenized
    // codes (computed on prepareImage's crop) would then describe other pixels.
    const decoded = await sharp(bytes, { failOn: 'error', pages: 1, page: 0 })
      .toColourspace('srgb')
      .removeAlpha()
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true })
    const { width: w, height: h, channels } = decoded.info
    if (channels !== 3) throw new Error(`decoder gave ${channels} channels`)
    // torchvision's Resize(int): the shorter side becomes `short`, the longer int(short * long / short).
    const [nw, nh] = w <= h ? [short, Math.floor((short * h) / w)] : [Math.floor((short * w) / h), short]
    const left = aug.randomCrop ? Math.floor(draws[0] * (nw - size + 1)) : roundHalfEven((nw - size) / 2)
    const top = aug.randomCrop ? Math.floor(draws[1] * (nh - size + 1)) : roundHalfEven((nh - size) / 2)
    let pipeline = sharp(decoded.data, { raw: { width: w, height: h, channels: 3 } })
    if (w !== nw || h !== nh) pipeline = pipeline.resize(nw, nh, { fit: 'fill', kernel: 'cubic' })
    pipeline = pipeline.extract({ left, top, width: size, height: size })
    if (aug.randomFlip && draws[2] < 0.5) pipeline = pipeline.flop()
    const { data, info } = await pipeline.raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true })
    if (info.channels !== 3 || data.length !== size * size * 3) throw new Error(`decoder gave ${info.width}x${info.height}x${info.channels}`)
    return data
  } catch (e) {
    throw new MarvelError('MARVEL_IMAGE', `cannot decode image: ${(e as Error).message}`, { cause: e })
  }
}
