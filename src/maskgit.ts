import { existsSync } from 'node:fs'
import { stat } from 'node:fs/promises'
import { join } from 'node:path'

import { native, weightFiles, type NativeBinding } from './binding.js'
import { MarvelError, integerParameter, invalidParameter, optionsParameter } from './errors.js'
import { expectKind, pathParameter } from './files.js'
import { imageList, prepareImage, type PrepareOptions } from './image.js'
import type { Tensor } from './tensor.js'
import { NativeLease } from './lease.js'
import { decoded, type DecodedImage, type ImageInput } from './tokenizer.js'

type NativeMaskgit = Awaited<ReturnType<NativeBinding['loadMaskgit']>>

/** What a loaded MaskGIT-VQGAN is. */
export interface MaskgitInfo {
  /** Side of the square images it takes (256). */
  imageSize: number
  /** Side of the code grid (16): each image becomes `grid * grid` codes. */
  grid: number
  /** Codes lie in `0..codebookSize` (1024). */
  codebookSize: number
  /** Where the model was loaded from. */
  source: string
}

export interface MaskgitEncodeOptions {
  /** `'center-crop'` (default): resize the shorter side to the model's size and crop the centre. `'none'`: inputs must already have that size. */
  resize?: PrepareOptions['resize']
  /** Images per native call (memory bound for long lists). Default 16. */
  batchSize?: number
}

/**
 * The MaskGIT-VQGAN (`maskgit-vqgan-imagenet-f16-256`): a 256x256 image to a 16x16 grid of codes from a
 * 1024-entry codebook and back. TiTok's stage-1 training learns to predict these codes ("proxy codes").
 *
 * ```ts
 * const vq = await MaskgitVqgan.fromPretrained('maskgit-vqgan-imagenet-f16-256.bin')
 * const codes = await vq.encode(['a.png', 'b.png'])     // 2 x 256 codes
 * const [a] = await vq.decode(codes.subarray(0, 256))
 * await a.toFile('a.recon.png')
 * ```
 */
export class MaskgitVqgan {
  readonly #lease: NativeLease<NativeMaskgit>
  readonly info: Readonly<MaskgitInfo>

  private constructor(nativeModel: NativeMaskgit, source: string) {
    this.#lease = new NativeLease(nativeModel, 'model')
    const { imageSize, grid, codebookSize } = nativeModel.info
    this.info = Object.freeze({ imageSize, grid, codebookSize, source })
  }

  /** A weights file (`maskgit-vqgan-imagenet-f16-256.bin`, `.safetensors`) or a folder holding one (+ optional config.json). */
  static async fromPretrained(path: string): Promise<MaskgitVqgan> {
    if (typeof path !== 'string' || path.length === 0) throw invalidParameter('fromPretrained', 'path', 'a weights file or a folder', path)
    pathParameter('fromPretrained', 'path', path)
    // As Tokenizer.fromPretrained: the path and a folder's model files are checked before the native loader runs,
    // so a FIFO or a socket is named as such (the loader skips what is not a regular file, and would fall back to
    // the default config or to another weights file without a word).
    const info = await stat(path).catch(() => undefined)
    if (info?.isDirectory()) {
      for (const name of ['config.json', ...weightFiles()]) {
        const file = join(path, name)
        if (existsSync(file)) await expectKind(file, 'model file')
      }
    } else {
      await expectKind(path, 'weights file')
    }
    return new MaskgitVqgan(await native().loadMaskgit(path), path)
  }

  /** Codes of each image, row-major over its grid: `codes[i * grid² + y * grid + x]`. */
  async encode(images: ImageInput | ImageInput[], options?: MaskgitEncodeOptions): Promise<Uint32Array> {
    options = optionsParameter('encode', options, ['resize', 'batchSize'])
    const list = imageList('encode', images)
    const batchSize = integerParameter('encode', 'batchSize', options.batchSize ?? 16, 1, 65536)
    const resize = options.resize ?? 'center-crop'
    if (resize !== 'center-crop' && resize !== 'none') throw invalidParameter('encode', 'resize', "'center-crop' or 'none'", resize)
    const { imageSize: size, grid } = this.info
    const frame = size * size * 3
    return this.#lease.use(async (model) => {
      const codes = new Uint32Array(list.length * grid * grid)
      for (let start = 0; start < list.length; start += batchSize) {
        const prepared = await Promise.all(list.slice(start, start + batchSize).map((img) => prepareImage(img, { size, resize })))
        const rgb = new Uint8Array(prepared.length * frame)
        prepared.forEach((p, i) => rgb.set(p.data, i * frame))
        codes.set(await this.#lease.queue.run(() => model.encode(rgb, prepared.length)), start * grid * grid)
      }
      return codes
    })
  }

  /** Checks that `codes` are whole grids; returns how many images they hold. Rust checks each code's range. */
  #images(where: string, codes: Uint32Array): number {
    if (!(codes instanceof Uint32Array)) throw invalidParameter(where, 'codes', 'a Uint32Array', codes)
    const { grid } = this.info
    const perImage = grid * grid
    if (codes.length === 0 || codes.length % perImage !== 0) {
      throw new MarvelError('MARVEL_SHAPE_MISMATCH', `${where}: codes hold ${codes.length} values, not whole ${grid}x${grid} grids (${perImage} per image)`)
    }
    return codes.length / perImage
  }

  /** Images from code grids (`grid²` codes each), as RGB bytes with `toPNG()` / `toFile()`. */
  async decode(codes: Uint32Array): Promise<DecodedImage[]> {
    const batch = this.#images('decode', codes)
    const rgb = await this.#lease.step((model) => model.decode(codes))
    const size = this.info.imageSize
    const frame = size * size * 3
    return Array.from({ length: batch }, (_, i) => decoded({ data: rgb.subarray(i * frame, (i + 1) * frame), width: size, height: size }))
  }

  /** Images from code grids as float `[batch, 3, size, size]` in [0, 1] (full precision, for comparisons). */
  async decodeFloat(codes: Uint32Array): Promise<Tensor> {
    this.#images('decodeFloat', codes)
    return this.#lease.step((model) => model.decodeFloat(codes))
  }

  /** Free the model's memory (once calls in flight finish). Any later call throws. */
  dispose(): void {
    this.#lease.dispose()
  }

  get disposed(): boolean {
    return this.#lease.disposed
  }
}
