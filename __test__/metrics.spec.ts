import { describe, expect, it } from 'vitest'

import { MarvelError, compare, type RgbImage } from '../src/index.js'

function image(width: number, height: number, pixel: (x: number, y: number, c: number) => number): RgbImage {
  const data = new Uint8Array(width * height * 3)
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) for (let c = 0; c < 3; c++) data[(y * width + x) * 3 + c] = pixel(x, y, c)
  return { data, width, height }
}

/** A smooth structured image: gradients and rings, so SSIM has structure to lose. */
const scene = (w: number, h: number) =>
  image(w, h, (x, y, c) => (c === 0 ? (255 * x) / w : c === 1 ? 127 + 120 * Math.sin(Math.hypot(x - w / 2, y - h / 2) / 3) : (255 * y) / h))

/** Deterministic noise of amplitude ±a (xorshift32). */
function noisy(img: RgbImage, a: number, seed: number): RgbImage {
  let s = seed >>> 0 || 1
  const data = img.data.map((v) => {
    s ^= s << 13
    s >>>= 0
    s ^= s >>> 17
    s ^= s << 5
    s >>>= 0
    return Math.min(255, Math.max(0, v + (s % (2 * a + 1)) - a))
  })
  return { ...img, data }
}

const shift = (img: RgbImage, k: number): RgbImage => ({ ...img, data: img.data.map((v) => v + k) })

describe('compare (PSNR / SSIM)', () => {
  it('scores identical images as PSNR Infinity and SSIM 1', async () => {
    const a = scene(64, 48)
    const [s] = await compare(a, { ...a, data: a.data.slice() })
    expect(s.psnr).toBe(Infinity)
    expect(s.ssim).toBeCloseTo(1, 12)
  })

  it('gives 20 log10(255 / k) dB for a constant offset of k', async () => {
    const a = image(32, 32, (x, y, c) => (x * 5 + y * 3 + c * 40) % 200)
    const scores = await compare([a, a, a], [shift(a, 1), shift(a, 5), shift(a, 50)])
    expect(scores.map((s) => s.psnr)).toEqual([1, 5, 50].map((k) => expect.closeTo(20 * Math.log10(255 / k), 10)))
  })

  it('matches the hand-computed values for 11x11 constant images', async () => {
    // One valid window, zero variance: SSIM per channel = (2pq + C1) / (p² + q² + C1), C1 = (0.01 * 255)².
    const p = [100, 0, 255]
    const q = [150, 0, 200]
    const [s] = await compare(image(11, 11, (_x, _y, c) => p[c]), image(11, 11, (_x, _y, c) => q[c]))
    const c1 = (0.01 * 255) ** 2
    const ssim = p.reduce((sum, pc, c) => sum + (2 * pc * q[c] + c1) / (pc * pc + q[c] * q[c] + c1), 0) / 3
    expect(s.ssim).toBeCloseTo(ssim, 12)
    expect(s.ssim).toBeCloseTo(0.964764, 6)
    // MSE over all samples: (50² + 0 + 55²) / 3.
    expect(s.psnr).toBeCloseTo(10 * Math.log10((255 * 255 * 3) / (50 ** 2 + 55 ** 2)), 10)
  })

  it('is symmetric, below 1 for noise, and falls as noise grows', async () => {
    const clean = scene(48, 40)
    const dirty = [4, 16, 48, 128].map((a, i) => noisy(clean, a, i + 1))
    const forward = await compare(dirty.map(() => clean), dirty)
    const backward = await compare(dirty, dirty.map(() => clean))
    forward.forEach((s, i) => {
      expect(s.ssim).toBeCloseTo(backward[i].ssim, 14)
      expect(s.psnr).toBeCloseTo(backward[i].psnr, 12)
      expect(s.ssim).toBeLessThan(1)
      if (i > 0) {
        expect(s.ssim).toBeLessThan(forward[i - 1].ssim)
        expect(s.psnr).toBeLessThan(forward[i - 1].psnr)
      }
    })
  })

  it('scores pairs of different sizes in one call, in order, as one pair at a time', async () => {
    const a = [scene(20, 20), scene(30, 16), scene(20, 20)]
    const b = [noisy(a[0], 10, 1), noisy(a[1], 30, 2), noisy(a[2], 60, 3)]
    const all = await compare(a, b)
    for (let i = 0; i < 3; i++) expect(all[i]).toEqual((await compare(a[i], b[i]))[0])
  })

  it('validates arguments up front, naming the bad value', async () => {
    const a = scene(16, 16)
    const fail = async (p: Promise<unknown>, code: string, message: RegExp) => {
      const err = await p.then(() => undefined, (e) => e)
      expect(err).toBeInstanceOf(MarvelError)
      expect(err.code).toBe(code)
      expect(err.message).toMatch(message)
    }
    await fail(compare([a, a], [a]), 'MARVEL_INVALID_ARGUMENT', /compare: expected b to be an array of 2 images, as a is but received an array of length 1/)
    await fail(compare([], []), 'MARVEL_INVALID_ARGUMENT', /expected a to be a non-empty array of images/)
    await fail(compare(a, [a]), 'MARVEL_INVALID_ARGUMENT', /expected b to be one image, as a is but received an array/)
    await fail(compare([a, a], [a, scene(16, 17)]), 'MARVEL_SHAPE_MISMATCH', /a\[1\] is 16x16 but b\[1\] is 16x17/)
    await fail(compare(scene(10, 12), scene(10, 12)), 'MARVEL_INVALID_ARGUMENT', /expected a.width to be an integer from 11 to .* but received number 10/)
    await fail(compare(a, { ...a, data: a.data.subarray(1) }), 'MARVEL_SHAPE_MISMATCH', /b is 16x16 RGB and needs 768 bytes, got 767/)
    await fail(compare(a, { width: 16, height: 16 } as RgbImage), 'MARVEL_INVALID_ARGUMENT', /expected b to be an RGB image/)
  })
})
