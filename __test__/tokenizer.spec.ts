import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import sharp from 'sharp'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { MarvelError, Tokenizer, Tokens, createRandomModel, marvelFromTitok } from '../src/index.js'
import { hasParity, parityTitle, maxAbsDiff, parityDir, readSafetensors } from './helpers/fixtures.js'
import { tinyConfig, tinyModel } from './helpers/models.js'

const pattern = (w: number, h: number, seed = 0) => {
  const data = new Uint8Array(w * h * 3)
  for (let i = 0; i < data.length; i++) data[i] = (i * 31 + seed * 97 + ((i / 3 / w) | 0) * 7) % 256
  return { data, width: w, height: h }
}

/** Fixture tokens (B, 1, N[, D]) reordered depth-major, as `Tokens.data` holds them. */
function depthMajor(values: Float64Array, shape: number[]): number[] {
  const [b, , n, d = 1] = shape
  const out: number[] = []
  for (let s = 0; s < d; s++) for (let i = 0; i < b; i++) for (let k = 0; k < n; k++) out.push(values[(i * n + k) * d + s])
  return out
}

describe.skipIf(!hasParity)(parityTitle('parity with the reference through the API'), () => {
  for (const [name, depths] of [['titok_vq_legacy', 1], ['titok_vq_nonlegacy', 1], ['marvel_lfq', 4]] as const) {
    it(`${name}: encoding the fixture PNGs gives the fixture tokens and reconstructions`, async () => {
      const dir = join(parityDir, name)
      const tok = await Tokenizer.fromPretrained(dir)
      const expected = readSafetensors(join(dir, 'expected.safetensors'))
      const pngs = [0, 1, 2].map((i) => join(dir, `image_${i}.png`))
      const tokens = await tok.encode(pngs, { resize: 'none' })
      expect(tokens.shape).toEqual({ batch: 3, depth: depths, numTokens: 8 })
      expect(Array.from(tokens.data)).toEqual(depthMajor(expected.tokens.values, expected.tokens.shape))
      for (let d = 1; d <= depths; d++) {
        const key = depths === 1 ? 'recon' : `recon_depth${d}`
        const want = expected[key]
        const got = await tok.decodeFloat(tokens.slice(d))
        const err = maxAbsDiff(got.data, want.values)
        console.log(`${name} ${key}: max abs error ${err.toExponential(2)} (through the API)`)
        expect(err).toBeLessThanOrEqual(1e-4)
      }
      if (expected.recon_u8) {
        const images = await tok.decode(tokens)
        let off = 0
        images.forEach((img, i) => {
          const want = expected.recon_u8.values.subarray(i * img.data.length, (i + 1) * img.data.length)
          for (let k = 0; k < img.data.length; k++) {
            const diff = Math.abs(img.data[k] - want[k])
            expect(diff).toBeLessThanOrEqual(1)
            off += diff
          }
        })
        expect(off).toBeLessThanOrEqual(0.001 * 3 * 256 * 256 * 3)
      }
      tok.dispose()
    })
  }
})

describe.skipIf(!hasParity)(parityTitle('MARVEL from TiTok'), () => {
  it('converts the TiTok fixture into a 4-depth MARVEL model that loads and decodes at every depth', async () => {
    const out = mkdtempSync(join(tmpdir(), 'marvel-convert-'))
    await marvelFromTitok(join(parityDir, 'titok_vq_legacy'), out, { depth: 4 })
    const config = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'))
    expect(config.model.vq_model).toMatchObject({ quantize_mode: 'lfq', num_depths: 4 })
    const tok = await Tokenizer.fromPretrained(out)
    expect(tok.info).toMatchObject({ architecture: 'marvel', depth: 4, bitsPerToken: 12, numTokens: 8 })
    const titok = await Tokenizer.fromPretrained(join(parityDir, 'titok_vq_legacy'))
    // Same weights except the quantizer: one less parameter tensor (the VQ codebook).
    expect(titok.info.parameters - tok.info.parameters).toBe(4096 * 12)
    const tokens = await tok.encode(join(parityDir, 'titok_vq_legacy', 'image_0.png'), { resize: 'none' })
    expect(tokens.shape).toEqual({ batch: 1, depth: 4, numTokens: 8 })
    for (let d = 1; d <= 4; d++) expect((await tok.decode(tokens, { depth: d }))[0].data).toHaveLength(256 * 256 * 3)
    const err = await marvelFromTitok(out, join(out, 'again')).catch((e) => e)
    expect(err.code).toBe('MARVEL_CONFIG')
    tok.dispose()
    titok.dispose()
  })
})

