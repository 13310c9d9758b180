import { join } from 'node:path'

import { describe, expect, it } from 'vitest'

import { MaskgitVqgan } from '../src/index.js'
import { hasParity, maxAbsDiff, parityDir, readSafetensors } from './helpers/fixtures.js'

describe.skipIf(!hasParity)('MaskGIT-VQGAN through the API (skipped: parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR)', () => {
  const dir = join(parityDir, 'maskgit_vqgan')

  it('encodes the fixture PNGs to the reference codes and decodes them to the reference images', async () => {
    const vq = await MaskgitVqgan.fromPretrained(dir)
    expect(vq.grid).toBe(16)
    const expected = readSafetensors(join(dir, 'expected.safetensors'))
    const codes = await vq.encode([0, 1, 2].map((i) => join(dir, `image_${i}.png`)), { resize: 'none' })
    expect(codes).toHaveLength(3 * 256)
    expect(Array.from(codes)).toEqual(Array.from(expected.codes.values))
    const recon = await vq.decodeFloat(codes, 3)
    expect(recon.shape).toEqual([3, 3, 256, 256])
    const err = maxAbsDiff(recon.data, expected.recon.values)
    console.log(`maskgit_vqgan recon: max abs error ${err.toExponential(2)} (through the API)`)
    expect(err).toBeLessThanOrEqual(1e-4)
    const images = await vq.decode(codes.subarray(0, 256), 1)
    expect(images[0]).toMatchObject({ width: 256, height: 256 })
    vq.dispose()
  })

  it('bad codes and a missing checkpoint are clear errors', async () => {
    const vq = await MaskgitVqgan.fromPretrained(dir)
    const tooMany = new Uint32Array(256).fill(1024)
    expect((await vq.decode(tooMany, 1).catch((e) => e)).message).toMatch(/1024/)
    expect((await vq.decode(new Uint32Array(100), 1).catch((e) => e)).code).toBe('MARVEL_SHAPE_MISMATCH')
    vq.dispose()
    expect(() => vq.grid).toThrow(/disposed/)
    expect((await MaskgitVqgan.fromPretrained(join(dir, 'nope')).catch((e) => e)).code).toBe('MARVEL_IO')
  })
})
