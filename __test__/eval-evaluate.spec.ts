/** evaluate(): per-depth distortion, rate, codebook usage, codecs at equal bytes, rFID availability; frechetDistance. */
import sharp from 'sharp'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { MarvelError, Tokenizer, compare, evaluate, frechetDistance, prepareImage, type RgbImage } from '../src/index.js'
import { DOWNSCALE_FACTORS, encodeAtBytes, encodeDownscaledWithin } from '../src/eval/codecs.js'
import { tinyModel } from './helpers/models.js'

/** A structured RGB image (gradients, rings, a seed-dependent phase) of w x h. */
function scene(w: number, h: number, seed: number): RgbImage {
  const data = new Uint8Array(w * h * 3)
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = (y * w + x) * 3
      data[i] = (255 * x) / w
      data[i + 1] = 127 + 120 * Math.sin(Math.hypot(x - w / 2, y - h / 2) / (4 + seed))
      data[i + 2] = (255 * y) / h
    }
  }
  return { data, width: w, height: h }
}

let tok: Tokenizer
const savedEnv = process.env.MARVEL_INCEPTION_WEIGHTS

beforeAll(async () => {
  delete process.env.MARVEL_INCEPTION_WEIGHTS
  tok = await Tokenizer.fromPretrained(await tinyModel({ quantizeMode: 'lfq', depths: 3 }, 5))
})

afterAll(() => {
  tok?.dispose()
  if (savedEnv !== undefined) process.env.MARVEL_INCEPTION_WEIGHTS = savedEnv
})

describe('evaluate', () => {
  it('reports every depth: the scores compare() gives the reconstructions, the bits, codebook usage and entropy', async () => {
    // Non-square inputs: the evaluation geometry (shorter side 256, centre crop) applies.
    const images = [scene(300, 256, 1), scene(256, 280, 2), scene(320, 320, 3)]
    const report = await evaluate(tok, images, { codecs: false })
    expect(report.images).toBe(3)
    expect(report.depths.map((d) => d.depth)).toEqual([1, 2, 3])
    expect(report.rfid).toEqual({ available: false, reason: expect.stringMatching(/--inception .*MARVEL_INCEPTION_WEIGHTS/) })

    const originals = await Promise.all(images.map((img) => prepareImage(img, { size: 256 })))
    const tokens = await tok.encode(originals, { resize: 'none' })
    for (const d of report.depths) {
      expect(d.bitsPerImage).toBe(tok.info.bitsPerImageByDepth[d.depth - 1])
      expect(d.bytesPerImage).toBe(d.bitsPerImage / 8)
      const scores = await compare(originals, await tok.decode(tokens, { depth: d.depth }))
      const mean = (k: 'psnr' | 'ssim') => scores.reduce((s, x) => s + x[k], 0) / scores.length
      expect(d.psnr).toBeCloseTo(mean('psnr'), 10)
      expect(d.ssim).toBeCloseTo(mean('ssim'), 10)
      expect(d.msSsim).toBeCloseTo(scores.reduce((s, x) => s + x.msSsim!, 0) / 3, 10)
      expect(d.rfid).toBeNull()
      expect(d.codecs).toEqual([])

      // Usage and entropy from the ids at this depth, counted here.
      const per = tokens.batch * tokens.numTokens
      const ids = Array.from(tokens.data.subarray((d.depth - 1) * per, d.depth * per))
      const counts = new Map<number, number>()
      for (const id of ids) counts.set(id, (counts.get(id) ?? 0) + 1)
      const entropy = -[...counts.values()].reduce((s, c) => s + (c / per) * Math.log2(c / per), 0)
      expect(d.distinctCodes).toBe(counts.size)
      expect(d.codebookUsage).toBe(counts.size / 2 ** tok.info.bitsPerToken)
      expect(d.entropyBits).toBeCloseTo(entropy, 12)
    }
  })

  it('takes one depth, a limit and lazy loaders', async () => {
    const png = await sharp(Buffer.from(scene(256, 256, 4).data), { raw: { width: 256, height: 256, channels: 3 } }).png().toBuffer()
    let loads = 0
    const lazy = () => {
      loads++
      return Promise.resolve(png)
    }
    const progress: number[] = []
    const report = await evaluate(tok, [lazy, lazy, lazy], { depth: 2, limit: 2, batchSize: 1, codecs: false, onProgress: (done) => progress.push(done) })
    expect(loads).toBe(2)
    expect(progress).toEqual([1, 2])
    expect(report.images).toBe(2)
    expect(report.depths.map((d) => d.depth)).toEqual([2])
  })

  it('puts WebP and JPEG beside each depth, at the quality closest to the tokens\' bytes', async () => {
    const report = await evaluate(tok, [scene(256, 256, 1), scene(256, 256, 2)], { depth: 3 })
    const [d] = report.depths
    expect(d.codecs.map((c) => c.codec)).toEqual(['webp', 'jpeg', 'webp-downscaled', 'jpeg-downscaled'])
    for (const c of d.codecs) {
      // The tokens' 9 bytes are below any WebP or JPEG file: the smallest quality is chosen, and its real size reported
      // (downscaled: the smallest file of all the copies), flagged as over the budget.
      expect(c.quality).toBe(1)
      expect(c.downscale).toBeGreaterThanOrEqual(c.codec.endsWith('-downscaled') ? 2 : 1)
      expect(c.withinBudget).toBe(0)
      expect(c.bytesPerImage).toBeGreaterThan(d.bytesPerImage)
      expect(c.bitsPerImage).toBe(8 * c.bytesPerImage)
      expect(c.psnr).toBeGreaterThan(10)
      expect(c.ssim).toBeGreaterThan(0)
    }
  })

  it('refuses bad arguments with coded errors, and a named Inception file that is missing', async () => {
    const img = scene(256, 256, 1)
    const cases: Array<[() => Promise<unknown>, RegExp]> = [
      [() => evaluate(tok, []), /images/],
      // eslint-disable-next-line no-sparse-arrays
      [() => evaluate(tok, [img, , img] as never), /images\[1\]/],
      [() => evaluate(tok, [img], { depth: 4 }), /depth/],
      [() => evaluate(tok, [img], { limit: 0 }), /limit/],
      [() => evaluate(tok, [img], { inception: 7 as never }), /inception/],
      [() => evaluate(tok, [img], { bogus: 1 } as never), /unknown option "bogus"/],
    ]
    for (const [call, message] of cases) {
      const e = await call().catch((x) => x)
      expect(e).toBeInstanceOf(MarvelError)
      expect((e as MarvelError).code).toBe('MARVEL_INVALID_ARGUMENT')
      expect((e as MarvelError).message).toMatch(message)
    }
    const missing = await evaluate(tok, [img], { inception: '/nonexistent/pt_inception.pth' }).catch((x) => x)
    expect(missing).toMatchObject({ code: 'MARVEL_IO', message: expect.stringContaining('/nonexistent/pt_inception.pth not found') })
  })
})

