/** The `marvel` command, run as a user runs it: the built dist/cli.js in a subprocess, on files made here. */
import { execFileSync, spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

import sharp from 'sharp'
import { beforeAll, describe, expect, it } from 'vitest'

import { Tokens, compare, prepareImage, readImage } from '../src/index.js'
import { tinyModel } from './helpers/models.js'

const root = fileURLToPath(new URL('..', import.meta.url))
const cli = join(root, 'dist', 'cli.js')

function newestMtime(path: string): number {
  const s = statSync(path)
  if (!s.isDirectory()) return s.mtimeMs
  return Math.max(0, ...readdirSync(path).map((f) => newestMtime(join(path, f))))
}

interface Run {
  code: number | null
  stdout: string
  stderr: string
}

let work: string
let lfq: string
let vq: string

/** Run `marvel ...args` in the work folder, offline, with a private hub cache. */
function marvel(args: string[], env: Record<string, string> = {}): Run {
  const r = spawnSync(process.execPath, [cli, ...args], {
    cwd: work,
    encoding: 'utf8',
    env: { ...process.env, HF_HOME: join(work, 'hf'), HF_HUB_OFFLINE: '1', MARVEL_DEBUG: '', ...env },
    timeout: 120_000,
  })
  return { code: r.status, stdout: r.stdout, stderr: r.stderr }
}

function ok(args: string[]): string {
  const r = marvel(args)
  expect(r.stderr, `marvel ${args.join(' ')}`).toBe('') // no bar, no warnings: stderr is not a terminal
  expect(r.code).toBe(0)
  return r.stdout
}

/** A failure: the exit code and exactly one `marvel: <message> (<code>)` line on stderr. */
function failure(args: string[], exitCode: number, errorCode: string, message: RegExp): void {
  const r = marvel(args)
  expect(r.code, r.stderr).toBe(exitCode)
  expect(r.stderr).toMatch(new RegExp(`^marvel: .+ \\(${errorCode}\\)\\n$`))
  expect(r.stderr).toMatch(message)
  expect(r.stdout).toBe('')
}

const size = async (path: string) => {
  const m = await sharp(path).metadata()
  return [m.width, m.height]
}

beforeAll(async () => {
  const stale = !existsSync(cli) || statSync(cli).mtimeMs < Math.max(newestMtime(join(root, 'src')), newestMtime(join(root, 'tsup.config.ts')))
  if (stale) execFileSync('npx', ['tsup'], { cwd: root, stdio: 'pipe' })

  work = mkdtempSync(join(tmpdir(), 'marvel-cli-'))
  lfq = await tinyModel({ quantizeMode: 'lfq', depths: 3 }, 3)
  vq = await tinyModel({ quantizeMode: 'vq' }, 4)
  mkdirSync(join(work, 'photos'))
  const pattern = (w: number, h: number, seed: number) => {
    const data = Buffer.alloc(w * h * 3)
    for (let i = 0; i < data.length; i++) data[i] = (i * 31 + seed * 97 + ((i / 3 / w) | 0) * 7) % 256
    return sharp(data, { raw: { width: w, height: h, channels: 3 } })
  }
  await pattern(300, 260, 1).png().toFile(join(work, 'photos', 'b-wide.png'))
  await pattern(256, 320, 2).jpeg({ quality: 95 }).toFile(join(work, 'photos', 'a-tall.jpg'))
  writeFileSync(join(work, 'photos', 'notes.txt'), 'not an image')
  const png = await pattern(256, 256, 3).png().toBuffer()
  writeFileSync(join(work, 'broken.png'), png.subarray(0, png.length >> 1))
})

describe('marvel --help', () => {
  it.each(['', 'encode', 'decode', 'reconstruct', 'info'])('marvel %s --help exits 0 with usage', (name) => {
    const cmd = name ? [name] : []
    const out = ok([...cmd, '--help'])
    expect(out).toContain(`Usage: marvel ${cmd.length ? `${cmd[0]} ` : ''}[options]`)
    if (cmd.length && cmd[0] !== 'info') expect(out).toContain('--model')
  })

  it('marvel help <command> and --version exit 0', () => {
    expect(ok(['help', 'reconstruct'])).toContain('Usage: marvel reconstruct [options] <images...>')
    expect(ok(['--version']).trim()).toMatch(/^\d+\.\d+\.\d+/)
  })
})

describe('marvel encode / decode', () => {
  it('encodes a folder (image files only, sorted) to .bin, and decodes it to one 256x256 PNG per image', async () => {
    const out = ok(['encode', 'photos', '--model', lfq, '--out', 'enc/tokens.bin'])
    expect(out).toMatch(/encoded 2 images -> enc\/tokens\.bin .*72 bits per image/)
    const tokens = Tokens.fromBytes(readFileSync(join(work, 'enc/tokens.bin')))
    expect(tokens.shape).toEqual({ batch: 2, depth: 3, numTokens: 4 })

    const decoded = JSON.parse(ok(['decode', 'enc/tokens.bin', '--model', lfq, '--out', 'dec-bin', '--json']))
    expect(decoded.files).toEqual([join('dec-bin', '0.png'), join('dec-bin', '1.png')])
    expect(decoded.depth).toBe(3)
    for (const f of decoded.files) expect(await size(join(work, f))).toEqual([256, 256])
  })

  it('encodes globs and files to .json with the source list, honouring --depth', () => {
    const summary = JSON.parse(ok(['encode', 'photos/*.png', 'photos/a-tall.jpg', '--model', lfq, '--out', 'enc/tokens.json', '--depth', '2', '--batch-size', '1', '--json']))
    expect(summary).toMatchObject({ images: 2, depth: 2, numTokens: 4, bitsPerToken: 6, bitsPerImage: 48, format: 'json' })
    const json = JSON.parse(readFileSync(join(work, 'enc/tokens.json'), 'utf8'))
    expect(json).toMatchObject({ format: 'marvel-tokens', version: 1, batch: 2, depth: 2, numTokens: 4, bitsPerToken: 6 })
    expect(json.files).toEqual(['photos/b-wide.png', 'photos/a-tall.jpg'])
    expect(json.ids).toHaveLength(2)
    expect(json.ids[0]).toHaveLength(2)
    expect(json.ids[0][0]).toHaveLength(4)
    // The batch size does not change the tokens: the first two depths of the full-depth .bin, reordered.
    const full = Tokens.fromBytes(readFileSync(join(work, 'enc/tokens.bin')))
    const fromJson = Tokens.fromJSON(json)
    expect(Array.from(fromJson.image(0).data)).toEqual(Array.from(full.slice(2).image(1).data))
    expect(Array.from(fromJson.image(1).data)).toEqual(Array.from(full.slice(2).image(0).data))
  })

  it('names decoded images after the sources listed in a .json token file', async () => {
    ok(['decode', 'enc/tokens.json', '--model', lfq, '--out', 'dec-json', '--depth', '1'])
    expect(readdirSync(join(work, 'dec-json')).sort()).toEqual(['a-tall.png', 'b-wide.png'])
    expect(await size(join(work, 'dec-json', 'a-tall.png'))).toEqual([256, 256])
  })
})

describe('marvel reconstruct', () => {
  let report: {
    depths: Array<{ depth: number; bitsPerImage: number; psnr: number; ssim: number }>
    perImage: Array<{ file: string; outputs: string[]; grid: string; psnr: number[]; ssim: number[] }>
  }

  beforeAll(() => {
    report = JSON.parse(ok(['reconstruct', 'photos', '--model', lfq, '--out', 'rec', '--json']))
  })

  it('writes a reconstruction per depth and an (D + 1) x 256 wide grid per image', async () => {
    expect(readdirSync(join(work, 'rec')).sort()).toEqual(
      ['a-tall', 'b-wide'].flatMap((n) => [`${n}.d1.png`, `${n}.d2.png`, `${n}.d3.png`, `${n}.grid.png`]),
    )
    expect(await size(join(work, 'rec', 'a-tall.d2.png'))).toEqual([256, 256])
    expect(await size(join(work, 'rec', 'b-wide.grid.png'))).toEqual([4 * 256, 256])
    // An RGB PNG whose panels are the centre-cropped original, then the reconstructions by depth.
    const grid = await readImage(join(work, 'rec', 'b-wide.grid.png'))
    expect((await sharp(join(work, 'rec', 'b-wide.grid.png')).metadata()).channels).toBe(3)
    const panel = async (i: number) =>
      (await sharp(grid.data, { raw: { width: 1024, height: 256, channels: 3 } }).extract({ left: i * 256, top: 0, width: 256, height: 256 }).raw().toBuffer())
    expect((await panel(0)).equals((await prepareImage(join(work, 'photos', 'b-wide.png'))).data)).toBe(true)
    expect((await panel(3)).equals((await readImage(join(work, 'rec', 'b-wide.d3.png'))).data)).toBe(true)
  })

  it('reports PSNR / SSIM per depth (the mean over images) and the bits per image', async () => {
    expect(report.depths.map((d) => [d.depth, d.bitsPerImage])).toEqual([[1, 24], [2, 48], [3, 72]])
    for (const [j, d] of report.depths.entries()) {
      expect(Number.isFinite(d.psnr) && d.psnr > 0).toBe(true)
      expect(d.ssim).toBeLessThan(1)
      expect(d.psnr).toBeCloseTo((report.perImage[0].psnr[j] + report.perImage[1].psnr[j]) / 2, 10)
      expect(d.ssim).toBeCloseTo((report.perImage[0].ssim[j] + report.perImage[1].ssim[j]) / 2, 10)
    }
    // The figures are those of the metrics API on the files written.
    const img = report.perImage[0]
    expect(img.file).toBe(join('photos', 'a-tall.jpg'))
    const [s] = await compare(await prepareImage(join(work, img.file)), await readImage(join(work, img.outputs[1])))
    expect(s.psnr).toBeCloseTo(img.psnr[1], 10)
    expect(s.ssim).toBeCloseTo(img.ssim[1], 10)
  })

  it('prints the same figures as a table without --json', () => {
    const table = ok(['reconstruct', 'photos', '--model', lfq, '--out', 'rec-table'])
    expect(table).toMatch(/depth\s+bits\/image\s+PSNR \(dB\)\s+SSIM/)
    for (const d of report.depths) {
      expect(table).toMatch(new RegExp(`\\n\\s*${d.depth}\\s+${d.bitsPerImage}\\s+${d.psnr.toFixed(2)}\\s+${d.ssim.toFixed(4)}\\n`))
    }
  })

  it('round-trips: decode of encode gives the same PNG bytes as reconstruct at each depth', () => {
    for (const depth of [2, 3]) {
      ok(['decode', 'enc/tokens.bin', '--model', lfq, '--depth', String(depth), '--out', `rt${depth}`])
      // tokens.bin holds photos/ sorted: a-tall.jpg, b-wide.png
      for (const [i, name] of ['a-tall', 'b-wide'].entries()) {
        const viaTokens = readFileSync(join(work, `rt${depth}`, `${i}.png`))
        expect(viaTokens.equals(readFileSync(join(work, 'rec', `${name}.d${depth}.png`))), `${name} depth ${depth}`).toBe(true)
      }
    }
  })

  it('with --depth d writes only that depth and an original | depth d grid', async () => {
    const r = JSON.parse(ok(['reconstruct', 'photos/b-wide.png', '--model', lfq, '--depth', '2', '--out', 'rec-d2', '--json']))
    expect(r.depths.map((d: { depth: number }) => d.depth)).toEqual([2])
    expect(readdirSync(join(work, 'rec-d2')).sort()).toEqual(['b-wide.d2.png', 'b-wide.grid.png'])
    expect(await size(join(work, 'rec-d2', 'b-wide.grid.png'))).toEqual([512, 256])
    expect(readFileSync(join(work, 'rec-d2', 'b-wide.d2.png')).equals(readFileSync(join(work, 'rec', 'b-wide.d2.png')))).toBe(true)
  })
})

describe('a VQ (TiTok) model', () => {
  it('encodes, decodes and reconstructs at its single depth', async () => {
    ok(['encode', 'photos', '--model', vq, '--out', 'vq/tokens.bin'])
    ok(['decode', 'vq/tokens.bin', '--model', vq, '--out', 'vq/dec'])
    const r = JSON.parse(ok(['reconstruct', 'photos', '--model', vq, '--out', 'vq/rec', '--json']))
    expect(r.depths).toHaveLength(1)
    expect(r.depths[0].bitsPerImage).toBe(4 * 8)
    expect(await size(join(work, 'vq/rec/a-tall.grid.png'))).toEqual([512, 256])
    expect(readFileSync(join(work, 'vq/dec/0.png')).equals(readFileSync(join(work, 'vq/rec/a-tall.d1.png')))).toBe(true)
  })
})

describe('marvel info', () => {
  it('--json describes the LFQ model', () => {
    const info = JSON.parse(ok(['info', lfq, '--json']))
    expect(info).toMatchObject({ architecture: 'marvel', quantizer: 'lfq', imageSize: 256, numTokens: 4, depth: 3, codebookSize: 64, bitsPerToken: 6, bitsPerImage: 72, bytesPerImage: 9 })
    expect(info.byDepth.map((d: { bitsPerImage: number }) => d.bitsPerImage)).toEqual([24, 48, 72])
    expect(info.parameters).toBeGreaterThan(0)
    expect(info.encoder).toEqual({ width: 32, layers: 1 })
    expect(info.weightsBytes).toBe(statSync(join(lfq, 'model.safetensors')).size)
  })

  it('describes the VQ model as text', () => {
    const out = ok(['info', vq])
    expect(out).toMatch(/architecture\s+titok/)
    expect(out).toMatch(/quantizer\s+vq, codebook 256 \(8 bits per token\)/)
    expect(out).toMatch(/bits per image\s+32 \(depth 1, 4 bytes\)/)
  })
})

describe('failures', () => {
  it('exits 2 on bad usage, with one line naming the problem', () => {
    failure(['encode', '--model', lfq, '--out', 'x.bin'], 2, 'MARVEL_INVALID_ARGUMENT', /missing required argument 'images'/)
    failure(['encode', 'photos', '--model', lfq], 2, 'MARVEL_INVALID_ARGUMENT', /--out/)
    failure(['encode', 'photos', '--model', lfq, '--out', 'x.bin', '--depth', '0'], 2, 'MARVEL_INVALID_ARGUMENT', /--depth must be a positive integer, got "0"/)
    failure(['encode', 'photos', '--model', lfq, '--out', 'x.bin', '--batch-size', '65537'], 2, 'MARVEL_INVALID_ARGUMENT', /--batch-size must be at most 65536, got "65537"/)
    failure(['encode', 'photos', '--model', lfq, '--out', 'x.bin', '--depth', '4'], 2, 'MARVEL_INVALID_ARGUMENT', /--depth 4 is more than the 3/)
    failure(['encode', 'photos', '--model', lfq, '--out', 'x.txt'], 2, 'MARVEL_INVALID_ARGUMENT', /\.bin or \.json.*"x\.txt"/)
    failure(['reconstruct', 'photos', '--model', lfq, '--out', 'r', '--depth', 'two'], 2, 'MARVEL_INVALID_ARGUMENT', /"two"/)
    failure(['decode', '--model', lfq, '--out', 'd'], 2, 'MARVEL_INVALID_ARGUMENT', /missing required argument 'tokens'/)
    failure(['frobnicate'], 2, 'MARVEL_INVALID_ARGUMENT', /unknown command 'frobnicate'/)
    failure([], 2, 'MARVEL_INVALID_ARGUMENT', /no command given/)
  })

  it('exits 1 on a corrupt image, a missing input or a missing model, without a stack trace', () => {
    failure(['encode', 'broken.png', '--model', lfq, '--out', 'x.bin'], 1, 'MARVEL_IMAGE', /broken\.png/)
    failure(['reconstruct', 'broken.png', '--model', lfq, '--out', 'x'], 1, 'MARVEL_IMAGE', /broken\.png/)
    failure(['encode', 'nowhere.png', '--model', lfq, '--out', 'x.bin'], 1, 'MARVEL_IO', /nowhere\.png not found/)
    failure(['encode', 'photos/*.webp', '--model', lfq, '--out', 'x.bin'], 1, 'MARVEL_IO', /no image files match/)
    failure(['encode', 'photos', '--model', join(work, 'no-model'), '--out', 'x.bin'], 1, 'MARVEL_IO', /no-model not found/)
    failure(['info', join(work, 'no-model')], 1, 'MARVEL_IO', /no-model not found/)
    failure(['decode', 'photos/b-wide.png', '--model', lfq, '--out', 'd'], 1, 'MARVEL_INVALID_ARGUMENT', /tokens photos\/b-wide\.png/)
    expect(existsSync(join(work, 'x.bin'))).toBe(false)
  })

  it('MARVEL_DEBUG=1 adds the stack trace', () => {
    const r = marvel(['encode', 'broken.png', '--model', lfq, '--out', 'x.bin'], { MARVEL_DEBUG: '1' })
    expect(r.code).toBe(1)
    expect(r.stderr.split('\n')[0]).toMatch(/^marvel: .* \(MARVEL_IMAGE\)$/)
    expect(r.stderr).toMatch(/\n\s+at /)
  })
})

describe('marvel encode --skip-errors', () => {
  let mixed: string
  beforeAll(async () => {
    mixed = join(work, 'mixed')
    mkdirSync(mixed)
    for (const name of ['a.png', 'c.png']) await sharp(join(work, 'photos', 'b-wide.png')).png().toFile(join(mixed, name))
    writeFileSync(join(mixed, 'b.png'), readFileSync(join(work, 'broken.png')))
  })

  it('without it, the first unreadable file stops the run and nothing is written', () => {
    failure(['encode', 'mixed', '--model', lfq, '--out', 'mixed.bin'], 1, 'MARVEL_IMAGE', /mixed\/b\.png/)
    expect(existsSync(join(work, 'mixed.bin'))).toBe(false)
  })

  it('with it, the others are encoded, each skipped file is named, and the exit code is 1', () => {
    const r = marvel(['encode', 'mixed', '--model', lfq, '--out', 'mixed.json', '--skip-errors', '--json'])
    expect(r.code).toBe(1)
    const lines = r.stderr.trim().split('\n')
    expect(lines).toHaveLength(2)
    expect(lines[0]).toMatch(/^marvel: skipped mixed\/b\.png: cannot decode image .* \(MARVEL_IMAGE\)$/)
    expect(lines[1]).toBe('marvel: 1 of 3 inputs skipped (named above); the other 2 are in mixed.json (MARVEL_IMAGE)')
    const summary = JSON.parse(r.stdout)
    expect(summary.files).toEqual(['mixed/a.png', 'mixed/c.png'])
    expect(summary.skipped).toEqual([{ file: 'mixed/b.png', code: 'MARVEL_IMAGE', message: expect.stringContaining('mixed/b.png') }])
    const written = JSON.parse(readFileSync(join(work, 'mixed.json'), 'utf8'))
    expect(written.files).toEqual(['mixed/a.png', 'mixed/c.png'])
    // The same tokens as encoding the good files alone.
    ok(['encode', 'mixed/a.png', 'mixed/c.png', '--model', lfq, '--out', 'good.json'])
    expect(written.ids).toEqual(JSON.parse(readFileSync(join(work, 'good.json'), 'utf8')).ids)
  })

  it('when every input is skipped it writes nothing', () => {
    const r2 = marvel(['encode', 'broken.png', '--model', lfq, '--out', 'none.bin', '--skip-errors'])
    expect(r2.code).toBe(1)
    expect(r2.stderr).toMatch(/marvel: every input was skipped \(1\); nothing written to none\.bin \(MARVEL_IMAGE\)\n$/)
    expect(existsSync(join(work, 'none.bin'))).toBe(false)
  })
})

describe('inputs that are not regular files, and an unreachable hub', () => {
  it.skipIf(process.platform === 'win32')('a FIFO given as an image or a token file fails at once (skipped on Windows: no mkfifo)', () => {
    execFileSync('mkfifo', [join(work, 'pipe.png')])
    execFileSync('mkfifo', [join(work, 'pipe.bin')])
    const r = marvel(['encode', 'pipe.png', '--model', lfq, '--out', 'p.bin'])
    expect(r.code).toBe(1)
    expect(r.stderr).toBe('marvel: cannot read image pipe.png: it is a FIFO (named pipe), not a regular file (MARVEL_IO)\n')
    failure(['decode', 'pipe.bin', '--model', lfq, '--out', 'p'], 1, 'MARVEL_IO', /tokens pipe\.bin: it is a FIFO/)
  })

  it.skipIf(process.platform === 'win32')('a FIFO named like an image in an encoded folder is named, skipped with --skip-errors, fatal without (skipped on Windows: no mkfifo)', async () => {
    mkdirSync(join(work, 'imgs'))
    for (const name of ['a', 'b', 'c', 'd']) await sharp(join(work, 'photos', 'b-wide.png')).toFile(join(work, 'imgs', `${name}.png`))
    execFileSync('mkfifo', [join(work, 'imgs', 'e.png')])
    const skipped = marvel(['encode', 'imgs', '--model', lfq, '--out', 'imgs.json', '--skip-errors', '--json'])
    expect(skipped.code).toBe(1)
    expect(skipped.stderr).toContain('marvel: skipped imgs/e.png: cannot read image imgs/e.png: it is a FIFO (named pipe), not a regular file (MARVEL_IO)\n')
    expect(skipped.stderr).toMatch(/marvel: 1 of 5 inputs skipped \(named above\); the other 4 are in imgs\.json \(MARVEL_IO\)\n$/)
    expect(JSON.parse(skipped.stdout).skipped).toEqual([{ file: 'imgs/e.png', code: 'MARVEL_IO', message: expect.stringContaining('FIFO') }])
    failure(['encode', 'imgs', '--model', lfq, '--out', 'imgs.bin'], 1, 'MARVEL_IO', /^marvel: cannot read image imgs\/e\.png: it is a FIFO/)
  })

  it('a hub that cannot be reached is MARVEL_HUB and says how to work offline', async () => {
    // A loopback port with nothing listening: bind one, note it, close it.
    const server = createServer()
    await new Promise<void>((done) => server.listen(0, '127.0.0.1', done))
    const { port } = server.address() as AddressInfo
    await new Promise((done) => server.close(done))
    const r = marvel(['info', 'org/model'], { HF_HUB_OFFLINE: '', HF_ENDPOINT: `http://127.0.0.1:${port}` })
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/^marvel: cannot reach http:\/\/127\.0\.0\.1:\d+\/org\/model\/resolve\/main\/config\.json: ECONNREFUSED/)
    expect(r.stderr).toContain('--model <folder>')
    expect(r.stderr).toContain('HF_HUB_OFFLINE=1')
    expect(r.stderr).toContain('HF_ENDPOINT')
    expect(r.stderr).toMatch(/ \(MARVEL_HUB\)\n$/)
  })
})

