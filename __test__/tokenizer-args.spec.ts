/**
 * Tokenizer edges: every public number validated (no silent coercion of 1.5 or 2^32 + 1), paths refused before
 * anything is read or written (empty, NUL bytes, a FIFO in a model folder, an output folder equal to the input),
 * and reconstruct() keeping the model through both its halves when dispose() comes in between.
 */
import { execFileSync, spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { MarvelError, Tokenizer, Tokens, createRandomModel, marvelFromTitok, setNumThreads, getNumThreads } from '../src/index.js'
import { tinyConfig, tinyModel } from './helpers/models.js'
import { failure } from './helpers/errors.js'

const image = (seed: number) => ({ data: new Uint8Array(256 * 256 * 3).map((_, i) => (i * 13 + seed * 71) % 256), width: 256, height: 256 })


let dir: string
let tok: Tokenizer
let work: string
beforeAll(async () => {
  dir = await tinyModel({ quantizeMode: 'lfq', depths: 3, tokenSize: 6 })
  tok = await Tokenizer.fromPretrained(dir)
  work = mkdtempSync(join(tmpdir(), 'marvel-args-'))
})
afterAll(() => tok.dispose())

describe('numbers', () => {
  it('decodeFloat validates depth as decode does (1.5 and 2^32 + 1 were read as 1)', async () => {
    const tokens = await tok.encode(image(1))
    for (const depth of [1.5, 2 ** 32 + 1, 0, -1, Number.NaN, 4, '2' as unknown as number]) {
      await failure(tok.decodeFloat(tokens, { depth }), 'MARVEL_INVALID_ARGUMENT', /decodeFloat: expected depth to be an integer from 1 to 3 but received/)
      await failure(tok.decode(tokens, { depth }), 'MARVEL_INVALID_ARGUMENT', /decode: expected depth to be an integer from 1 to 3 but received/)
    }
    await failure(tok.decodeFloat(tokens.slice(1), { depth: 2 }), 'MARVEL_INVALID_ARGUMENT', /expected depth to be at most the 1 depth\(s\) the tokens hold but received number 2/)
    const wrongCount = new Tokens(new Uint32Array(3 * 5), { batch: 1, depth: 3, numTokens: 5 }, 6)
    await failure(tok.decodeFloat(wrongCount), 'MARVEL_SHAPE_MISMATCH', /takes 4 tokens per image, got 5/)
    const out = await tok.decodeFloat(tokens, { depth: 2 })
    expect(out.shape).toEqual([1, 3, 256, 256])
    // Depth 2 is what the first two depths decode to, not the coerced depth 1.
    const two = await tok.decodeFloat(tokens.slice(2))
    expect(Array.from(out.data.subarray(0, 64))).toEqual(Array.from(two.data.subarray(0, 64)))
  })

  it('encode and reconstruct validate batchSize, resize and options', async () => {
    for (const batchSize of [0, 1.5, 2 ** 32 + 1, Number.NaN, '4' as unknown as number]) {
      await failure(tok.encode(image(1), { batchSize }), 'MARVEL_INVALID_ARGUMENT', /encode: expected batchSize to be an integer from 1 to 65536 but received/)
      await failure(tok.reconstruct(image(1), { batchSize }), 'MARVEL_INVALID_ARGUMENT', /reconstruct: expected batchSize/)
    }
    await failure(tok.encode(image(1), { resize: 'stretch' as 'none' }), 'MARVEL_INVALID_ARGUMENT', /expected resize to be 'center-crop' or 'none' but received "stretch"/)
    await failure(tok.reconstruct(image(1), { depth: 1.5 }), 'MARVEL_INVALID_ARGUMENT', /reconstruct: expected depth to be an integer from 1 to 3 but received number 1.5/)
    await failure(tok.encode(image(1), null as never), 'MARVEL_INVALID_ARGUMENT', /encode: expected options to be an object but received null/)
  })

  it('createRandomModel and marvelFromTitok validate seed and depth', async () => {
    for (const seed of [-1, 1.5, 2 ** 32, Number.NaN]) {
      await failure(createRandomModel(join(work, 'never'), tinyConfig(), seed), 'MARVEL_INVALID_ARGUMENT', /createRandomModel: expected seed to be an integer from 0 to 4294967295/)
    }
    for (const depth of [0, 1.5, 24, 2 ** 32 + 1]) {
      await failure(marvelFromTitok(dir, join(work, 'never'), { depth }), 'MARVEL_INVALID_ARGUMENT', /marvelFromTitok: expected depth to be an integer from 1 to 23/)
    }
    expect(existsSync(join(work, 'never'))).toBe(false)
  })

  it('Tokens.fromJSON refuses counts that would size an array wrongly with a coded error, not a RangeError', () => {
    const good = new Tokens(new Uint32Array(4), { batch: 1, depth: 1, numTokens: 4 }, 6).toJSON()
    for (const [key, value] of [['depth', -1], ['batch', 1.5], ['numTokens', 2 ** 40], ['bitsPerToken', 33]] as const) {
      const json = { ...good, [key]: value }
      let err: unknown
      try {
        Tokens.fromJSON(json)
      } catch (e) {
        err = e
      }
      expect(err).toBeInstanceOf(MarvelError)
      expect((err as MarvelError).message).toContain(`Tokens.fromJSON: expected ${key} to be an integer`)
    }
  })
})

describe('paths', () => {
  it("createRandomModel('') is refused instead of writing into the current directory", async () => {
    const before = readdirSync(process.cwd())
    await failure(createRandomModel('', tinyConfig(), 1), 'MARVEL_INVALID_ARGUMENT', /createRandomModel: expected dir to be a non-empty path but received ""/)
    await failure(createRandomModel(`${work}\0x`, tinyConfig(), 1), 'MARVEL_INVALID_ARGUMENT', /expected dir to be a path without NUL bytes/)
    expect(readdirSync(process.cwd())).toEqual(before)
  })

  it('marvelFromTitok refuses to write over its source, however the folder is named', async () => {
    const src = await tinyModel({ quantizeMode: 'vq', tokenSize: 8 })
    const weights = readFileSync(join(src, 'model.safetensors'))
    const link = join(work, 'link-to-src')
    symlinkSync(src, link)
    for (const out of [src, `${src}/`, join(src, '.'), join(src, '..', src.split('/').pop()!), link]) {
      await failure(marvelFromTitok(src, out), 'MARVEL_INVALID_ARGUMENT', /marvelFromTitok: expected outDir to be a folder other than titokDir/)
    }
    await failure(marvelFromTitok('', join(work, 'm')), 'MARVEL_INVALID_ARGUMENT', /expected titokDir to be a non-empty path/)
    await failure(marvelFromTitok(src, ''), 'MARVEL_INVALID_ARGUMENT', /expected outDir to be a non-empty path/)
    expect(readFileSync(join(src, 'model.safetensors')).equals(weights)).toBe(true)
    // A different folder still works.
    await marvelFromTitok(src, join(work, 'converted'), { depth: 2 })
    expect((await Tokenizer.fromPretrained(join(work, 'converted'))).info.depth).toBe(2)
  })

  it('fromPretrained refuses a NUL byte, and a model folder whose files are not regular files', async () => {
    await failure(Tokenizer.fromPretrained(`${dir}\0`), 'MARVEL_INVALID_ARGUMENT', /fromPretrained: expected source to be a path without NUL bytes/)
    const odd = join(work, 'odd-model')
    mkdirSync(odd)
    writeFileSync(join(odd, 'config.json'), readFileSync(join(dir, 'config.json')))
    mkdirSync(join(odd, 'model.safetensors'))
    await failure(Tokenizer.fromPretrained(odd), 'MARVEL_IO', /model\.safetensors: it is a directory, not a regular file/)
  })

  it.skipIf(process.platform === 'win32')('a FIFO as config.json is refused instead of blocking the loader (skipped on Windows: no mkfifo)', async () => {
    const fifoModel = join(work, 'fifo-model')
    mkdirSync(fifoModel)
    execFileSync('mkfifo', [join(fifoModel, 'config.json')])
    await failure(Tokenizer.fromPretrained(fifoModel), 'MARVEL_IO', /config\.json: it is a FIFO \(named pipe\), not a regular file/)
    await failure(marvelFromTitok(fifoModel, join(work, 'from-fifo')), 'MARVEL_IO', /it is a FIFO/)
  })
})

describe('outputs that are not regular files', () => {
  // In a child with a time limit: before the check, writing to a FIFO nobody reads blocked forever.
  it.skipIf(process.platform === 'win32')('writePng, image.toFile and the model writers refuse a FIFO instead of blocking (skipped on Windows: no mkfifo)', () => {
    const out = join(work, 'fifo-out')
    mkdirSync(out)
    execFileSync('mkfifo', [join(out, 'a.png')])
    mkdirSync(join(out, 'model'))
    execFileSync('mkfifo', [join(out, 'model', 'config.json')])
    const script = `
      const m = await import(${JSON.stringify(join(__dirname, '..', 'dist', 'index.js'))})
      const img = { data: new Uint8Array(4 * 4 * 3), width: 4, height: 4 }
      const tok = await m.Tokenizer.fromPretrained(${JSON.stringify(dir)})
      const [decoded] = await tok.decode(await tok.encode({ data: new Uint8Array(256 * 256 * 3), width: 256, height: 256 }))
      const calls = {
        writePng: () => m.writePng(img, ${JSON.stringify(join(out, 'a.png'))}),
        toFile: () => decoded.toFile(${JSON.stringify(join(out, 'a.png'))}),
        nul: () => m.writePng(img, 'x\\0.png'),
        createRandomModel: () => m.createRandomModel(${JSON.stringify(join(out, 'model'))}, ${JSON.stringify(tinyConfig())}, 1),
        marvelFromTitok: () => m.marvelFromTitok(${JSON.stringify(dir)}, ${JSON.stringify(join(out, 'model'))}),
      }
      for (const [name, call] of Object.entries(calls)) {
        const e = await call().then(() => undefined, (e) => e)
        console.log(JSON.stringify([name, e?.code, e?.message]))
      }
      tok.dispose()
    `
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30_000 })
    expect(r.signal, `timed out: ${r.stdout}`).toBeNull()
    expect(r.stderr).toBe('')
    const results = Object.fromEntries(r.stdout.trim().split('\n').map((line) => { const [name, code, message] = JSON.parse(line); return [name, { code, message }] }))
    expect(results.writePng).toEqual({ code: 'MARVEL_IO', message: `cannot write image ${join(out, 'a.png')}: it is a FIFO (named pipe), not a regular file` })
    expect(results.toFile).toEqual(results.writePng)
    expect(results.nul.code).toBe('MARVEL_INVALID_ARGUMENT')
    expect(results.nul.message).toMatch(/^writePng: expected path to be a path without NUL bytes/)
    for (const writer of ['createRandomModel', 'marvelFromTitok']) {
      expect(results[writer]).toEqual({ code: 'MARVEL_IO', message: `cannot write model file ${join(out, 'model', 'config.json')}: it is a FIFO (named pipe), not a regular file` })
    }
  })
})

