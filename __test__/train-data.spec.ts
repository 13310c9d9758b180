/** The training data pipeline: tar reading (and fuzzing it), shard lists, the seeded stream and its position, damage. */
import { execFileSync, spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { augment } from '../src/data/augment.js'
import { BatchStream } from '../src/data/batches.js'
import { Random } from '../src/data/random.js'
import { expandBraces, resolveSource, unitsOfRank, type DataSource } from '../src/data/shards.js'
import { SampleStream, splitKey, type Sample } from '../src/data/stream.js'
import { TarError, TarReader } from '../src/data/tar.js'
import { validationBatch } from '../src/train/evaluate.js'
import { MarvelError, prepareImage } from '../src/index.js'
import { encoded, writeShard, writeShards } from './helpers/shards.js'

let work: string
let shards: string[]

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'marvel-data-'))
  shards = await writeShards(join(work, 'shards'), 4, 5)
})

afterAll(() => rmSync(work, { recursive: true, force: true }))

/** Every member of a tar the way the stream walks it: skip corrupt headers, stop at a truncation. Returns names and errors. */
async function walk(path: string): Promise<{ names: string[]; errors: TarError[]; steps: number }> {
  const tar = await TarReader.open(path)
  const names: string[] = []
  const errors: TarError[] = []
  let offset = 0
  let steps = 0
  try {
    for (; steps < 100_000; steps++) {
      let member
      try {
        member = await tar.member(offset)
        if (member === null) break
        if (member.size <= 1 << 20) await tar.data(member)
        names.push(member.name)
        expect(member.next).toBeGreaterThan(offset)
        offset = member.next
      } catch (e) {
        if (!(e instanceof TarError)) throw e
        errors.push(e)
        if (e.damage === 'truncated') break
        const next = await tar.resync(offset)
        if (next === null) break
        expect(next).toBeGreaterThan(offset)
        offset = next
      }
    }
  } finally {
    await tar.close()
  }
  return { names, errors, steps }
}

async function draw(stream: SampleStream, n: number): Promise<Array<Pick<Sample, 'key' | 'draws'>>> {
  const out = []
  for (let i = 0; i < n; i++) {
    const s = await stream.next()
    out.push({ key: s.key, draws: s.draws })
  }
  return out
}

describe('tar reader', () => {
  it('reads what marvel writes, pax long names included, and what GNU tar writes', async () => {
    const long = `${'d'.repeat(120)}/k.png`
    const path = join(work, 'mine.tar')
    await writeShard(path, [['a.png', Buffer.from('xyz')], [long, Buffer.alloc(1000, 7)], ['a.cls', Buffer.from('3')]])
    const { names, errors } = await walk(path)
    expect(errors).toEqual([])
    expect(names).toEqual(['a.png', long, 'a.cls'])

    const src = join(work, 'gnu')
    mkdirSync(join(src, 'sub', 'x'.repeat(110)), { recursive: true })
    writeFileSync(join(src, 'sub', 'x'.repeat(110), 'y.jpg'), Buffer.alloc(700, 1))
    writeFileSync(join(src, 'sub', 'z.cls'), '1')
    const gnu = join(work, 'gnu.tar')
    execFileSync('tar', ['-cf', gnu, '-C', src, 'sub'])
    const read = await walk(gnu)
    expect(read.errors).toEqual([])
    expect(read.names.sort()).toEqual([`sub/${'x'.repeat(110)}/y.jpg`, 'sub/z.cls'])
  })

  it('fuzz: random bytes, truncations and flipped bytes never hang or throw anything but a coded TarError', async () => {
    const rng = new Random(20261201)
    const valid = readFileSync(shards[0])
    const cases: Buffer[] = []
    for (let i = 0; i < 150; i++) {
      const b = Buffer.alloc(rng.below(4096))
      for (let j = 0; j < b.length; j++) b[j] = rng.below(256)
      // Half of them start with a valid header, so the damage is deeper in.
      if (i % 2 === 0 && b.length > 512) valid.copy(b, 0, 0, 512)
      cases.push(b)
    }
    for (let cut = 0; cut < valid.length; cut += 97) cases.push(valid.subarray(0, cut))
    for (let i = 0; i < 150; i++) {
      const b = Buffer.from(valid)
      for (let k = 0; k < 1 + rng.below(8); k++) b[rng.below(b.length)] = rng.below(256)
      cases.push(b)
    }
    const path = join(work, 'fuzz.tar')
    for (const [i, bytes] of cases.entries()) {
      writeFileSync(path, bytes)
      const { errors, steps } = await walk(path)
      expect(steps, `case ${i}`).toBeLessThan(100_000)
      for (const e of errors) expect([e.code, e.message], `case ${i}`).toEqual(['MARVEL_IO', expect.stringMatching(/^(corrupt|truncated) tar .* at byte \d+: /)])
      // The stream over it: samples, or the coded "nothing readable" error — never a hang or a bare exception.
      if (i % 5 === 0) {
        const stream = await SampleStream.open({ kind: 'shards', units: [path] }, { seed: i, bufferSize: 2 })
        try {
          for (let k = 0; k < 3; k++) await stream.next()
        } catch (e) {
          expect([(e as MarvelError).code, (e as Error).message], `case ${i}`).toEqual(['MARVEL_IO', expect.stringContaining('no readable sample in a whole epoch')])
        } finally {
          await stream.close()
        }
      }
    }
  })

  const python = spawnSync('python3', ['-c', 'import tarfile'], { encoding: 'utf8' }).status === 0
  it.skipIf(!python)(`reads what Python's tarfile writes (pax, as webdataset's ShardWriter does)${python ? '' : ' (skipped: no python3)'}`, async () => {
    const path = join(work, 'py.tar')
    const script = [
      'import io, sys, tarfile',
      'with tarfile.open(sys.argv[1], "w", format=tarfile.PAX_FORMAT) as t:',
      '    for name, data in [("a" * 150 + "/k.jpg", b"x" * 700), ("caf\u00e9.cls", b"1"), ("big.bin", b"y" * 5000)]:',
      '        info = tarfile.TarInfo(name); info.size = len(data); t.addfile(info, io.BytesIO(data))',
    ].join('\n')
    execFileSync('python3', ['-c', script, path])
    const { names, errors } = await walk(path)
    expect(errors).toEqual([])
    expect(names).toEqual([`${'a'.repeat(150)}/k.jpg`, 'caf\u00e9.cls', 'big.bin'])
  })

  it('splits webdataset keys at the first dot of the file name', () => {
    expect(splitKey('dir.v2/n0144_10.jpg')).toEqual({ key: 'dir.v2/n0144_10', ext: 'jpg' })
    expect(splitKey('a.seg.png')).toEqual({ key: 'a', ext: 'seg.png' })
    expect(splitKey('README')).toBeNull()
    expect(splitKey('.hidden')).toBeNull()
  })
})

