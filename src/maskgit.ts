import { native, type NativeBinding } from './binding.js'
import { invalidArgument } from './errors.js'
import { prepareImage, type RgbImage } from './image.js'
import type { ImageInput } from './tokenizer.js'

type NativeMaskgit = Awaited<ReturnType<NativeBinding['loadMaskgit']>>

/**
 * The MaskGIT-VQGAN (`maskgit-vqgan-imagenet-f16-256`): a 256x256 image to a 16x16 grid of codes from a
 * 1024-entry codebook and back. TiTok's stage-1 training learns to predict these codes ("proxy codes").
 */
export class MaskgitVqgan {
  #native: NativeMaskgit | undefined

  private constructor(n: NativeMaskgit) {
    this.#native = n
  }

  /** A weights file (`maskgit-vqgan-imagenet-f16-256.bin`, `.safetensors`) or a folder holding one (+ optional config.json). */
  static async fromPretrained(path: string): Promise<MaskgitVqgan> {
    if (typeof path !== 'string' || !path) throw invalidArgument('MaskgitVqgan.fromPretrained: path must be a file or folder')
    return new MaskgitVqgan(await native().loadMaskgit(path))
  }

  #model(): NativeMaskgit {
    if (!this.#native) throw invalidArgument('this model was disposed')
    return this.#native
  }

  /** Side of the code grid (16). */
  get grid(): number {
    return this.#model().grid
  }

  /** Codes of each image, row-major over the grid: `codes[i * grid² + y * grid + x]`. */
  async encode(images: ImageInput | ImageInput[], options: { resize?: 'center-crop' | 'none' } = {}): Promise<Uint32Array> {
    const model = this.#model()
    const list = Array.isArray(images) ? images : [images]
    if (list.length === 0) throw invalidArgument('encode: no images given')
    const size = model.imageSize
    const prepared: RgbImage[] = await Promise.all(list.map((img) => prepareImage(img, { size, resize: options.resize })))
    const rgb = new Uint8Array(prepared.length * size * size * 3)
    prepared.forEach((p, i) => rgb.set(p.data, i * size * size * 3))
    return model.encode(rgb, prepared.length)
  }

  /** Images from `batch` code grids, as float `[batch, 3, size, size]` in [0, 1]. */
  async decodeFloat(codes: Uint32Array, batch: number): Promise<{ data: Float32Array; shape: number[] }> {
    if (!(codes instanceof Uint32Array)) throw invalidArgument('decodeFloat: codes must be a Uint32Array')
    return this.#model().decodeFloat(codes, batch)
  }

  /** Images from `batch` code grids, as RGB bytes. */
  async decode(codes: Uint32Array, batch: number): Promise<RgbImage[]> {
    if (!(codes instanceof Uint32Array)) throw invalidArgument('decode: codes must be a Uint32Array')
    const model = this.#model()
    const size = model.imageSize
    const rgb = await model.decode(codes, batch)
    const frame = size * size * 3
    return Array.from({ length: batch }, (_, i) => ({ data: rgb.subarray(i * frame, (i + 1) * frame), width: size, height: size }))
  }

  dispose(): void {
    this.#native?.dispose()
    this.#native = undefined
  }
}
