/**
 * rFID's ingredients: pytorch-fid's InceptionV3 (`FidInception`, the network's weights supplied by the user) and the
 * Fréchet distance of two feature sets (`frechetDistance`), both computed in Rust off the main thread.
 */
import { existsSync } from 'node:fs'

import { native, type NativeBinding } from '../binding.js'
import { MarvelError, invalidParameter } from '../errors.js'
import { expectKind, pathParameter } from '../files.js'
import type { RgbImage } from '../image.js'
import { NativeLease } from '../lease.js'

type NativeInception = Awaited<ReturnType<NativeBinding['loadInception']>>

/** The environment variable naming the Inception weights when no path is passed. */
export const INCEPTION_WEIGHTS_ENV = 'MARVEL_INCEPTION_WEIGHTS'

/** Length of a pool3 feature vector. */
export const INCEPTION_FEATURES = 2048

/**
 * pytorch-fid's InceptionV3 (the network behind FID): images to 2048 pool3 features, each image resized to
 * 299x299 (bilinear) and scaled to [-1, 1] as pytorch-fid does. The weights are pytorch-fid's
 * `pt_inception-2015-12-05-6726825d.pth` (or that state dict as safetensors); marvel does not ship or download them.
 *
 * ```ts
 * const net = await FidInception.load('pt_inception-2015-12-05-6726825d.pth')
 * const fid = await frechetDistance(await net.features(real), await net.features(fake))
 * ```
 */
export class FidInception {
  readonly #lease: NativeLease<NativeInception>
  readonly source: string

  private constructor(model: NativeInception, source: string) {
    this.#lease = new NativeLease(model, 'Inception network')
    this.source = source
  }

  /** Load the weights from `path`, or from `$MARVEL_INCEPTION_WEIGHTS` when `path` is omitted. */
  static async load(path?: string): Promise<FidInception> {
    const file = path ?? process.env[INCEPTION_WEIGHTS_ENV]
    if (file === undefined || file === '') {
      throw new MarvelError('MARVEL_IO', `FidInception.load: no weights file given and $${INCEPTION_WEIGHTS_ENV} is not set`)
    }
    if (typeof file !== 'string') throw invalidParameter('FidInception.load', 'path', 'a weights file path', file)
    pathParameter('FidInception.load', 'path', file)
    if (!existsSync(file)) throw new MarvelError('MARVEL_IO', `FidInception.load: Inception weights ${file} not found`)
    await expectKind(file, 'Inception weights')
    try {
      return new FidInception(await native().loadInception(file), file)
    } catch (e) {
      // pytorch-fid's .pth may predate PyTorch 1.6's zip format, which is the only .pth layout marvel reads.
      if (e instanceof Error && /not a PyTorch zip checkpoint/.test(e.message)) {
        const hint = `; re-save it in the zip format: python -c "import torch; torch.save(torch.load('${file}'), 'pt_inception.pth')"`
        throw new MarvelError((e as MarvelError).code ?? 'MARVEL_CHECKPOINT', `${e.message}${hint}`, { cause: e })
      }
      throw e
    }
  }

  /** Pool3 features of `images` (any sizes), `images.length x 2048` values, image after image. */
  async features(images: RgbImage[]): Promise<Float32Array> {
    if (!Array.isArray(images) || images.length === 0) throw invalidParameter('features', 'images', 'a non-empty array of RGB images', images)
    const out = new Float32Array(images.length * INCEPTION_FEATURES)
    // Consecutive images of one size share a native call.
    for (let start = 0; start < images.length; ) {
      const { width, height } = images[start]
      let end = start + 1
      while (end < images.length && images[end].width === width && images[end].height === height) end++
      const frame = width * height * 3
      const rgb = new Uint8Array((end - start) * frame)
      for (let i = start; i < end; i++) {
        if (images[i].data.length !== frame) throw new MarvelError('MARVEL_SHAPE_MISMATCH', `features: images[${i}] is ${width}x${height} RGB and needs ${frame} bytes, got ${images[i].data.length}`)
        rgb.set(images[i].data, (i - start) * frame)
      }
      const f = await this.#lease.step((m) => m.features(rgb, end - start, height, width))
      out.set(f, start * INCEPTION_FEATURES)
      start = end
    }
    return out
  }

  dispose(): void {
    this.#lease.dispose()
  }
}

/**
 * The Fréchet distance between the Gaussians fitted to two feature sets (`dim` values per vector, at least two
 * vectors each): `|μ₁ − μ₂|² + tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½)`, statistics in float64 — FID when the features are
 * Inception pool3 features.
 */
export async function frechetDistance(a: Float32Array, b: Float32Array, dim = INCEPTION_FEATURES): Promise<number> {
  if (!(a instanceof Float32Array)) throw invalidParameter('frechetDistance', 'a', 'a Float32Array of features', a)
  if (!(b instanceof Float32Array)) throw invalidParameter('frechetDistance', 'b', 'a Float32Array of features', b)
  if (!Number.isSafeInteger(dim) || dim < 1) throw invalidParameter('frechetDistance', 'dim', 'a positive integer', dim)
  for (const [name, x] of [['a', a], ['b', b]] as const) {
    if (x.length % dim !== 0 || x.length === 0) throw new MarvelError('MARVEL_SHAPE_MISMATCH', `frechetDistance: ${name} holds ${x.length} values, not a whole number of ${dim}-d vectors`)
  }
  return (await frechetDistances(a, [b], dim))[0]
}

/** The Fréchet distances from `reference` to each of `others` (the reference's statistics computed once). */
export async function frechetDistances(reference: Float32Array, others: Float32Array[], dim = INCEPTION_FEATURES): Promise<number[]> {
  return Array.from(await native().frechetDistances(reference, reference.length / dim, others, others.map((o) => o.length / dim), dim))
}
