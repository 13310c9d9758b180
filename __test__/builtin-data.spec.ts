/**
 * The built-in model's data and packaging helpers (scripts/builtin-data/*.mjs): F16 safetensors that the loader
 * reads back, DEP-5 licence lookup, the webdataset tar writer, and the committed photo lists.
 */
import { execFileSync } from 'node:child_process'
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'

import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { Tokenizer } from '../src/index.js'
import { tinyModel } from './helpers/models.js'

const scripts = join(import.meta.dirname, '..', 'scripts', 'builtin-data')
const load = async (name: string) => import(pathToFileURL(join(scripts, name)).href)

interface PhotoRow { origin: string; path: string; licence: string; decision: 'keep' | 'drop'; reason: string; line: number }
interface Paragraph { files: string[]; copyright: string[]; license: string }

let f16: { f16Bits: (x: number) => number; safetensorsToF16: (b: Buffer) => Buffer }
let sources: {
  debianPackage: (name: string, work: string) => { name: string; missing?: string; version?: string }
  parseCopyright: (text: string) => Paragraph[]
  licenseOf: (p: Paragraph[], path: string) => { license: string; copyright: string[] }
  readPhotoList: (file: string) => PhotoRow[]
  globRegExp: (pattern: string) => RegExp
}
let tar: { writeTar: (path: string, members: [string, Buffer][]) => Promise<void> }
let work: string

beforeAll(async () => {
  f16 = await load('f16-safetensors.mjs')
  sources = await load('sources.mjs')
  tar = await load('tar.mjs')
  work = mkdtempSync(join(tmpdir(), 'marvel-builtin-data-'))
})

afterAll(() => rmSync(work, { recursive: true, force: true }))

function safetensorsHeader(buffer: Buffer): Record<string, { dtype: string; shape: number[] }> {
  const n = Number(buffer.readBigUInt64LE(0))
  return JSON.parse(buffer.subarray(8, 8 + n).toString('utf8'))
}

describe('F16 safetensors', () => {
  it('rounds to the nearest half, ties to even, with subnormals, overflow and NaN', () => {
    const cases: [number, number][] = [
      [1, 0x3c00], [-2, 0xc000], [0.1, 0x2e66], [65504, 0x7bff], [65520, 0x7c00], [1e6, 0x7c00], [-Infinity, 0xfc00],
      [2 ** -24, 0x0001], [2 ** -25, 0x0000], [3 * 2 ** -25, 0x0002], [2 ** -14, 0x0400],
      [1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02], [-0, 0x8000],
    ]
    for (const [x, bits] of cases) expect(f16.f16Bits(x), String(x)).toBe(bits)
    expect(f16.f16Bits(NaN) & 0x7c00).toBe(0x7c00)
    expect(f16.f16Bits(NaN) & 0x3ff).not.toBe(0)
  })

  it('halves a model that Tokenizer.fromPretrained loads and decodes like the F32 original', async () => {
    const dir = await tinyModel({ depths: 3 }, 5)
    const half = join(work, 'half')
    mkdirSync(half)
    copyFileSync(join(dir, 'config.json'), join(half, 'config.json'))
    const original = readFileSync(join(dir, 'model.safetensors'))
    writeFileSync(join(half, 'model.safetensors'), f16.safetensorsToF16(original))
    const converted = readFileSync(join(half, 'model.safetensors'))
    const before = safetensorsHeader(original)
    const after = safetensorsHeader(converted)
    expect(Object.keys(after).sort()).toEqual(Object.keys(before).sort())
    for (const [name, t] of Object.entries(before)) {
      if (name === '__metadata__') continue
      expect(after[name].shape, name).toEqual(t.shape)
      expect(after[name].dtype, name).toBe(t.dtype === 'F32' ? 'F16' : t.dtype)
    }
    expect(converted.length).toBeLessThan(original.length * 0.55)

    const a = await Tokenizer.fromPretrained(dir)
    const b = await Tokenizer.fromPretrained(half)
    const image = { data: Uint8Array.from({ length: 256 * 256 * 3 }, (_, i) => (i * 37 + (i >> 9)) % 256), width: 256, height: 256 }
    const tokens = await a.encode(image, { resize: 'none' })
    const [x] = await a.decode(tokens)
    const [y] = await b.decode(tokens)
    let worst = 0
    for (let i = 0; i < x.data.length; i++) worst = Math.max(worst, Math.abs(x.data[i] - y.data[i]))
    // F16 keeps 11 significant bits: a random model's pixels move by a level or two at most.
    expect(worst).toBeLessThanOrEqual(2)
    a.dispose()
    b.dispose()
  })
})

