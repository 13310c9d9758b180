import { join } from 'node:path'

import { describe, expect, it } from 'vitest'

import { Tokens, lfqLosses, lfqQuantize } from '../src/index.js'
import { hasParity, parityTitle, maxAbsDiff, parityDir, readSafetensors } from './helpers/fixtures.js'

/** The fixture's channels-first encoder output (B, bits, 1, N) as channels-last (B, N, bits). */
function channelsLast(values: Float64Array, [b, c, , n]: number[]): Float32Array {
  const out = new Float32Array(b * n * c)
  for (let i = 0; i < b; i++) for (let k = 0; k < c; k++) for (let j = 0; j < n; j++) out[(i * n + j) * c + k] = values[(i * c + k) * n + j]
  return out
}

describe.skipIf(!hasParity)(parityTitle('LFQ parity through the API'), () => {
  const expected = hasParity ? readSafetensors(join(parityDir, 'marvel_lfq', 'expected.safetensors')) : {}

  it('tokens of 4 depths and the codes at each depth equal the reference', async () => {
    const lat = expected.enc_latent
    const z = { data: channelsLast(lat.values, lat.shape), shape: [3, 8, 12] }
    const q = await lfqQuantize(z, { depth: 4 })
    expect(q.tokens).toBeInstanceOf(Tokens)
    expect(q.tokens.shape).toEqual({ batch: 3, depth: 4, numTokens: 8 })
    expect(q.tokens.bitsPerToken).toBe(12)
    // The reference stores (B, 1, N, D), depth fastest; Tokens are depth-major.
    const want = expected.tokens.values
    const depthMajor = Array.from({ length: 4 * 3 * 8 }, (_, i) => {
      const [d, b, n] = [Math.floor(i / 24), Math.floor(i / 8) % 3, i % 8]
      return want[(b * 8 + n) * 4 + d]
    })
    expect(Array.from(q.tokens.data)).toEqual(depthMajor)
    for (let d = 1; d <= 4; d++) {
      const qd = await lfqQuantize(z, { depth: d })
      expect(Array.from(qd.tokens.data)).toEqual(Array.from(q.tokens.slice(d).data))
      const want = expected[`z_q_depth${d}`]
      expect(maxAbsDiff(qd.codes.data, channelsLast(want.values, want.shape))).toBe(0)
    }
  })

  it('the 2-depth training losses equal the reference within 1e-5 relative', async () => {
    const lat = expected.enc_latent
    const losses = await lfqLosses({ data: channelsLast(lat.values, lat.shape), shape: [3, 8, 12] }, { depth: 2 })
    const pairs: Array<[keyof typeof losses, string]> = [
      ['commitment', 'lfq2_commitment_loss'],
      ['entropy', 'lfq2_entropy_loss'],
      ['perSampleEntropy', 'lfq2_per_sample_entropy'],
      ['avgEntropy', 'lfq2_avg_entropy'],
      ['total', 'lfq2_quantizer_loss'],
    ]
    for (const [ours, theirs] of pairs) {
      const want = expected[theirs].values[0]
      const rel = Math.abs(losses[ours] - want) / Math.abs(want)
      console.log(`${theirs}: ${losses[ours]} vs ${want} (relative error ${rel.toExponential(2)})`)
      expect(rel).toBeLessThanOrEqual(1e-5)
    }
  })
})

describe('LFQ argument checks', () => {
  it('rejects bad shapes and depths with codes, naming the parameter', async () => {
    const z = { data: new Float32Array(24), shape: [2, 3, 4] }
    const err = (p: Promise<unknown>) => p.then(() => undefined, (e: Error & { code: string }) => e)
    const zero = await err(lfqQuantize(z, { depth: 0 }))
    expect(zero?.code).toBe('MARVEL_INVALID_ARGUMENT')
    expect(zero?.message).toBe('lfqQuantize: expected options.depth to be an integer from 1 to 23 but received number 0')
    expect((await err(lfqLosses(z, { depth: 1.5 })))?.message).toMatch(/^lfqLosses: expected options.depth/)
    // A misspelt option is named, not ignored.
    expect((await err(lfqQuantize(z, { depths: 2 } as never)))?.message).toMatch(/^lfqQuantize: unknown option "depths" \(did you mean depth\?\); accepted: depth, /)
    expect((await err(lfqQuantize(z, {} as never)))?.message).toMatch(/options.depth .* received undefined/)
    expect((await err(lfqQuantize({ data: new Float32Array(5), shape: [2, 3, 4] }, { depth: 1 })))?.code).toBe('MARVEL_SHAPE_MISMATCH')
    expect((await err(lfqQuantize({ data: new Float32Array(24), shape: [24] }, { depth: 1 })))?.message).toMatch(/expected z.shape to be \[batch, tokens, bits\]/)
    expect((await err(lfqQuantize({ data: new Float32Array(0), shape: [0, 3, 4] }, { depth: 1 })))?.code).toBe('MARVEL_INVALID_ARGUMENT')
    expect((await err(lfqQuantize(z, { depth: 1, entropyGroups: 5 })))?.message).toMatch(/options.entropyGroups to be an integer from 1 to 4/)
    expect((await err(lfqLosses(z, { depth: 1, entropyLossTemperature: 0 })))?.message).toMatch(/entropyLossTemperature to be a positive number/)
    const ok = await lfqQuantize(z, { depth: 3 })
    expect(ok.tokens.shape).toEqual({ batch: 2, depth: 3, numTokens: 3 })
    // z = 0: depth 0 sees r = 0 and sign(0) = -1 gives token 0 (cum = -1); the residuals after it, +1 then +1/2,
    // are positive, so every bit is set. Depth-major: the 6 depth-0 tokens first.
    expect(Array.from(ok.tokens.data)).toEqual([...Array(6).fill(0), ...Array(12).fill(15)])
    expect(ok.codes.shape).toEqual([2, 3, 4])
  })
})