describe('encodeAtBytes', () => {
  it('picks the quality whose file size is closest to the budget', async () => {
    const img = scene(64, 64, 2)
    for (const codec of ['webp', 'jpeg'] as const) {
      const sizes: number[] = []
      for (let q = 1; q <= 100; q++) {
        const input = sharp(Buffer.from(img.data), { raw: { width: 64, height: 64, channels: 3 } })
        sizes.push((await (codec === 'webp' ? input.webp({ quality: q }) : input.jpeg({ quality: q })).toBuffer()).length)
      }
      const target = Math.round((sizes[20] + sizes[60]) / 2)
      const best = Math.min(...sizes.map((s) => Math.abs(s - target)))
      const coded = await encodeAtBytes(img, codec, target)
      expect(coded.bytes).toBe(sizes[coded.quality - 1])
      expect(Math.abs(coded.bytes - target)).toBe(best)
      expect([coded.image.width, coded.image.height, coded.image.data.length]).toEqual([64, 64, 64 * 64 * 3])
    }
  })
})

describe('encodeDownscaledWithin', () => {
  /** Every (factor, quality) of `img` through `codec` by brute force: file size and PSNR of the upscaled result. */
  async function everyOption(img: RgbImage, codec: 'webp' | 'jpeg') {
    const options: Array<{ factor: number; quality: number; bytes: number; psnr: number }> = []
    for (const factor of DOWNSCALE_FACTORS) {
      const side = img.width / factor
      const small = await sharp(Buffer.from(img.data), { raw: { width: img.width, height: img.height, channels: 3 } }).resize(side, side, { fit: 'fill' }).raw().toBuffer()
      for (let q = 1; q <= 100; q += q < 90 ? 3 : 1) {
        const input = sharp(small, { raw: { width: side, height: side, channels: 3 } })
        const file = await (codec === 'webp' ? input.webp({ quality: q }) : input.jpeg({ quality: q })).toBuffer()
        const back = await sharp(file).removeAlpha().resize(img.width, img.height, { fit: 'fill' }).raw().toBuffer()
        const [score] = await compare(img, { data: new Uint8Array(back), width: img.width, height: img.height })
        options.push({ factor, quality: q, bytes: file.length, psnr: score.psnr })
      }
    }
    return options
  }

  it('keeps the file within the budget, at a quality and factor that fit, with no fitting factor doing better', async () => {
    const img = scene(128, 128, 3)
    for (const codec of ['webp', 'jpeg'] as const) {
      const options = await everyOption(img, codec)
      const sizes = options.map((o) => o.bytes).sort((a, b) => a - b)
      const budget = sizes[Math.floor(sizes.length / 2)]
      const coded = await encodeDownscaledWithin(img, codec, budget)
      expect(coded).toMatchObject({ codec: `${codec}-downscaled`, withinBudget: true })
      expect(coded.bytes).toBeLessThanOrEqual(budget)
      expect([coded.image.width, coded.image.height]).toEqual([128, 128])
      const [chosen] = await compare(img, coded.image)
      // Per factor, the best quality that fits is found by bisection, which may miss a dip in the sizes: compare with
      // each factor's fitting options below the first one that goes over (the ones bisection cannot miss).
      for (const factor of DOWNSCALE_FACTORS) {
        const ladder = options.filter((o) => o.factor === factor)
        const over = ladder.findIndex((o) => o.bytes > budget)
        const surelyFound = (over === -1 ? ladder : ladder.slice(0, over)).at(-1)
        if (surelyFound) expect(surelyFound.psnr, `factor ${factor}`).toBeLessThanOrEqual(chosen.psnr + 0.05)
      }
    }
  })

  it('below any file the codec writes: the smallest file of all, flagged as over the budget', async () => {
    const img = scene(128, 128, 4)
    for (const codec of ['webp', 'jpeg'] as const) {
      const coded = await encodeDownscaledWithin(img, codec, 1)
      expect(coded).toMatchObject({ codec: `${codec}-downscaled`, quality: 1, withinBudget: false })
      const smallest = Math.min(...(await everyOption(img, codec)).filter((o) => o.quality === 1).map((o) => o.bytes))
      expect(coded.bytes).toBe(smallest)
    }
  })
})