describe('shard lists', () => {
  it('expands brace ranges (zero-padded), lists and :: joins; refuses backwards ranges', () => {
    expect(expandBraces('t-{0008..0011}.tar')).toEqual(['t-0008.tar', 't-0009.tar', 't-0010.tar', 't-0011.tar'])
    expect(expandBraces('{a,b}-{1..2}.tar::c.tar')).toEqual(['a-1.tar', 'a-2.tar', 'b-1.tar', 'b-2.tar', 'c.tar'])
    expect(() => expandBraces('t-{5..2}.tar', 'k')).toThrow(/k: the range \{5\.\.2\} runs backwards/)
    expect(() => expandBraces('t-{0..99999999}.tar', 'k')).toThrow(/more than 1000000/)
  })

  it('resolves shard patterns and folders, and names a missing shard', () => {
    const dir = join(work, 'shards')
    expect(resolveSource(join(dir, 'train-{0000..0003}.tar'), 'key')).toEqual({ kind: 'shards', units: shards })
    expect(resolveSource(dir, 'key')).toEqual({ kind: 'shards', units: shards })
    const missing = join(dir, 'train-{0000..0005}.tar')
    expect(() => resolveSource(missing, 'dataset.params.train_shards_path_or_url')).toThrow(
      expect.objectContaining({ code: 'MARVEL_IO', message: expect.stringMatching(/train_shards_path_or_url: shards not found .*train-0004\.tar, .*train-0005\.tar/) }),
    )
  })

  it('gives each rank its own shards, or every rank every shard with a sample stride', async () => {
    const a = unitsOfRank(shards, 0, 2)
    const b = unitsOfRank(shards, 1, 2)
    expect([...a.units, ...b.units].sort()).toEqual(shards)
    expect(a.units.filter((u) => b.units.includes(u))).toEqual([])
    // One shard, two ranks: alternate samples.
    const one: DataSource = { kind: 'shards', units: [shards[0]] }
    const keys = []
    for (const rank of [0, 1]) {
      const part = unitsOfRank(one.units, rank, 2)
      const s = await SampleStream.open(one, { seed: 1, bufferSize: 0, ordered: true, sampleStride: part.sampleStride, sampleOffset: part.sampleOffset })
      keys.push((await draw(s, 2)).map((x) => x.key))
      await s.close()
    }
    expect(keys).toEqual([['s00000', 's00002'], ['s00001', 's00003']])
    // The stride runs over the endless stream, not within an epoch: with one sample and four ranks, rank 3 gets it
    // on the fourth pass rather than waiting forever.
    const single = join(work, 'single.tar')
    await writeShard(single, [['only.png', await encoded(0, 'png')]])
    const lonely = await SampleStream.open({ kind: 'shards', units: [single] }, { seed: 1, bufferSize: 0, sampleStride: 4, sampleOffset: 3 })
    expect((await lonely.next()).key).toBe('only')
    expect(lonely.position()).toMatchObject({ epoch: 3, read: 4 })
    await lonely.close()
  })
})

