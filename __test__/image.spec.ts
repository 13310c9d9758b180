import { execFileSync } from 'node:child_process'
import { closeSync, constants, mkdtempSync, openSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import sharp, { type CreateRaw } from 'sharp'
import { afterEach, beforeAll, describe, expect, it } from 'vitest'

import { decodeSlots } from '../src/image.js'
import { MarvelError, encodePng, getNumThreads, prepareImage, readImage, setNumThreads, writePng, type RgbImage } from '../src/index.js'

const W = 24
const H = 16

/** A deterministic colour gradient: distinct values per channel so channel order mistakes show. */
function gradient(): RgbImage {
  const data = new Uint8Array(W * H * 3)
  for (let y = 0; y < H; y++)
    for (let x = 0; x < W; x++) {
      const i = (y * W + x) * 3
      data[i] = x * 10
      data[i + 1] = y * 15
      data[i + 2] = 255 - x * 5
    }
  return { data, width: W, height: H }
}

const raw = (img: RgbImage, channels: 3 | 4 = 3) => sharp(img.data, { raw: { width: img.width, height: img.height, channels } })

let dir: string
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'marvel-image-'))
})

describe('readImage', () => {
  it('decodes lossless formats exactly (PNG, TIFF, WebP lossless) from a path and a buffer', async () => {
    const img = gradient()
    const files: Record<string, Buffer> = {
      png: await raw(img).png().toBuffer(),
      tiff: await raw(img).tiff({ compression: 'lzw' }).toBuffer(),
      webp: await raw(img).webp({ lossless: true }).toBuffer(),
    }
    for (const [ext, buf] of Object.entries(files)) {
      const path = join(dir, `g.${ext}`)
      writeFileSync(path, buf)
      for (const src of [path, buf]) {
        const got = await readImage(src)
        expect([got.width, got.height], ext).toEqual([W, H])
        expect(Buffer.from(got.data).equals(Buffer.from(img.data)), ext).toBe(true)
      }
    }
  })

  it('decodes JPEG close to the original', async () => {
    const img = gradient()
    const got = await readImage(await raw(img).jpeg({ quality: 95 }).toBuffer())
    expect(got.data.length).toBe(W * H * 3)
    let maxErr = 0
    for (let i = 0; i < img.data.length; i++) maxErr = Math.max(maxErr, Math.abs(got.data[i] - img.data[i]))
    expect(maxErr).toBeLessThan(40)
  })

  it('greyscale becomes three equal channels', async () => {
    const grey = Buffer.alloc(W * H, 0).map((_, i) => i % 256)
    const png = await sharp(grey, { raw: { width: W, height: H, channels: 1 } }).png().toBuffer()
    const got = await readImage(png)
    expect(got.data.length).toBe(W * H * 3)
    for (let p = 0; p < W * H; p++) {
      expect(got.data[3 * p]).toBe(grey[p])
      expect(got.data[3 * p + 1]).toBe(grey[p])
      expect(got.data[3 * p + 2]).toBe(grey[p])
    }
  })

  it('alpha is dropped, colour kept (as PIL convert("RGB"))', async () => {
    const img = gradient()
    const rgba = new Uint8Array(W * H * 4)
    for (let p = 0; p < W * H; p++) {
      rgba.set(img.data.subarray(3 * p, 3 * p + 3), 4 * p)
      rgba[4 * p + 3] = p % 2 ? 0 : 128
    }
    const got = await readImage(await sharp(rgba, { raw: { width: W, height: H, channels: 4 } }).png().toBuffer())
    expect(Buffer.from(got.data).equals(Buffer.from(img.data))).toBe(true)
  })

  it('CMYK JPEG converts to RGB', async () => {
    const red = { data: new Uint8Array(W * H * 3).map((_, i) => (i % 3 === 0 ? 220 : 20)), width: W, height: H }
    const cmyk = await raw(red).toColourspace('cmyk').jpeg({ quality: 95 }).toBuffer()
    expect((await sharp(cmyk).metadata()).space).toBe('cmyk')
    const got = await readImage(cmyk)
    expect(got.data.length).toBe(W * H * 3)
    const mid = (8 * W + 12) * 3
    expect(got.data[mid]).toBeGreaterThan(150)
    expect(got.data[mid + 1]).toBeLessThan(90)
    expect(got.data[mid + 2]).toBeLessThan(90)
  })

  it('an animated GIF gives its first frame', async () => {
    const frame = (v: number) => new Uint8Array(W * H * 4).map((_, i) => (i % 4 === 3 ? 255 : v))
    const stacked = new Uint8Array(W * H * 4 * 2)
    stacked.set(frame(200), 0)
    stacked.set(frame(30), W * H * 4)
    const gif = await sharp(stacked, { raw: { width: W, height: H * 2, channels: 4, pageHeight: H } as CreateRaw })
      .gif()
      .toBuffer()
    expect((await sharp(gif, { pages: -1 }).metadata()).pages).toBe(2)
    const got = await readImage(gif)
    expect([got.width, got.height]).toEqual([W, H])
    expect(Math.abs(got.data[0] - 200)).toBeLessThan(8)
  })

  it('accepts a sharp instance', async () => {
    const img = gradient()
    const got = await readImage(raw(img).resize(12, 8))
    expect([got.width, got.height]).toEqual([12, 8])
  })

  it('a truncated file is a clear MARVEL_IMAGE error', async () => {
    const png = await raw(gradient()).png().toBuffer()
    const err = await readImage(png.subarray(0, png.length - 30)).catch((e) => e)
    expect(err.code).toBe('MARVEL_IMAGE')
    expect(err.message).toMatch(/cannot decode image/)
    const jpeg = await raw(gradient()).jpeg().toBuffer()
    const err2 = await readImage(jpeg.subarray(0, jpeg.length >> 1)).catch((e) => e)
    expect(err2.code).toBe('MARVEL_IMAGE')
  })

  it('a non-image file and an empty buffer are clear errors', async () => {
    const path = join(dir, 'notes.txt')
    writeFileSync(path, 'this is not an image')
    const err = await readImage(path).catch((e) => e)
    expect(err.code).toBe('MARVEL_IMAGE')
    expect(err.message).toContain(path)
    expect((await readImage(Buffer.alloc(0)).catch((e) => e)).code).toBe('MARVEL_IMAGE')
  })

  it('a missing file is MARVEL_IO', async () => {
    const err = await readImage(join(dir, 'missing.png')).catch((e) => e)
    expect(err.code).toBe('MARVEL_IO')
    expect(err.message).toMatch(/missing\.png: file not found/)
  })

  it('a wrong argument type is MARVEL_INVALID_ARGUMENT', async () => {
    const err = await readImage(42 as unknown as string).catch((e) => e)
    expect(err.code).toBe('MARVEL_INVALID_ARGUMENT')
  })
})

