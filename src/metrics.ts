/**
 * Full-reference image quality: PSNR, SSIM and MS-SSIM of image pairs, computed in Rust off the main thread.
 *
 * Conventions (those of scikit-image, so figures compare with published evaluations):
 * - PSNR: `10 log10(255² / MSE)` in dB, the MSE over all pixels and all three channels; identical images give
 *   `Infinity`.
 * - SSIM (Wang et al. 2004): 11x11 Gaussian window with σ = 1.5, K1 = 0.01, K2 = 0.03, L = 255, population
 *   statistics, averaged over the valid region (a 5-pixel border dropped) per channel, then over the channels —
 *   skimage's `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
 *   data_range=255, channel_axis=-1)`.
 * - MS-SSIM (Wang et al. 2003): pytorch-msssim's `ms_ssim(data_range=255)` — five scales with weights
 *   [0.0448, 0.2856, 0.3001, 0.2363, 0.1333], the same window, 2x2 average pooling between scales; defined for sides
 *   of at least 161 pixels (`null` below).
 */
import { native } from './binding.js'
import { MarvelError, integerParameter, invalidParameter } from './errors.js'
import type { RgbImage } from './image.js'

/** Scores of one image pair. */
export interface ImageScores {
  /** Peak signal-to-noise ratio in dB (`Infinity` when the images are identical). */
  psnr: number
  /** Structural similarity, at most 1 (1 when the images are identical). */
  ssim: number
  /** Multi-scale SSIM in [0, 1]; `null` when a side is under 161 pixels (too small for five scales). */
  msSsim: number | null
}

/** The smallest side SSIM's 11x11 window allows. */
const MIN_SIDE = 11
/** libvips' limit on an image side; images come from it. */
const MAX_SIDE = 10_000_000

function checkImage(image: RgbImage, label: string): void {
  if (!image || typeof image !== 'object' || !(image.data instanceof Uint8Array)) {
    throw invalidParameter('compare', label, 'an RGB image { data: Uint8Array, width, height }', image)
  }
  const { data, width, height } = image
  // At least the SSIM window on each side.
  integerParameter('compare', `${label}.width`, width, MIN_SIDE, MAX_SIDE)
  integerParameter('compare', `${label}.height`, height, MIN_SIDE, MAX_SIDE)
  if (data.length !== width * height * 3) {
    throw new MarvelError('MARVEL_SHAPE_MISMATCH', `compare: ${label} is ${width}x${height} RGB and needs ${width * height * 3} bytes, got ${data.length}`)
  }
}

/** One contiguous `(batch, H, W, 3)` buffer; a single image is passed through without a copy. */
function stack(images: RgbImage[]): Uint8Array {
  if (images.length === 1) return images[0].data
  const frame = images[0].data.length
  const out = new Uint8Array(images.length * frame)
  images.forEach((img, i) => out.set(img.data, i * frame))
  return out
}

/**
 * PSNR, SSIM and MS-SSIM of each pair `(a[i], b[i])` (or of the single pair `(a, b)`). Paired images must have the same
 * size, at least 11x11; pairs of different sizes may be mixed (each size is scored in one native call).
 *
 * ```ts
 * const [{ psnr, ssim }] = await compare(await readImage('cat.png'), (await tok.reconstruct('cat.png'))[0])
 * ```
 */
export async function compare(a: RgbImage | RgbImage[], b: RgbImage | RgbImage[]): Promise<ImageScores[]> {
  if (Array.isArray(a) !== Array.isArray(b)) throw invalidParameter('compare', 'b', `${Array.isArray(a) ? 'an array of images, as a is' : 'one image, as a is'}`, b)
  const left = Array.isArray(a) ? a : [a]
  const right = Array.isArray(b) ? b : [b]
  if (left.length === 0) throw invalidParameter('compare', 'a', 'a non-empty array of images', a)
  if (left.length !== right.length) throw invalidParameter('compare', 'b', `an array of ${left.length} images, as a is`, b)
  const many = Array.isArray(a)
  // Index loops: forEach skips the holes of a sparse array, which would then reach the native call.
  for (let i = 0; i < left.length; i++) checkImage(left[i], many ? `a[${i}]` : 'a')
  for (let i = 0; i < right.length; i++) checkImage(right[i], many ? `b[${i}]` : 'b')
  left.forEach((img, i) => {
    const other = right[i]
    if (img.width !== other.width || img.height !== other.height) {
      const at = many ? `[${i}]` : ''
      throw new MarvelError('MARVEL_SHAPE_MISMATCH', `compare: a${at} is ${img.width}x${img.height} but b${at} is ${other.width}x${other.height}`)
    }
  })

  const groups = new Map<string, number[]>()
  left.forEach((img, i) => {
    const key = `${img.width}x${img.height}`
    groups.set(key, [...(groups.get(key) ?? []), i])
  })
  const out: ImageScores[] = new Array(left.length)
  for (const indices of groups.values()) {
    const { width, height } = left[indices[0]]
    const scores = await native().imageMetrics(
      stack(indices.map((i) => left[i])),
      stack(indices.map((i) => right[i])),
      indices.length,
      height,
      width,
    )
    indices.forEach((i, k) => {
      const ms = scores.msSsim[k]
      out[i] = { psnr: scores.psnr[k], ssim: scores.ssim[k], msSsim: Number.isNaN(ms) ? null : ms }
    })
  }
  return out
}
