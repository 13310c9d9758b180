import { join } from 'node:path'

import { describe, expect, it } from 'vitest'

import { lfqLosses, lfqQuantize } from '../src/index.js'
import { hasParity, maxAbsDiff, parityDir, readSafetensors } from './helpers/fixtures.js'

/** The fixture's channels-first encoder output (B, bits, 1, N) as channels-last (B, N, bits). */
function channelsLast(values: Float64Array, [b, c, , n]: number[]): Float32Array {
  const out = new Float32Array(b * n * c)
  for (let i = 0; i < b; i++) for (let k = 0; k < c; k++) for (let j = 0; j < n; j++) out[(i * n + j) * c + k] = values[(i * c + k) * n + j]
  return out
}

describe.skipIf(!hasParity)('LFQ parity through the API (skipped: parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR)', () => {
  const expected = hasParity ? readSafetensors(join(parityDir, 'marvel_lfq', 'expected.safetensors')) : {}

  it('tokens of 4 depths and the codes at each depth equal the reference', async () => {
    const lat = expected.enc_latent
    const z = { data: channelsLast(lat.values, lat.shape), shape: [3, 8, 12] }
    const q = await lfqQuantize(z, { depths: 4 })
    expect(Array.from(q.tokens)).toEqual(Array.from(expected.tokens.values))
    for (let d = 1; d <= 4; d++) {
      const qd = await lfqQuantize(z, { depths: d })
      const want = expected[`z_q_depth${d}`]
      expect(maxAbsDiff(qd.codes.data, channelsLast(want.values, want.shape))).toBe(0)
    }
  })

  it('the 2-depth training losses equal the reference within 1e-5 relative', async () => {
    const lat = expected.enc_latent
    const losses = await lfqLosses({ data: channelsLast(lat.values, lat.shape), shape: [3, 8, 12] }, { depths: 2 })
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
  it('rejects bad shapes and depths with codes', async () => {
    const z = { data: new Float32Array(24), shape: [2, 3, 4] }
    expect((await lfqQuantize(z, { depths: 0 }).catch((e) => e)).code).toBe('MARVEL_INVALID_ARGUMENT')
    expect((await lfqQuantize({ data: new Float32Array(5), shape: [2, 3, 4] }, { depths: 1 }).catch((e) => e)).code).toBe('MARVEL_SHAPE_MISMATCH')
    expect((await lfqQuantize({ data: new Float32Array(24), shape: [24] }, { depths: 1 }).catch((e) => e)).code).toBe('MARVEL_INVALID_ARGUMENT')
    const ok = await lfqQuantize(z, { depths: 3 })
    expect(ok.tokens).toHaveLength(2 * 3 * 3)
    // z = 0: depth 0 sees r = 0 and sign(0) = -1 gives token 0 (cum = -1); the residuals after it, +1 then +1/2,
    // are positive, so every bit is set.
    expect(Array.from(ok.tokens.subarray(0, 3))).toEqual([0, 15, 15])
  })
})