describe('writing PNG', () => {
  it('round-trips an RGB image exactly', async () => {
    const img = gradient()
    const path = join(dir, 'out.png')
    await writePng(img, path)
    const back = await readImage(path)
    expect(Buffer.from(back.data).equals(Buffer.from(img.data))).toBe(true)
    const png = await encodePng(img)
    expect(png.subarray(1, 4).toString()).toBe('PNG')
  })

  it('rejects a buffer that does not match the size', async () => {
    const err = await encodePng({ data: new Uint8Array(10), width: 4, height: 4 }).catch((e) => e)
    expect(err.code).toBe('MARVEL_SHAPE_MISMATCH')
  })
})

describe('prepareImage (model input geometry)', () => {
  const pattern = (w: number, h: number): RgbImage => {
    const data = new Uint8Array(w * h * 3)
    for (let y = 0; y < h; y++)
      for (let x = 0; x < w; x++) data.set([x % 256, y % 256, (x * 7 + y * 13) % 256], (y * w + x) * 3)
    return { data, width: w, height: h }
  }

  it('a 256x256 image passes through untouched', async () => {
    const img = pattern(256, 256)
    expect(await prepareImage(img)).toBe(img)
    expect(await prepareImage(img, { resize: 'none' })).toBe(img)
  })

  it('a wide image whose short side is already 256 is centre-cropped without resampling', async () => {
    const img = pattern(512, 256)
    const out = await prepareImage(img)
    expect([out.width, out.height]).toEqual([256, 256])
    // Centre crop starts at column (512 - 256) / 2 = 128.
    for (const [x, y] of [[0, 0], [255, 255], [17, 200]]) {
      const o = (y * 256 + x) * 3
      const i = (y * 512 + x + 128) * 3
      expect(Array.from(out.data.subarray(o, o + 3))).toEqual(Array.from(img.data.subarray(i, i + 3)))
    }
  })

  it('the shorter side is resized to 256 and a uniform colour survives', async () => {
    const w = 600
    const h = 400
    const data = new Uint8Array(w * h * 3).map((_, i) => [200, 100, 50][i % 3])
    const out = await prepareImage({ data, width: w, height: h })
    expect([out.width, out.height]).toEqual([256, 256])
    for (let i = 0; i < out.data.length; i += 997) expect(Math.abs(out.data[i] - [200, 100, 50][i % 3])).toBeLessThanOrEqual(1)
  })

  it("resize 'none' refuses an image of the wrong size", async () => {
    const err = await prepareImage(pattern(300, 200), { resize: 'none' }).catch((e) => e)
    expect(err.code).toBe('MARVEL_SHAPE_MISMATCH')
    expect(err.message).toMatch(/300x200/)
  })

  it('decodes encoded input first', async () => {
    const png = await encodePng(pattern(320, 256))
    const out = await prepareImage(png)
    expect([out.width, out.height]).toEqual([256, 256])
  })
})

