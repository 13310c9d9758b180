/** `marvel eval` and `marvel plot`, run as a user runs them: the built dist/cli.js in a subprocess. */
import { execFileSync, spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

import sharp from 'sharp'
import { beforeAll, describe, expect, it } from 'vitest'

import { tinyModel } from './helpers/models.js'

const root = fileURLToPath(new URL('..', import.meta.url))
const cli = join(root, 'dist', 'cli.js')

let work: string
let model: string

function marvel(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [cli, ...args], {
    cwd: work,
    encoding: 'utf8',
    env: { ...process.env, HF_HUB_OFFLINE: '1', MARVEL_DEBUG: '', MARVEL_INCEPTION_WEIGHTS: '', ...env },
    timeout: 120_000,
  })
  return { code: r.status, stdout: r.stdout, stderr: r.stderr }
}

/** One ustar header + data, padded to 512-byte blocks. */
function tarMember(name: string, data: Buffer): Buffer {
  const header = Buffer.alloc(512)
  header.write(name, 0, 100, 'utf8')
  header.write('0000644\0', 100)
  header.write('0000000\0', 108)
  header.write('0000000\0', 116)
  header.write(data.length.toString(8).padStart(11, '0') + '\0', 124)
  header.write('00000000000\0', 136)
  header.write('        ', 148)
  header.write('0', 156)
  header.write('ustar\0', 257)
  header.write('00', 263)
  const sum = header.reduce((s, b) => s + b, 0)
  header.write(sum.toString(8).padStart(6, '0') + '\0 ', 148)
  return Buffer.concat([header, data, Buffer.alloc((512 - (data.length % 512)) % 512)])
}

beforeAll(async () => {
  if (!existsSync(cli) || statSync(cli).mtimeMs < statSync(join(root, 'src', 'cli', 'eval.ts')).mtimeMs) execFileSync('npx', ['tsup'], { cwd: root, stdio: 'pipe' })
  work = mkdtempSync(join(tmpdir(), 'marvel-eval-cli-'))
  model = await tinyModel({ quantizeMode: 'lfq', depths: 2 }, 7)
  mkdirSync(join(work, 'photos'))
  const pngs: Buffer[] = []
  for (const [i, [w, h]] of [[300, 256], [256, 256]].entries()) {
    const data = Buffer.alloc(w * h * 3)
    for (let k = 0; k < data.length; k++) data[k] = (k * 7 + i * 50 + ((k / 3 / w) | 0) * 3) % 256
    const png = await sharp(data, { raw: { width: w, height: h, channels: 3 } }).png().toBuffer()
    writeFileSync(join(work, 'photos', `img${i}.png`), png)
    pngs.push(png)
  }
  // A webdataset shard: each sample an image plus a label member that is not an image.
  const shard = Buffer.concat([
    tarMember('000000.png', pngs[0]),
    tarMember('000000.cls', Buffer.from('3')),
    tarMember('000001.png', pngs[1]),
    tarMember('000001.cls', Buffer.from('5')),
    Buffer.alloc(1024),
  ])
  writeFileSync(join(work, 'shard-000.tar'), shard)
  writeFileSync(join(work, 'not-a-shard.tar'), Buffer.alloc(1024, 7))
})