describe.skipIf(process.platform === 'win32')('outputs that are not regular files (skipped on Windows: no mkfifo)', () => {
  /** `marvel ...args` with a short time limit: before the check, writing to a FIFO nobody reads blocked forever. */
  function refused(args: string[], message: RegExp): void {
    const r = spawnSync(process.execPath, [cli, ...args], {
      cwd: work,
      encoding: 'utf8',
      env: { ...process.env, HF_HOME: join(work, 'hf'), HF_HUB_OFFLINE: '1', MARVEL_DEBUG: '' },
      timeout: 30_000,
    })
    expect(r.signal, `marvel ${args.join(' ')} did not finish`).toBeNull()
    expect(r.status, r.stderr).toBe(1)
    expect(r.stderr).toMatch(/ \(MARVEL_IO\)\n$/)
    expect(r.stderr).toMatch(message)
  }

  it('decode, encode and reconstruct refuse a FIFO where they would write a PNG, a grid or a token file', () => {
    ok(['encode', 'photos/b-wide.png', '--model', lfq, '--out', 'one.json'])
    mkdirSync(join(work, 'od'))
    execFileSync('mkfifo', [join(work, 'od', 'b-wide.png')])
    refused(['decode', 'one.json', '--model', lfq, '-o', 'od'], /^marvel: cannot write image od\/b-wide\.png: it is a FIFO \(named pipe\), not a regular file/)
    execFileSync('mkfifo', [join(work, 'tokens-fifo.bin')])
    refused(['encode', 'photos/b-wide.png', '--model', lfq, '--out', 'tokens-fifo.bin'], /^marvel: cannot write output tokens-fifo\.bin: it is a FIFO/)
    mkdirSync(join(work, 'rd'))
    execFileSync('mkfifo', [join(work, 'rd', 'b-wide.grid.png')])
    refused(['reconstruct', 'photos/b-wide.png', '--model', lfq, '-o', 'rd', '--depth', '1'], /^marvel: cannot write grid rd\/b-wide\.grid\.png: it is a FIFO/)
    mkdirSync(join(work, 'rd2'))
    execFileSync('mkfifo', [join(work, 'rd2', 'b-wide.d1.png')])
    refused(['reconstruct', 'photos/b-wide.png', '--model', lfq, '-o', 'rd2', '--depth', '1'], /^marvel: cannot write image rd2\/b-wide\.d1\.png: it is a FIFO/)
  })
})
