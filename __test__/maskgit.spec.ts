import { execFileSync } from 'node:child_process'
import { mkdirSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { describe, expect, it } from 'vitest'

import { MarvelError, MaskgitVqgan } from '../src/index.js'
import { hasParity, parityTitle, maxAbsDiff, parityDir, readSafetensors } from './helpers/fixtures.js'

describe('MaskgitVqgan argument checks', () => {
  it('a path that is not a string names the parameter', async () => {
    const err = await MaskgitVqgan.fromPretrained(42 as never).catch((e) => e)
    expect(err.code).toBe('MARVEL_INVALID_ARGUMENT')
    expect(err.message).toBe('fromPretrained: expected path to be a weights file or a folder but received number 42')
  })

  it('a NUL byte is an argument error, a missing path is "file not found"', async () => {
    const nul = await MaskgitVqgan.fromPretrained('weights\0.bin').catch((e) => e)
    expect(nul).toBeInstanceOf(MarvelError)
    expect(nul.code).toBe('MARVEL_INVALID_ARGUMENT')
    expect(nul.message).toBe('fromPretrained: expected path to be a path without NUL bytes but received "weights\\u0000.bin"')
    const missing = await MaskgitVqgan.fromPretrained(join(tmpdir(), 'marvel-no-such-weights.bin')).catch((e) => e)
    expect(missing.code).toBe('MARVEL_IO')
    expect(missing.message).toMatch(/marvel-no-such-weights\.bin: file not found/)
  })

  it.skipIf(process.platform === 'win32')('a FIFO as the weights file, or as a folder\'s config.json, is named as a FIFO (skipped on Windows: no mkfifo)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'marvel-vq-fifo-'))
    execFileSync('mkfifo', [join(dir, 'weights.bin')])
    const file = await MaskgitVqgan.fromPretrained(join(dir, 'weights.bin')).catch((e) => e)
    expect(file.code).toBe('MARVEL_IO')
    expect(file.message).toMatch(/weights\.bin: it is a FIFO \(named pipe\), not a regular file/)
    const folder = join(dir, 'model')
    mkdirSync(folder)
    execFileSync('mkfifo', [join(folder, 'config.json')])
    const config = await MaskgitVqgan.fromPretrained(folder).catch((e) => e)
    expect(config.code).toBe('MARVEL_IO')
    expect(config.message).toMatch(/config\.json: it is a FIFO/)
  })
})

describe.skipIf(!hasParity)(parityTitle('MaskGIT-VQGAN through the API'), () => {
  const dir = join(parityDir, 'maskgit_vqgan')
  const files = [0, 1, 2].map((i) => join(dir, `image_${i}.png`))

  it('encodes the fixture PNGs to the reference codes and decodes them to the reference images', async () => {
    const vq = await MaskgitVqgan.fromPretrained(dir)
    expect(vq.info).toEqual({ imageSize: 256, grid: 16, codebookSize: 1024, source: dir })
    const expected = readSafetensors(join(dir, 'expected.safetensors'))
    const codes = await vq.encode(files, { resize: 'none' })
    expect(codes).toHaveLength(3 * 256)
    expect(Array.from(codes)).toEqual(Array.from(expected.codes.values))
    // Smaller native batches give the same codes.
    expect(Array.from(await vq.encode(files, { resize: 'none', batchSize: 2 }))).toEqual(Array.from(codes))
    const recon = await vq.decodeFloat(codes)
    expect(recon.shape).toEqual([3, 3, 256, 256])
    const err = maxAbsDiff(recon.data, expected.recon.values)
    console.log(`maskgit_vqgan recon: max abs error ${err.toExponential(2)} (through the API)`)
    expect(err).toBeLessThanOrEqual(1e-4)
    const images = await vq.decode(codes.subarray(0, 256))
    expect(images).toHaveLength(1)
    expect(images[0]).toMatchObject({ width: 256, height: 256 })
    // Decoded images are the Tokenizer's: they save themselves.
    const png = await images[0].toPNG()
    expect(png.subarray(1, 4).toString()).toBe('PNG')
    vq.dispose()
  })

  it('bad codes, bad options and a missing checkpoint are clear errors', async () => {
    const vq = await MaskgitVqgan.fromPretrained(dir)
    const tooMany = new Uint32Array(256).fill(1024)
    expect((await vq.decode(tooMany).catch((e) => e)).message).toMatch(/1024/)
    const partial = await vq.decode(new Uint32Array(100)).catch((e) => e)
    expect(partial.code).toBe('MARVEL_SHAPE_MISMATCH')
    expect(partial.message).toBe('decode: codes hold 100 values, not whole 16x16 grids (256 per image)')
    expect((await vq.decodeFloat([1, 2] as never).catch((e) => e)).message).toMatch(/expected codes to be a Uint32Array but received an array/)
    expect((await vq.encode(files[0], { batchSize: 0 }).catch((e) => e)).message).toBe('encode: expected batchSize to be an integer from 1 to 65536 but received number 0')
    expect((await vq.encode([]).catch((e) => e)).message).toBe('encode: expected images to be an image or a non-empty array of images but received an array of length 0')
    // Named as Tokenizer.encode names it.
    expect((await vq.encode(files[0], { resize: 'stretch' as never }).catch((e) => e)).message).toBe("encode: expected resize to be 'center-crop' or 'none' but received \"stretch\"")
    expect((await MaskgitVqgan.fromPretrained(join(dir, 'nope')).catch((e) => e)).code).toBe('MARVEL_IO')
    vq.dispose()
  })

  it('dispose waits for calls in flight, then later calls throw', async () => {
    const vq = await MaskgitVqgan.fromPretrained(dir)
    const codes = new Uint32Array(2 * 256).fill(7)
    // Queued one after the other; dispose() comes before either has run.
    const first = vq.decode(codes)
    const second = vq.decodeFloat(codes)
    vq.dispose()
    expect(vq.disposed).toBe(true)
    expect(await first).toHaveLength(2)
    expect((await second).shape).toEqual([2, 3, 256, 256])
    expect((await vq.decode(codes).catch((e) => e)).message).toMatch(/disposed/)
    expect(vq.info.grid).toBe(16)
  })
})