describe('Tokenizer on small random-weight models made here', () => {
  let lfqDir: string
  let vqDir: string
  let lfq: Tokenizer
  let work: string

  beforeAll(async () => {
    lfqDir = await tinyModel({ quantizeMode: 'lfq', depths: 3, tokenSize: 6 })
    vqDir = await tinyModel({ quantizeMode: 'vq', tokenSize: 8 })
    lfq = await Tokenizer.fromPretrained(lfqDir)
    work = mkdtempSync(join(tmpdir(), 'marvel-tok-'))
  })
  afterAll(() => lfq.dispose())

  it('info describes the model', async () => {
    expect(lfq.info).toMatchObject({
      architecture: 'marvel',
      quantizer: 'lfq',
      imageSize: 256,
      numTokens: 4,
      depth: 3,
      codebookSize: 64,
      bitsPerToken: 6,
      bitsPerImage: 72,
      encoder: { width: 32, layers: 1 },
      twoStage: false,
    })
    expect(lfq.info.parameters).toBeGreaterThan(50_000)
    const vq = await Tokenizer.fromPretrained(vqDir)
    expect(vq.info).toMatchObject({ architecture: 'titok', quantizer: 'vq', depth: 1, codebookSize: 256, bitsPerToken: 8 })
    vq.dispose()
  })

  it('encodes every kind of input to the same tokens', async () => {
    const img = pattern(256, 256)
    const png = await sharp(img.data, { raw: { width: 256, height: 256, channels: 3 } }).png().toBuffer()
    const path = join(work, 'a.png')
    writeFileSync(path, png)
    const rgba = new Uint8Array(256 * 256 * 4)
    for (let p = 0; p < 256 * 256; p++) rgba.set([...img.data.subarray(3 * p, 3 * p + 3), 255], 4 * p)
    const inputs = [
      path,
      png,
      new Uint8Array(png),
      sharp(png),
      img,
      { ...img, channels: 3 as const },
      { data: rgba, width: 256, height: 256, channels: 4 as const },
    ]
    const tokens = await lfq.encode(inputs)
    expect(tokens.shape).toEqual({ batch: inputs.length, depth: 3, numTokens: 4 })
    const first = tokens.image(0)
    for (let i = 1; i < inputs.length; i++) expect(Array.from(tokens.image(i).data), `input ${i}`).toEqual(Array.from(first.data))
    expect(Math.max(...tokens.data)).toBeLessThan(64)
  })

  it('resizes and centre-crops other sizes, or refuses them with resize "none"', async () => {
    const jpeg = await sharp(pattern(400, 300).data, { raw: { width: 400, height: 300, channels: 3 } }).jpeg().toBuffer()
    const t = await lfq.encode(jpeg)
    expect(t.batch).toBe(1)
    const err = await lfq.encode(jpeg, { resize: 'none' }).catch((e) => e)
    expect(err.code).toBe('MARVEL_SHAPE_MISMATCH')
    const grey = await lfq.encode({ data: new Uint8Array(300 * 280).fill(90), width: 300, height: 280, channels: 1 })
    expect(grey.batch).toBe(1)
  })

  it('batches internally: chunked encode equals one big call', async () => {
    const imgs = Array.from({ length: 7 }, (_, i) => pattern(256, 256, i))
    const whole = await lfq.encode(imgs, { batchSize: 16 })
    const chunked = await lfq.encode(imgs, { batchSize: 3 })
    expect(Array.from(chunked.data)).toEqual(Array.from(whole.data))
    for (let i = 0; i < 7; i++) expect(Array.from(whole.image(i).data)).toEqual(Array.from((await lfq.encode(imgs[i])).data))
  })

  it('decodes at every depth; deeper is a different image; PNG and file helpers work', async () => {
    const tokens = await lfq.encode([pattern(256, 256, 1), pattern(256, 256, 2)])
    const byDepth = []
    for (let d = 1; d <= 3; d++) {
      const images = await lfq.decode(tokens, { depth: d })
      expect(images).toHaveLength(2)
      expect(images[0]).toMatchObject({ width: 256, height: 256 })
      expect(images[0].data).toHaveLength(256 * 256 * 3)
      byDepth.push(images[0].data)
      // Decoding a depth prefix slice is the same as asking for that depth.
      const sliced = await lfq.decode(tokens.slice(d))
      expect(Buffer.from(sliced[0].data).equals(Buffer.from(images[0].data))).toBe(true)
    }
    expect(Buffer.from(byDepth[0]).equals(Buffer.from(byDepth[2]))).toBe(false)
    const [img] = await lfq.decode(tokens.image(1))
    const png = await img.toPNG()
    expect((await sharp(png).metadata()).width).toBe(256)
    await img.toFile(join(work, 'out.png'))
    expect(readFileSync(join(work, 'out.png')).subarray(1, 4).toString()).toBe('PNG')
  })

  it('reconstruct = decode(encode)', async () => {
    const img = pattern(256, 256, 3)
    const [a] = await lfq.reconstruct(img, { depth: 2 })
    const [b] = await lfq.decode(await lfq.encode(img), { depth: 2 })
    expect(Buffer.from(a.data).equals(Buffer.from(b.data))).toBe(true)
  })

  it('many calls in flight give the same answers as one at a time', async () => {
    const imgs = Array.from({ length: 12 }, (_, i) => pattern(256, 256, i))
    const sequential = []
    for (const img of imgs) sequential.push(Array.from((await lfq.encode(img)).data))
    const parallel = await Promise.all(imgs.map((img) => lfq.encode(img)))
    expect(parallel.map((t) => Array.from(t.data))).toEqual(sequential)
  })

  it('errors name the problem and carry codes', async () => {
    const tokens = await lfq.encode(pattern(256, 256))
    const e1 = await lfq.decode(tokens, { depth: 4 }).catch((e) => e)
    expect(e1.code).toBe('MARVEL_INVALID_ARGUMENT')
    expect(e1.message).toMatch(/decode: expected depth to be an integer from 1 to 3 but received number 4/)
    const bad = new Tokens(new Uint32Array(tokens.data).fill(64, 5, 6), tokens.shape, 6)
    const e2 = await lfq.decode(bad).catch((e) => e)
    expect(e2.code).toBe('MARVEL_INVALID_ARGUMENT')
    expect(e2.message).toMatch(/token 64 at \(depth 1, image 0, position 1\) is outside 0\.\.64/)
    const wrongCount = new Tokens(new Uint32Array(3 * 5), { batch: 1, depth: 3, numTokens: 5 }, 6)
    expect((await lfq.decode(wrongCount).catch((e) => e)).code).toBe('MARVEL_SHAPE_MISMATCH')
    const corrupt = await lfq.encode(Buffer.from('definitely not an image')).catch((e) => e)
    expect(corrupt.code).toBe('MARVEL_IMAGE')
    expect((await lfq.encode([]).catch((e) => e)).code).toBe('MARVEL_INVALID_ARGUMENT')
    expect((await lfq.encode(42 as unknown as string).catch((e) => e)).code).toBe('MARVEL_INVALID_ARGUMENT')
    expect((await lfq.decode({} as Tokens).catch((e) => e)).code).toBe('MARVEL_INVALID_ARGUMENT')
    const raw = await lfq.encode({ data: new Uint8Array(10), width: 4, height: 4, channels: 4 }).catch((e) => e)
    expect(raw.code).toBe('MARVEL_SHAPE_MISMATCH')
  })

  it('loading errors: missing folder, bad config, truncated checkpoint', async () => {
    const missing = await Tokenizer.fromPretrained(join(work, 'nope')).catch((e) => e)
    expect(missing.code).toBe('MARVEL_IO')
    const badCfg = mkdtempSync(join(tmpdir(), 'marvel-badcfg-'))
    copyFileSync(join(lfqDir, 'model.safetensors'), join(badCfg, 'model.safetensors'))
    const cfg = tinyConfig() as { model: { vq_model: Record<string, unknown> } }
    cfg.model.vq_model.quantize_mode = 'fsq'
    writeFileSync(join(badCfg, 'config.json'), JSON.stringify(cfg))
    const e1 = await Tokenizer.fromPretrained(badCfg).catch((e) => e)
    expect(e1.code).toBe('MARVEL_CONFIG')
    expect(e1.message).toMatch(/fsq/)
    const trunc = mkdtempSync(join(tmpdir(), 'marvel-trunc-'))
    copyFileSync(join(lfqDir, 'config.json'), join(trunc, 'config.json'))
    const weights = readFileSync(join(lfqDir, 'model.safetensors'))
    writeFileSync(join(trunc, 'model.safetensors'), weights.subarray(0, weights.length - 1000))
    const e2 = await Tokenizer.fromPretrained(trunc).catch((e) => e)
    expect(e2.code).toBe('MARVEL_CHECKPOINT')
    expect(e2.message).toMatch(/model\.safetensors/)
    const e3 = await createRandomModel(join(work, 'x'), { model: { vq_model: { quantize_mode: 'fsq' } } }).catch((e) => e)
    expect(e3.code).toBe('MARVEL_CONFIG')
  })

  it('dispose frees the model; later calls fail clearly, calls in flight finish', async () => {
    const tok = await Tokenizer.fromPretrained(lfqDir)
    const inFlight = tok.encode(pattern(256, 256))
    tok.dispose()
    expect(tok.disposed).toBe(true)
    expect((await inFlight).batch).toBe(1)
    const err = await tok.encode(pattern(256, 256)).catch((e) => e)
    expect(err).toBeInstanceOf(MarvelError)
    expect(err.message).toMatch(/disposed/)
  })
})