describe('sample stream', () => {
  const source = (): DataSource => ({ kind: 'shards', units: shards })

  it('visits every sample once per epoch, in a seeded order that changes with the epoch', async () => {
    const s = await SampleStream.open(source(), { seed: 3, bufferSize: 0 })
    const first = (await draw(s, 20)).map((x) => x.key)
    const second = (await draw(s, 20)).map((x) => x.key)
    expect([...first].sort()).toEqual(Array.from({ length: 20 }, (_, i) => `s${String(i).padStart(5, '0')}`))
    expect([...second].sort()).toEqual([...first].sort())
    expect(second).not.toEqual(first)
    await s.close()
  })

  it('continues from a saved position exactly as the uninterrupted stream (shuffle buffer, epochs, draws)', async () => {
    const options = { seed: 11, bufferSize: 6 }
    const straight = await SampleStream.open(source(), options)
    const all = await draw(straight, 50)
    for (const cut of [1, 13, 27]) {
      const a = await SampleStream.open(source(), options)
      await draw(a, cut)
      const position = JSON.parse(JSON.stringify(a.position()))
      await a.close()
      const b = await SampleStream.open(source(), options, position)
      expect(await draw(b, 50 - cut), `cut at ${cut}`).toEqual(all.slice(cut))
      await b.close()
    }
    await straight.close()
  })

  it('gives each rank its own draws over a shard order common to all ranks; rank 0 draws as a single rank', async () => {
    const run = async (rank?: number) => {
      const s = await SampleStream.open(source(), { seed: 4, bufferSize: 0, sampleStride: 2, sampleOffset: 0, ...(rank === undefined ? {} : { rank }) })
      const got = await draw(s, 8)
      await s.close()
      return got
    }
    const [single, rank0, rank1] = [await run(), await run(0), await run(1)]
    expect(rank0).toEqual(single)
    expect(rank1.map((x) => x.key)).toEqual(rank0.map((x) => x.key))
    expect(rank1.map((x) => x.draws)).not.toEqual(rank0.map((x) => x.draws))
  })

  it('refuses a position that does not fit the data', async () => {
    const a = await SampleStream.open(source(), { seed: 1, bufferSize: 3 })
    await draw(a, 4)
    const position = a.position()
    await expect(SampleStream.open({ kind: 'shards', units: shards.slice(0, 2) }, { seed: 1, bufferSize: 3 }, position)).rejects.toMatchObject({ code: 'MARVEL_CHECKPOINT' })
  })

  it('skips and counts a corrupt member, a truncated shard, a sample without an image and an undecodable image', async () => {
    const dir = join(work, 'damaged')
    mkdirSync(dir, { recursive: true })
    const members = async (from: number, n: number) => {
      const out: Array<[string, Uint8Array]> = []
      for (let i = from; i < from + n; i++) out.push([`k${i}.png`, await encoded(i, 'png')])
      return out
    }
    // Broken member: the second member's header bytes overwritten.
    const broken = join(dir, 'broken.tar')
    await writeShard(broken, await members(0, 3))
    const bytes = readFileSync(broken)
    const second = 512 + Math.ceil((await encoded(0, 'png')).length / 512) * 512
    bytes.fill(0x41, second, second + 100)
    writeFileSync(broken, bytes)
    // Truncated: cut inside the last member.
    const truncated = join(dir, 'truncated.tar')
    await writeShard(truncated, await members(10, 3))
    const last = (await encoded(12, 'png')).length
    const lastHeader = readFileSync(truncated).length - 1024 - Math.ceil(last / 512) * 512 - 512
    truncateSync(truncated, lastHeader + 512 + Math.floor(last / 2))
    // Not an image, and a label without an image.
    const odd = join(dir, 'odd.tar')
    await writeShard(odd, [['t0.png', Buffer.from('this is text, not a PNG')], ['t1.cls', Buffer.from('1')], ...(await members(20, 2))])

    const s = await SampleStream.open({ kind: 'shards', units: [broken, truncated, odd] }, { seed: 5, bufferSize: 0, ordered: true })
    const batches = new BatchStream(s, { augmentation: { resizeShorterEdge: 32, cropSize: 32, randomCrop: true, randomFlip: true }, batchSize: 6 })
    const batch = await batches.next()
    await batches.close()
    expect(batch.keys).toEqual(['k0', 'k2', 'k10', 'k11', 'k20', 'k21'])
    expect(batch.position.skipped).toEqual({ corrupt_member: 1, truncated_shard: 1, no_image: 1, unreadable_image: 1 })
  })
})