describe('dispose', () => {
  it('reconstruct() started before dispose() finishes (the model is held through encode and decode)', async () => {
    const t = await Tokenizer.fromPretrained(dir)
    const inFlight = Promise.all([t.reconstruct([image(1), image(2)], { depth: 2 }), t.reconstruct(image(3))])
    t.dispose()
    const [two, one] = await inFlight
    expect(two).toHaveLength(2)
    expect(one).toHaveLength(1)
    expect(two[0].data).toHaveLength(256 * 256 * 3)
    await failure(t.reconstruct(image(1)), 'MARVEL_INVALID_ARGUMENT', /disposed/)
    // Same result as a live tokenizer.
    const [again] = await tok.reconstruct(image(3))
    expect(Buffer.from(one[0].data).equals(Buffer.from(again.data))).toBe(true)
  })
})

describe('decoding bound through encode()', () => {
  it('concurrent encode() calls decode at most getNumThreads() images at once', async () => {
    const { decodeSlots } = await import('../src/image.js')
    const threads = getNumThreads()
    setNumThreads(2)
    try {
      const sharp = (await import('sharp')).default
      const photo = await sharp({ create: { width: 1200, height: 900, channels: 3, background: { r: 200, g: 100, b: 30 } } }).png().toBuffer()
      decodeSlots.peak = 0
      const calls = await Promise.all(Array.from({ length: 8 }, () => tok.encode([photo, photo, photo], { batchSize: 3 })))
      expect(calls.every((t) => t.batch === 3)).toBe(true)
      expect(decodeSlots.peak).toBe(2)
    } finally {
      setNumThreads(threads)
    }
  })
})