describe('marvel eval', () => {
  it('is listed and documents its options, the Inception variable included', () => {
    expect(marvel(['--help']).stdout).toMatch(/eval .*\n[\s\S]*plot /)
    const help = marvel(['eval', '--help'])
    expect(help.code).toBe(0)
    for (const flag of ['--limit', '--depth', '--inception', 'MARVEL_INCEPTION_WEIGHTS', '--json', '--plot', '--no-codecs', '--model']) expect(help.stdout).toContain(flag)
  })

  it('reports every depth as JSON and writes the rate–distortion chart; rFID unavailable without weights', async () => {
    const r = marvel(['eval', 'photos', '--model', model, '--json', '--plot', 'rd.png'])
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    const report = JSON.parse(r.stdout)
    expect(report.images).toBe(2)
    expect(report.rfid.available).toBe(false)
    expect(report.rfid.reason).toMatch(/MARVEL_INCEPTION_WEIGHTS/)
    expect(report.depths.map((d: { depth: number }) => d.depth)).toEqual([1, 2])
    for (const d of report.depths) {
      expect(d.psnr).toBeGreaterThan(0)
      expect(d.msSsim).not.toBeNull()
      expect(d.codecs.map((c: { codec: string }) => c.codec)).toEqual(['webp', 'jpeg', 'webp-downscaled', 'jpeg-downscaled'])
    }
    const meta = await sharp(join(work, 'rd.png')).metadata()
    expect([meta.format, meta.width, meta.height]).toEqual(['png', 800, 320])
  })

  it('reads webdataset shards (image members only) with the same results as the folder', () => {
    const folder = JSON.parse(marvel(['eval', 'photos', '--model', model, '--json', '--no-codecs']).stdout)
    const r = marvel(['eval', 'shard-000.tar', '--model', model, '--json', '--no-codecs'])
    expect(r.code, r.stderr).toBe(0)
    const shard = JSON.parse(r.stdout)
    expect(shard.images).toBe(2)
    expect(shard.depths).toEqual(folder.depths)
  })

  it('prints a table, honours --depth and --limit', () => {
    const r = marvel(['eval', 'photos', '--model', model, '--depth', '2', '--limit', '1'])
    expect(r.code, r.stderr).toBe(0)
    const lines = r.stdout.trim().split('\n')
    expect(lines[0]).toMatch(/^1 image at 256x256/)
    expect(lines[1]).toMatch(/depth\s+bits\/image\s+PSNR \(dB\)\s+SSIM\s+MS-SSIM/)
    expect(lines[2]).toMatch(/^\s*2\s+/)
    expect(r.stdout).toMatch(/rFID unavailable/)
    expect(r.stdout).toMatch(/full resolution[^\n]*\n\s*depth\s+bytes\s+marvel PSNR\s+SSIM\s+webp bytes\s+webp q/)
    expect(r.stdout).toMatch(/downscaled[^\n]*\n\s*depth\s+bytes\s+marvel PSNR\s+SSIM\s+webp bytes\s+webp scale/)
  })

  it('fails with one coded line: a missing Inception file, a bad shard, a depth the model lacks', () => {
    const cases: Array<[string[], number, string, RegExp]> = [
      [['eval', 'photos', '--model', model, '--inception', 'missing.pth'], 1, 'MARVEL_IO', /missing\.pth not found/],
      [['eval', 'not-a-shard.tar', '--model', model], 1, 'MARVEL_IO', /corrupt tar not-a-shard.tar at byte 0: header checksum mismatch/],
      [['eval', 'photos', '--model', model, '--depth', '3'], 2, 'MARVEL_INVALID_ARGUMENT', /--depth 3/],
      [['eval', 'photos', '--model', model, '--limit', '0'], 2, 'MARVEL_INVALID_ARGUMENT', /--limit/],
    ]
    for (const [args, exit, code, message] of cases) {
      const r = marvel(args)
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(exit)
      expect(r.stderr).toMatch(new RegExp(`^marvel: .+ \\(${code}\\)\\n$`))
      expect(r.stderr).toMatch(message)
    }
  })
})

describe('marvel plot', () => {
  it('draws the curves of logs/metrics.jsonl, counting the lines it skips', async () => {
    const run = join(work, 'run')
    mkdirSync(join(run, 'logs'), { recursive: true })
    const rows = [
      ...Array.from({ length: 30 }, (_, i) => JSON.stringify({ step: i + 1, time: i, lr: 1e-4, loss: 1 / (i + 1), components: {}, gradNorm: 1, imagesPerSecond: 2 })),
      '{"step": 30, "time": 31, "eval": {"psnr": [20.5, 22.0]}}',
      'garbage',
      '{"step": 31, "time": 32, "loss": 0.1', // cut short by a crash
    ]
    writeFileSync(join(run, 'logs', 'metrics.jsonl'), rows.join('\n') + '\n')
    const r = marvel(['plot', 'run', '--out', 'curves.png', '--width', '700'])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stderr).toBe(`marvel plot: skipped 2 line(s) of ${join('run', 'logs', 'metrics.jsonl')} that are not metrics\n`)
    expect(r.stdout).toMatch(/30 training and 1 evaluation point/)
    const meta = await sharp(join(work, 'curves.png')).metadata()
    expect([meta.width, meta.height]).toEqual([700, 960])
    expect(readFileSync(join(work, 'curves.png')).subarray(1, 4).toString()).toBe('PNG')
  })

  it('fails with a coded line when the log is missing or holds no metrics', () => {
    mkdirSync(join(work, 'empty-run', 'logs'), { recursive: true })
    writeFileSync(join(work, 'empty-run', 'logs', 'metrics.jsonl'), 'nothing\n')
    for (const [dir, message] of [['no-such-run', /metrics\.jsonl/], ['empty-run', /no metrics lines \(1 line\(s\) skipped\)/]] as const) {
      const r = marvel(['plot', dir])
      expect(r.code).toBe(1)
      expect(r.stderr).toMatch(/^marvel: .+ \(MARVEL_IO\)\n$/)
      expect(r.stderr).toMatch(message)
    }
  })
})