describe('undecodable data', () => {
  it('a shard whose members all read but none decodes fails with MARVEL_IO instead of searching forever', { timeout: 20_000 }, async () => {
    const dir = join(work, 'undecodable')
    mkdirSync(dir, { recursive: true })
    const shard = join(dir, 'text.tar')
    await writeShard(shard, [0, 1, 2].map((i) => [`t${i}.png`, Buffer.from(`text ${i}, not a PNG`)]))
    const s = await SampleStream.open({ kind: 'shards', units: [shard] }, { seed: 5, bufferSize: 2 })
    const batches = new BatchStream(s, { augmentation: { resizeShorterEdge: 32, cropSize: 32, randomCrop: true, randomFlip: true }, batchSize: 4 })
    await expect(batches.next()).rejects.toMatchObject({ code: 'MARVEL_IO', message: expect.stringMatching(/^1000 images in a row failed to decode \(the last, \S*text\.tar@\d+: [\s\S]*\); the data \(1 shard\) holds no image that decodes$/) })
    await batches.close()
  })

  it('so does the validation batch of an eval folder of undecodable images', { timeout: 20_000 }, async () => {
    const dir = join(work, 'undecodable-eval')
    mkdirSync(dir, { recursive: true })
    for (const i of [0, 1]) writeFileSync(join(dir, `x${i}.png`), `not a png ${i}`)
    await expect(validationBatch(resolveSource(dir, 'dataset.params.eval_shards_path_or_url'), 4, 32)).rejects.toMatchObject({ code: 'MARVEL_IO', message: expect.stringContaining('holds no image that decodes') })
  })
})

describe('augmentation', () => {
  it('centre crop matches prepareImage; random crops stay inside and flips mirror', async () => {
    const png = await encoded(3, 'png', 48, 40)
    const aug = { resizeShorterEdge: 32, cropSize: 32, randomCrop: false, randomFlip: false }
    const centre = await augment(png, aug, [0.5, 0.5, 0.9])
    const reference = await prepareImage(png, { size: 32 })
    expect(Buffer.from(centre).equals(Buffer.from(reference.data))).toBe(true)
    // A large JPEG too: no shrink-on-load shortcut, so pretokenized codes describe exactly the training crop.
    const jpg = await encoded(5, 'jpg', 640, 480)
    const big = await augment(jpg, { ...aug, resizeShorterEdge: 64, cropSize: 64 }, [0.5, 0.5, 0.9])
    expect(Buffer.from(big).equals(Buffer.from((await prepareImage(jpg, { size: 64 })).data))).toBe(true)
    // 48x40 -> 38x32: crops at x = 0 and x = 6 are the resized image's edges.
    const left = await augment(png, { ...aug, randomCrop: true }, [0, 0, 0.9])
    const right = await augment(png, { ...aug, randomCrop: true }, [0.9999, 0, 0.9])
    expect(left.equals(right)).toBe(false)
    const flipped = await augment(png, { ...aug, randomFlip: true }, [0.5, 0.5, 0.1])
    const row = (img: Buffer, y: number, x: number) => [...img.subarray((y * 32 + x) * 3, (y * 32 + x) * 3 + 3)]
    expect(row(flipped, 5, 0)).toEqual(row(centre, 5, 31))
    await expect(augment(Buffer.from('no image'), aug, [0, 0, 0])).rejects.toMatchObject({ code: 'MARVEL_IMAGE' })
  })
})

describe('image folders', () => {
  it('read as a source: every image once per epoch, keys from relative paths, damage counted', async () => {
    const { imageFolder } = await import('./helpers/shards.js')
    const dir = join(work, 'folder')
    await imageFolder(dir, 6)
    writeFileSync(join(dir, 'cats', 'broken.png'), 'not a png')
    const source = resolveSource(dir, 'key')
    expect(source).toMatchObject({ kind: 'images', classes: ['cats', 'dogs'] })
    expect(source.units).toHaveLength(7)
    const s = await SampleStream.open(source, { seed: 2, bufferSize: 0 })
    const batches = new BatchStream(s, { augmentation: { resizeShorterEdge: 32, cropSize: 32, randomCrop: true, randomFlip: true }, batchSize: 6 })
    const batch = await batches.next()
    await batches.close()
    expect([...batch.keys].sort()).toEqual(['cats/img001', 'cats/img003', 'cats/img005', 'dogs/img000', 'dogs/img002', 'dogs/img004'])
    expect(batch.position.skipped).toEqual({ unreadable_image: 1 })
  })
})
