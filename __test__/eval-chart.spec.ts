/** PNG charts drawn without a browser: sizes, and the drawn lines sit where the data says. */
import sharp from 'sharp'
import { describe, expect, it } from 'vitest'

import { MarvelError, parseMetricsLog, rateDistortionChart, renderChart, trainingChart, type ChartSpec, type EvalReport } from '../src/index.js'
import { PALETTE, layoutChart, niceTicks, toPixel, type PanelLayout } from '../src/chart/index.js'

async function decode(png: Buffer): Promise<{ width: number; height: number; at: (x: number, y: number) => number[] }> {
  const { data, info } = await sharp(png).raw().toBuffer({ resolveWithObject: true })
  return {
    width: info.width,
    height: info.height,
    at: (x, y) => Array.from(data.subarray((y * info.width + x) * info.channels, (y * info.width + x) * info.channels + 3)),
  }
}

/** Pixel (x, y) and its 8 neighbours hold `color` somewhere (a line 2 px wide may round either way). */
function near(img: Awaited<ReturnType<typeof decode>>, [x, y]: [number, number], color: readonly number[]): boolean {
  for (let dy = -1; dy <= 1; dy++) for (let dx = -1; dx <= 1; dx++) if (img.at(x + dx, y + dy).every((v, i) => v === color[i])) return true
  return false
}

/** The midpoint of segment a-b in pixels: on the line, away from the markers. */
function midpoint(l: PanelLayout, a: readonly [number, number], b: readonly [number, number]): [number, number] {
  const [ax, ay] = toPixel(l, a[0], a[1])
  const [bx, by] = toPixel(l, b[0], b[1])
  return [Math.round((ax + bx) / 2), Math.round((ay + by) / 2)]
}

describe('renderChart', () => {
  it('has the size asked for and draws each series through its points in its colour', async () => {
    const spec: ChartSpec = {
      width: 640,
      height: 300,
      panels: [
        {
          title: 'Test',
          xLabel: 'x',
          series: [
            { label: 'up', points: [[0, 0], [10, 50], [20, 100]] },
            { label: 'down', points: [[0, 100], [20, 0]], markers: false },
          ],
        },
      ],
    }
    const img = await decode(await renderChart(spec))
    expect([img.width, img.height]).toEqual([640, 300])
    const [l] = layoutChart(spec)
    for (const p of [[0, 0], [10, 50], [20, 100]] as const) expect(near(img, toPixel(l, p[0], p[1]), PALETTE[0]), `marker ${p}`).toBe(true)
    expect(near(img, midpoint(l, [0, 0], [10, 50]), PALETTE[0])).toBe(true)
    expect(near(img, midpoint(l, [0, 100], [20, 0]), PALETTE[1])).toBe(true)
    // Where no series passes (up at x = 5 is y = 25, down is 75; y = 90 is neither), the plot is background or grid.
    const [ex, ey] = toPixel(l, 5, 90)
    const empty = img.at(ex, ey)
    expect(empty.every((v) => v >= 200), `background at (${ex}, ${ey}): ${empty}`).toBe(true)
  })

  it('lays panels out in rows and skips non-finite points', async () => {
    const spec: ChartSpec = {
      width: 400,
      panels: [
        { title: 'A', xLabel: 'x', series: [{ label: 's', points: [[1, 1], [2, Infinity], [3, 3]] }] },
        { title: 'B', xLabel: 'x', series: [{ label: 's', points: [[1, 5], [2, 6]] }] },
      ],
    }
    const img = await decode(await renderChart(spec))
    expect([img.width, img.height]).toEqual([400, 640])
    const [a, b] = layoutChart(spec)
    expect(b.plot.top).toBeGreaterThan(a.plot.top + a.plot.height)
    expect(a.y.max).toBeLessThan(4)
    // The gap: the midpoint of (1, 1)-(3, 3) is not drawn, the points are.
    expect(near(img, toPixel(a, 1, 1), PALETTE[0]) && near(img, toPixel(a, 3, 3), PALETTE[0])).toBe(true)
    expect(near(img, midpoint(a, [1, 1], [3, 3]), PALETTE[0])).toBe(false)
    expect(near(img, midpoint(b, [1, 5], [2, 6]), PALETTE[0])).toBe(true)
  })

  it('chooses round ticks and refuses malformed specs with coded errors', async () => {
    expect(niceTicks(0, 1)).toEqual([0, 0.2, 0.4, 0.6000000000000001, 0.8, 1].map((v) => expect.closeTo(v, 12)))
    expect(niceTicks(13, 87, 4)).toEqual([20, 40, 60, 80])
    for (const bad of [{ panels: [] }, { panels: [{ title: 't', xLabel: 'x', series: [{ label: 's', points: [[1]] }] }] }, { panels: [{ title: 3, xLabel: 'x', series: [] }] }]) {
      await expect(renderChart(bad as never)).rejects.toBeInstanceOf(MarvelError)
    }
  })
})