describe('DEP-5 licence lookup', () => {
  const copyright = [
    'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/',
    '',
    'Files: *',
    'Copyright: 2014 Someone',
    'License: GPL-2+',
    '',
    'Files: nature/Aqua.jpg',
    '       nature/Garden.jpg',
    'Copyright: 2008, Charles Barbin',
    '           2009, Other Person',
    'License: CC-BY-SA-4.0',
    ' The licence text follows here.',
    '',
    'Files: nature/G*',
    'Copyright: 2010 Later',
    'License: CC0-1.0',
  ].join('\n')

  it('reads multi-line file lists and copyright lines; the last matching paragraph wins', () => {
    const p = sources.parseCopyright(copyright)
    expect(p.map((x) => x.files)).toEqual([['*'], ['nature/Aqua.jpg', 'nature/Garden.jpg'], ['nature/G*']])
    expect(sources.licenseOf(p, 'nature/Aqua.jpg')).toMatchObject({ license: 'CC-BY-SA-4.0', copyright: ['2008, Charles Barbin', '2009, Other Person'] })
    expect(sources.licenseOf(p, 'nature/Garden.jpg').license).toBe('CC0-1.0')
    expect(sources.licenseOf(p, 'desktop/Stripes.png').license).toBe('GPL-2+')
  })

  it('refuses a path no paragraph matches', () => {
    const p = sources.parseCopyright(copyright.replace('Files: *', 'Files: debian/*'))
    expect(() => sources.licenseOf(p, 'desktop/Stripes.png')).toThrow(/no Files paragraph .* matches desktop\/Stripes.png/)
  })
})

const hasApt = (() => {
  try {
    execFileSync('apt-cache', ['--version'], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
})()

describe.skipIf(!hasApt)('Debian packages (skipped where apt-cache is absent: not a Debian-based system)', () => {
  it('reports a package the mirror does not have instead of failing, so the other packages still go on', () => {
    const pkg = sources.debianPackage('marvel-no-such-package-xyz', work)
    expect(pkg.name).toBe('marvel-no-such-package-xyz')
    expect(pkg.version).toBeUndefined()
    expect(pkg.missing).toMatch(/marvel-no-such-package-xyz/)
  })
})

describe('webdataset tar writer', () => {
  it('writes members that tar lists and extracts byte for byte', async () => {
    const members: [string, Buffer][] = [
      ['p000-c00000.png', Buffer.from('first')],
      ['p001-c00007.png', Buffer.alloc(1000, 7)],
      ['p002-c00001.png', Buffer.alloc(512, 3)],
    ]
    const file = join(work, 'train-0000.tar')
    await tar.writeTar(file, members)
    expect(readFileSync(file).length % 512).toBe(0)
    expect(existsSync(`${file}.partial`)).toBe(false)
    // Reproducible: the same members give the same bytes.
    await tar.writeTar(join(work, 'again.tar'), members)
    expect(readFileSync(join(work, 'again.tar')).equals(readFileSync(file))).toBe(true)
    expect(execFileSync('tar', ['-tf', file], { encoding: 'utf8' }).trim().split('\n')).toEqual(members.map(([n]) => n))
    const out = join(work, 'extracted')
    mkdirSync(out)
    execFileSync('tar', ['-xf', file, '-C', out])
    for (const [name, data] of members) expect(readFileSync(join(out, name)).equals(data), name).toBe(true)
  })

  it('is the library\'s writer: a name longer than the ustar field gets a pax record that tar reads', async () => {
    const long = `${'x'.repeat(120)}.png`
    await tar.writeTar(join(work, 'long.tar'), [[long, Buffer.from('px')]])
    expect(execFileSync('tar', ['-tf', join(work, 'long.tar')], { encoding: 'utf8' }).trim()).toBe(long)
  })
})

describe('the committed photo lists', () => {
  it('decide every row with a reason; kept Debian photographs name their copyright path', () => {
    const train = sources.readPhotoList(join(scripts, 'train-photos.tsv'))
    const heldout = sources.readPhotoList(join(scripts, 'heldout-photos.tsv'))
    for (const row of [...train, ...heldout]) expect(row.reason.length, `line ${row.line}`).toBeGreaterThan(3)
    const kept = train.filter((r) => r.decision === 'keep')
    expect(new Set(kept.map((r) => r.origin))).toEqual(new Set(['mate-backgrounds', 'plasma-workspace-wallpapers', 'lomiri-wallpapers-20.04', 'palapeli-data']))
    for (const row of kept) expect(row.licence, `train line ${row.line}`).toMatch(/^dep5:\S+$/)
    for (const row of heldout.filter((r) => r.decision === 'keep')) expect(row.licence, `heldout line ${row.line}`).not.toBe('-')
    // Held out means never trained on: no file name is in both lists as kept.
    const base = (p: string) => p.split('/').pop()
    const trainNames = new Set(kept.map((r) => base(r.path)))
    expect(heldout.filter((r) => r.decision === 'keep' && trainNames.has(base(r.path)))).toEqual([])
  })

  it('refuses a malformed row, naming the file and line', () => {
    const file = join(work, 'bad.tsv')
    writeFileSync(file, '# comment\nmate-backgrounds\tusr/a.jpg\tdep5:a.jpg\tmaybe\twhy\n')
    expect(() => sources.readPhotoList(file)).toThrow(/bad\.tsv:2: expected 5 tab-separated columns/)
  })

  it('matches drop globs across folders', () => {
    expect(sources.globRegExp('usr/share/wallpapers/*/contents/screenshot.*').test('usr/share/wallpapers/Path/contents/screenshot.jpg')).toBe(true)
    expect(sources.globRegExp('usr/share/wallpapers/*/contents/screenshot.*').test('usr/share/wallpapers/Path/contents/images/2560x1600.jpg')).toBe(false)
  })
})
