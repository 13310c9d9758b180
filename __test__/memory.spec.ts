/** Memory stays flat over many calls: buffers crossing the boundary are released, nothing accumulates per call. */
import { describe, expect, it } from 'vitest'

import { Tokenizer } from '../src/index.js'
import { tinyModel } from './helpers/models.js'

const CALLS = 10_000

describe('memory over many calls', () => {
  it(`RSS growth stays bounded over ${CALLS} encode + decode calls on a tiny model`, async () => {
    // 32x32 inputs (2x2 patches) keep each call around a millisecond.
    const tok = await Tokenizer.fromPretrained(await tinyModel({ imageSize: 32, depths: 2 }))
    const img = { data: new Uint8Array(32 * 32 * 3).map((_, i) => (i * 7) % 256), width: 32, height: 32 }
    const round = async () => {
      const t = await tok.encode(img)
      await tok.decode(t)
    }
    for (let i = 0; i < 500; i++) await round() // warm up allocators and caches
    global.gc?.()
    const start = process.memoryUsage().rss
    const samples: number[] = []
    for (let i = 0; i < CALLS; i++) {
      await round()
      if (i % 1000 === 999) samples.push(process.memoryUsage().rss)
    }
    global.gc?.()
    const growthMb = (process.memoryUsage().rss - start) / 2 ** 20
    console.log(`RSS growth over ${CALLS} encode+decode calls: ${growthMb.toFixed(1)} MiB; samples (MiB): ${samples.map((s) => (s / 2 ** 20).toFixed(0)).join(' ')}`)
    // Each call moves ~3 KiB in and out; a leak of one buffer per call would add ~60 MiB here.
    expect(growthMb).toBeLessThan(40)
    tok.dispose()
  })
})