describe('paths that must not be read', () => {
  it('a NUL byte in a path is refused, not cut off there (libvips would read the file before the NUL)', async () => {
    const path = join(dir, 'real.png')
    writeFileSync(path, await raw(gradient()).png().toBuffer())
    const err = await readImage(`${path}\0.txt`).catch((e) => e)
    expect(err).toBeInstanceOf(MarvelError)
    expect(err.code).toBe('MARVEL_INVALID_ARGUMENT')
    expect(err.message).toMatch(/readImage: expected an image path to be a path without NUL bytes/)
    const err2 = await prepareImage(`${path}\0`).catch((e) => e)
    expect(err2.code).toBe('MARVEL_INVALID_ARGUMENT')
    expect((await writePng(gradient(), `${join(dir, 'out.png')}\0x`).catch((e) => e)).code).toBe('MARVEL_INVALID_ARGUMENT')
  })

  it('a directory is MARVEL_IO naming what it is', async () => {
    const err = await readImage(dir).catch((e) => e)
    expect(err.code).toBe('MARVEL_IO')
    expect(err.message).toContain(`${dir}: it is a directory, not a regular file`)
  })

  it.skipIf(process.platform === 'win32')('a FIFO is refused at once instead of blocking a worker forever (skipped on Windows: no mkfifo)', async () => {
    const fifo = join(dir, 'pipe.png')
    execFileSync('mkfifo', [fifo])
    try {
      const outcome = await Promise.race([
        readImage(fifo).then(
          () => 'decoded',
          (e) => e,
        ),
        new Promise((done) => setTimeout(() => done('still blocked after 5 s'), 5000)),
      ])
      expect(outcome).toBeInstanceOf(MarvelError)
      expect((outcome as MarvelError).code).toBe('MARVEL_IO')
      expect((outcome as MarvelError).message).toContain('it is a FIFO (named pipe), not a regular file')
    } finally {
      // Should a reader be stuck on the FIFO, a writer that opens and closes it lets the reader see end of file.
      try {
        closeSync(openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK))
      } catch {
        // ENXIO: nobody is reading, which is the expected case.
      }
    }
  })
})

describe('truncation', () => {
  it('every cut of a JPEG-compressed TIFF (sharp default) is MARVEL_IMAGE, never a black image', async () => {
    const img = gradient()
    const tiff = await raw(img).resize(64, 48, { kernel: 'nearest' }).tiff().toBuffer()
    expect((await sharp(tiff).metadata()).format).toBe('tiff')
    let accepted = 0
    const codes = new Set<string>()
    for (let cut = 8; cut < tiff.length; cut++) {
      const err = await readImage(tiff.subarray(0, cut)).then(
        () => undefined,
        (e) => e,
      )
      if (err) codes.add(err.code)
      else accepted++
    }
    expect(tiff.length).toBeGreaterThan(1000)
    expect(accepted).toBe(0)
    expect([...codes]).toEqual(['MARVEL_IMAGE'])
    // The whole file still decodes.
    expect((await readImage(tiff)).width).toBe(64)
  })
})

describe('decoding bound', () => {
  let threads: number
  beforeAll(() => {
    threads = getNumThreads()
  })
  afterEach(() => setNumThreads(threads))

  it('never decodes more images at once than there are compute threads, and every result is right', async () => {
    setNumThreads(2)
    const big = await sharp({ create: { width: 1600, height: 1200, channels: 3, background: { r: 40, g: 90, b: 200 } } }).jpeg().toBuffer()
    decodeSlots.peak = 0
    const out = await Promise.all(Array.from({ length: 24 }, (_, i) => (i % 2 ? prepareImage(big, { size: 32 }) : readImage(big))))
    expect(decodeSlots.peak).toBe(2)
    expect(out.filter((o) => o.width === 32)).toHaveLength(12)
    expect(out.filter((o) => o.width === 1600)).toHaveLength(12)

    setNumThreads(5)
    decodeSlots.peak = 0
    await Promise.all(Array.from({ length: 24 }, () => prepareImage(big, { size: 32 })))
    expect(decodeSlots.peak).toBe(5)
  })

  it('a failed decode gives its slot back', async () => {
    setNumThreads(1)
    const bad = await Promise.all(Array.from({ length: 5 }, () => readImage(Buffer.from('not an image')).catch((e) => e.code)))
    expect(bad).toEqual(Array(5).fill('MARVEL_IMAGE'))
    expect((await readImage(await raw(gradient()).png().toBuffer())).width).toBe(W)
  })
})
