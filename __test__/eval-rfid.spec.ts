/**
 * rFID through evaluate() with an Inception weights file: the pytorch-fid layout (the key list of the committed
 * fixture) filled with zeros, written here. Zero convolutions give every image the same features, so every rFID
 * is exactly 0 — what this checks is the path: the strict load, the features of originals and reconstructions,
 * one distance per depth, and the rFID panel of the chart. The forward pass itself is checked against pytorch-fid
 * in Rust (model/inception/tests.rs).
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

import { describe, expect, it } from 'vitest'

import { Tokenizer, evaluate, rateDistortionChart } from '../src/index.js'
import { tinyModel } from './helpers/models.js'

const root = fileURLToPath(new URL('..', import.meta.url))

/** A safetensors file of zeros with pytorch-fid's keys and shapes (num_batches_tracked as int64). */
function zeroInception(path: string): void {
  const fixture = JSON.parse(readFileSync(join(root, 'crates/marvel-core/tests/fixtures/inception_reference.json'), 'utf8'))
  const header: Record<string, unknown> = {}
  let offset = 0
  for (const [name, shape] of Object.entries(fixture.layout as Record<string, number[]>)) {
    const int = name.endsWith('num_batches_tracked')
    const bytes = shape.reduce((a, b) => a * b, 1) * (int ? 8 : 4)
    header[name] = { dtype: int ? 'I64' : 'F32', shape, data_offsets: [offset, offset + bytes] }
    offset += bytes
  }
  let json = Buffer.from(JSON.stringify(header))
  json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)])
  const size = Buffer.alloc(8)
  size.writeBigUInt64LE(BigInt(json.length))
  writeFileSync(path, Buffer.concat([size, json, Buffer.alloc(offset)]))
}

describe('evaluate with Inception weights', () => {
  it('reports an rFID per depth and the chart gains its rFID panel', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'marvel-rfid-'))
    const weights = join(dir, 'inception.safetensors')
    zeroInception(weights)
    const tok = await Tokenizer.fromPretrained(await tinyModel({ quantizeMode: 'lfq', depths: 2, imageSize: 64 }, 2))
    try {
      const img = (seed: number) => ({ data: new Uint8Array(64 * 64 * 3).map((_, i) => (i * (seed + 3)) % 256), width: 64, height: 64 })
      const report = await evaluate(tok, [img(1), img(2)], { inception: weights, codecs: false })
      expect(report.rfid).toEqual({ available: true, weights })
      expect(report.depths.map((d) => d.rfid)).toEqual([0, 0])
      expect(rateDistortionChart(report).panels.map((p) => p.title)).toEqual(['PSNR (dB)', 'rFID'])
      // One image: the covariance needs two.
      const one = await evaluate(tok, [img(1)], { inception: weights, codecs: false })
      expect(one.rfid).toEqual({ available: false, reason: expect.stringContaining('at least 2 images') })
      expect(one.depths[0].rfid).toBeNull()
      // A .pth that is not a zip checkpoint (PyTorch before 1.6) is refused with the way to re-save it.
      const legacy = join(dir, 'legacy.pth')
      writeFileSync(legacy, Buffer.from('\x80\x02legacy pickle'))
      const e = await evaluate(tok, [img(1), img(2)], { inception: legacy }).catch((x) => x)
      expect(e).toMatchObject({ code: 'MARVEL_CHECKPOINT', message: expect.stringContaining('torch.save(torch.load(') })
    } finally {
      tok.dispose()
    }
  }, 120_000)
})