describe('compare: MS-SSIM', () => {
  it('scores sides of 161 and more, null below; 1 for identical images, lower for a noisy copy', async () => {
    const a = scene(161, 170, 1)
    const noisy = { ...a, data: a.data.map((v, i) => Math.max(0, Math.min(255, v + ((i * 7919) % 41) - 20))) }
    const [same, diff] = await compare([a, a], [{ ...a, data: a.data.slice() }, noisy])
    expect(same.msSsim).toBeCloseTo(1, 12)
    expect(diff.msSsim!).toBeLessThan(1)
    expect(diff.msSsim!).toBeGreaterThan(0.5)
    const small = scene(160, 200, 1)
    const [s] = await compare(small, small)
    expect(s.msSsim).toBeNull()
    expect(s.ssim).toBeCloseTo(1, 12)
  })
})

describe('frechetDistance', () => {
  /** n vectors of dim values from a fixed LCG. */
  function features(n: number, dim: number, seed: number): Float32Array {
    let s = seed
    return Float32Array.from({ length: n * dim }, () => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 4 - 2)
  }

  it('is 0 for a set against itself and |Δμ|² for a shifted copy (same covariance)', async () => {
    const a = features(40, 8, 1)
    expect(Math.abs(await frechetDistance(a, a, 8))).toBeLessThan(1e-6)
    // Shift every coordinate by 0.5: the covariances are equal, so the distance is 8 · 0.25 = 2.
    const b = a.map((v) => v + 0.5)
    expect(await frechetDistance(a, b, 8)).toBeCloseTo(2, 4)
  })

  it('refuses ragged or too small sets', async () => {
    await expect(frechetDistance(new Float32Array(10), new Float32Array(8), 4)).rejects.toMatchObject({ code: 'MARVEL_SHAPE_MISMATCH' })
    await expect(frechetDistance(new Float32Array(4), new Float32Array(8), 4)).rejects.toMatchObject({ message: expect.stringContaining('at least 2 images') })
  })
})