describe('Tokens', () => {
  const make = () => new Tokens(Uint32Array.from({ length: 3 * 2 * 4 }, (_, i) => (i * 5) % 64), { batch: 2, depth: 3, numTokens: 4 }, 6)

  it('slice keeps a depth prefix without copying; image picks one image', () => {
    const t = make()
    const s = t.slice(2)
    expect(s.shape).toEqual({ batch: 2, depth: 2, numTokens: 4 })
    expect(s.data.buffer).toBe(t.data.buffer)
    expect(Array.from(s.data)).toEqual(Array.from(t.data.subarray(0, 16)))
    expect(Array.from(t.image(1).data)).toEqual([...t.data.subarray(4, 8), ...t.data.subarray(12, 16), ...t.data.subarray(20, 24)])
    expect(() => t.slice(4)).toThrow(/slice: expected depth to be an integer from 1 to 3 but received number 4/)
    expect(() => t.image(2)).toThrow(/image: expected index to be an integer from 0 to 1 but received number 2/)
  })

  it('toBytes / fromBytes round-trip compactly; corrupt bytes are rejected', () => {
    const t = make()
    const bytes = t.toBytes()
    expect(bytes.length).toBe(20 + Math.ceil((24 * 6) / 8))
    const back = Tokens.fromBytes(bytes)
    expect(back.shape).toEqual(t.shape)
    expect(back.bitsPerToken).toBe(6)
    expect(Array.from(back.data)).toEqual(Array.from(t.data))
    expect(() => Tokens.fromBytes(bytes.subarray(0, bytes.length - 2))).toThrow(/token bytes/)
    const wrongMagic = Buffer.from(bytes)
    wrongMagic[0] = 0
    expect(() => Tokens.fromBytes(wrongMagic)).toThrow(MarvelError)
  })

  it('32 tokens x 4 depths x 12 bits pack into 192 bytes plus the header', () => {
    const t = new Tokens(new Uint32Array(32 * 4).fill(4095), { batch: 1, depth: 4, numTokens: 32 }, 12)
    expect(t.toBytes().length).toBe(20 + 192)
    expect(t.bitsPerImage).toBe(32 * 4 * 12)
  })

  it('toJSON / fromJSON round-trip and validate', () => {
    const t = make()
    const json = JSON.parse(JSON.stringify(t))
    expect(json.ids).toHaveLength(3)
    expect(json.ids[0]).toHaveLength(2)
    expect(Array.from(Tokens.fromJSON(json).data)).toEqual(Array.from(t.data))
    json.ids[1][0][2] = 64
    expect(() => Tokens.fromJSON(json)).toThrow(/expected every id to be an integer that fits 6 bits but received number 64/)
    expect(() => Tokens.fromJSON({} as never)).toThrow(/expected json to be a marvel-tokens version 1 object/)
  })

  it('the constructor validates its shape', () => {
    expect(() => new Tokens(new Uint32Array(5), { batch: 1, depth: 1, numTokens: 4 }, 12)).toThrow(/needs 4 ids, got 5/)
    expect(() => new Tokens(new Uint32Array(4), { batch: 1, depth: 1, numTokens: 4 }, 40)).toThrow(/bitsPerToken/)
  })
})

describe('Tokens.concat', () => {
  it('joins batches depth-major and refuses mismatched parts', () => {
    const a = new Tokens(Uint32Array.from([1, 2, 10, 20]), { batch: 1, depth: 2, numTokens: 2 }, 6)
    const b = new Tokens(Uint32Array.from([3, 4, 5, 6, 30, 40, 50, 60]), { batch: 2, depth: 2, numTokens: 2 }, 6)
    const c = Tokens.concat([a, b])
    expect(c.shape).toEqual({ batch: 3, depth: 2, numTokens: 2 })
    expect(Array.from(c.data)).toEqual([1, 2, 3, 4, 5, 6, 10, 20, 30, 40, 50, 60])
    expect(Array.from(c.image(2).data)).toEqual([5, 6, 50, 60])
    expect(() => Tokens.concat([a, a.slice(1)])).toThrow(/same depth/)
    expect(() => Tokens.concat([])).toThrow(/expected parts to be a non-empty array of Tokens/)
  })
})