describe('inspect', () => {
  it('gives the info a load gives, without reading a weight', async () => {
    expect(await Tokenizer.inspect(dir)).toEqual(tok.info)
    // Weights overwritten with NaN (0xff bytes) past the header: a load refuses them, inspect never reads them.
    const copy = mkdtempSync(join(tmpdir(), 'marvel-inspect-'))
    writeFileSync(join(copy, 'config.json'), readFileSync(join(dir, 'config.json')))
    const weights = readFileSync(join(dir, 'model.safetensors'))
    const dataStart = 8 + Number(weights.readBigUInt64LE(0))
    weights.fill(0xff, dataStart)
    writeFileSync(join(copy, 'model.safetensors'), weights)
    await failure(Tokenizer.fromPretrained(copy), 'MARVEL_CHECKPOINT', /NaN/)
    expect({ ...(await Tokenizer.inspect(copy)), source: dir }).toEqual(tok.info)
  })

  it('bits per image at each depth come from the core (bits_per_image_at), the last one being bitsPerImage', async () => {
    const info = await Tokenizer.inspect(dir)
    // 4 tokens of 6 bits per depth, 3 depths.
    expect(info.bitsPerImageByDepth).toEqual([24, 48, 72])
    expect(tok.info.bitsPerImageByDepth).toEqual(info.bitsPerImageByDepth)
    expect(info.bitsPerImageByDepth.at(-1)).toBe(info.bitsPerImage)
    // A token object's own figure (tokens x depth x bits) agrees with the core's at every depth it may hold.
    const tokens = await tok.encode(image(1))
    expect([1, 2, 3].map((d) => tokens.slice(d).bitsPerImage)).toEqual(info.bitsPerImageByDepth)
  })

  it('refuses what a load refuses before reading weights', async () => {
    await failure(Tokenizer.inspect(''), 'MARVEL_INVALID_ARGUMENT', /^inspect: expected source/)
    await failure(Tokenizer.inspect(join(work, 'nowhere')), 'MARVEL_IO', /^inspect: model folder .* not found/)
  })
})