describe('trainingChart from metrics.jsonl', () => {
  const lines = [
    '{"step": 10, "time": 1.0, "lr": 0.0001, "loss": 0.9, "components": {"l2": 0.9}, "gradNorm": 1.2, "imagesPerSecond": 3.1}',
    'not json at all',
    '{"step": 20, "time": 2.0, "lr": 0.0002, "loss": 0.5, "components": {}, "gradNorm": 1.0, "imagesPerSecond": 3.0}',
    '[1, 2, 3]',
    '{"time": 3.0, "loss": 0.1}',
    '{"step": 20, "time": 2.5, "eval": {"psnr": [18.5, 20.25]}}',
    '{"step": 30, "time": 3.0, "lr": 0.0003, "loss": 0.4, "components": {}, "gradNorm": 0.8, "imagesPerSecond": 3.2}',
    '{"step": 40, "time": 4.0, "eval": {"psnr": [19.0, 21.5]}}',
    '{"step": 41, "time": 4.1, "note": "no metric"}',
    '',
  ].join('\n')

  it('reads training and evaluation lines, skipping and counting the rest', () => {
    const c = parseMetricsLog(lines)
    expect(c.loss).toEqual([[10, 0.9], [20, 0.5], [30, 0.4]])
    expect(c.lr).toEqual([[10, 0.0001], [20, 0.0002], [30, 0.0003]])
    expect(c.psnr).toEqual([[[20, 18.5], [40, 19]], [[20, 20.25], [40, 21.5]]])
    expect(c.lines).toBe(5)
    expect(c.skipped).toBe(4)
  })

  it('draws loss, lr and PSNR per depth where the data says', async () => {
    const spec = trainingChart(parseMetricsLog(lines), { width: 600 })
    expect(spec.panels.map((p) => p.title)).toEqual(['Loss', 'Learning rate', 'PSNR (dB)'])
    const img = await decode(await renderChart(spec))
    expect([img.width, img.height]).toEqual([600, 960])
    const [loss, lr, psnr] = layoutChart(spec)
    expect(near(img, midpoint(loss, [10, 0.9], [20, 0.5]), PALETTE[0])).toBe(true)
    expect(near(img, midpoint(lr, [20, 0.0002], [30, 0.0003]), PALETTE[0])).toBe(true)
    expect(near(img, midpoint(psnr, [20, 18.5], [40, 19]), PALETTE[0])).toBe(true)
    expect(near(img, midpoint(psnr, [20, 20.25], [40, 21.5]), PALETTE[1])).toBe(true)
  })
})

describe('rateDistortionChart', () => {
  const report = (rfid: boolean): EvalReport => ({
    images: 2,
    imageSize: 256,
    numTokens: 32,
    bitsPerToken: 12,
    rfid: rfid ? { available: true, weights: 'w.pth' } : { available: false, reason: 'no weights' },
    depths: [1, 2, 3].map((depth) => ({
      depth,
      bitsPerImage: 384 * depth,
      bytesPerImage: 48 * depth,
      psnr: 18 + 2 * depth,
      ssim: 0.5,
      msSsim: 0.7,
      distinctCodes: 10,
      codebookUsage: 10 / 4096,
      entropyBits: 3,
      rfid: rfid ? 40 - 10 * depth : null,
      codecs: [
        { codec: 'webp' as const, bytesPerImage: 300 + 10 * depth, bitsPerImage: 8 * (300 + 10 * depth), quality: 1, downscale: 1, withinBudget: 0, psnr: 17 + depth, ssim: 0.4, msSsim: 0.6 },
        { codec: 'jpeg' as const, bytesPerImage: 600 + 10 * depth, bitsPerImage: 8 * (600 + 10 * depth), quality: 1, downscale: 1, withinBudget: 0, psnr: 15 + depth, ssim: 0.3, msSsim: 0.5 },
      ],
    })),
  })

  it('draws PSNR against bits for marvel and each codec, and rFID on a second panel when computed', async () => {
    const one = rateDistortionChart(report(false))
    expect(one.panels.length).toBe(1)
    const spec = rateDistortionChart(report(true))
    expect(spec.panels.map((p) => p.title)).toEqual(['PSNR (dB)', 'rFID'])
    const img = await decode(await renderChart(spec))
    expect([img.width, img.height]).toEqual([800, 640])
    const [rd, fid] = layoutChart(spec)
    expect(near(img, midpoint(rd, [384, 20], [768, 22]), PALETTE[0])).toBe(true)
    expect(near(img, midpoint(rd, [2480, 18], [2560, 19]), PALETTE[1])).toBe(true)
    expect(near(img, midpoint(rd, [4880, 16], [4960, 17]), PALETTE[2])).toBe(true)
    expect(near(img, midpoint(fid, [384, 30], [768, 20]), PALETTE[0])).toBe(true)
  })

  it('refuses what is not a report', () => {
    expect(() => rateDistortionChart({ depths: [] } as never)).toThrow(MarvelError)
    expect(() => rateDistortionChart(report(false), { width: 5 })).toThrow(/width/)
  })
})
