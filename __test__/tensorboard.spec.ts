import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import sharp from 'sharp'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { MarvelError } from '../src/index.js'
import { crc32c, maskedCrc32c } from '../src/train/crc32c.js'
import { decodeEvent, encodeEvent } from '../src/train/event-proto.js'
import type { TrainingSink } from '../src/train/log.js'
import { TensorBoardWriter, readTensorBoardEvents } from '../src/train/tensorboard.js'
import { frameRecord } from '../src/train/tfrecord.js'
import { bundleChild, childEnv } from './helpers/bundle.js'

let work: string
let png: Buffer

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'marvel-tensorboard-'))
  const pixels = Buffer.alloc(6 * 4 * 3, 0).map((_, i) => (i * 37) % 256)
  png = await sharp(pixels, { raw: { width: 6, height: 4, channels: 3 } }).png().toBuffer()
})

afterAll(() => rmSync(work, { recursive: true, force: true }))

describe('CRC-32C', () => {
  it('matches the published check values', () => {
    expect(crc32c(Buffer.from('123456789'))).toBe(0xe3069283)
    expect(crc32c(Buffer.alloc(0))).toBe(0)
    // RFC 3720 (iSCSI) appendix B.4.
    expect(crc32c(Buffer.alloc(32, 0))).toBe(0x8a9136aa)
    expect(crc32c(Buffer.alloc(32, 0xff))).toBe(0x62a8ab43)
    expect(crc32c(Uint8Array.from({ length: 32 }, (_, i) => i))).toBe(0x46dd794e)
    expect(crc32c(Uint8Array.from({ length: 32 }, (_, i) => 31 - i))).toBe(0x113fdb5c)
  })

  it('masks as TensorFlow: rotate right 15, add 0xa282ead8', () => {
    const crc = 0xe3069283
    expect(maskedCrc32c(Buffer.from('123456789'))).toBe((((crc >>> 15) | (crc << 17)) + 0xa282ead8) >>> 0)
    // The length field of an empty record: eight zero bytes.
    const record = frameRecord(new Uint8Array(0))
    expect(record.length).toBe(16)
    expect(record.readUInt32LE(8)).toBe(maskedCrc32c(Buffer.alloc(8)))
  })
})

describe('Event protobufs', () => {
  it('encode the fields TensorBoard reads, with the wire bytes of protoc', () => {
    const bytes = encodeEvent({ wallTime: 1.5, step: 300, fileVersion: 'brain.Event:2' })
    // field 1 fixed64 (0x09) 1.5, field 2 varint (0x10) 300 = ac 02, field 3 length-delimited (0x1a).
    expect([...bytes.subarray(0, 9)]).toEqual([0x09, 0, 0, 0, 0, 0, 0, 0xf8, 0x3f])
    expect([...bytes.subarray(9, 12)]).toEqual([0x10, 0xac, 0x02])
    expect(bytes.subarray(12).toString('latin1')).toBe('\x1a\x0dbrain.Event:2')
  })

  it('round-trip steps beyond 32 bits and skip fields they do not know', () => {
    const step = 2 ** 40 + 7
    const encoded = encodeEvent({ wallTime: 2, step, summary: [{ tag: 'a', simpleValue: 0.25 }] })
    // An unknown field 9 (varint) before the known ones, as a newer writer might add.
    const withExtra = Buffer.concat([Buffer.from([0x48, 0x05]), encoded])
    const e = decodeEvent(withExtra)
    expect(e.step).toBe(step)
    expect(e.summary).toEqual([{ tag: 'a', simpleValue: 0.25 }])
  })
})

describe('TensorBoardWriter', () => {
  it('writes scalars and a PNG that readTensorBoardEvents reads back with every CRC checked', async () => {
    const dir = join(work, 'run')
    const sink: TrainingSink = await TensorBoardWriter.open(dir)
    sink.scalars(1, { 'loss/total': 0.75, lr: 1e-4 })
    sink.scalars(2, { 'loss/total': 0.5, lr: 2e-4, 'psnr/depth_1': 21.3 })
    sink.image(2, 'reconstructions', png)
    sink.scalars(3, { 'loss/total': Number.NaN })
    await sink.close()
    const files = readdirSync(dir)
    expect(files).toHaveLength(1)
    expect(files[0]).toMatch(/^events\.out\.tfevents\.\d{10}\.[^/]+\.\d+\.\d+$/)
    expect(files[0]).toContain(`.${process.pid}.`)
    const read = await readTensorBoardEvents(join(dir, files[0]))
    expect(read.fileVersion).toBe('brain.Event:2')
    expect(read.truncated).toBe(false)
    expect(read.events).toBe(5)
    const scalars = read.scalars.map(({ step, tag, value }) => [step, tag, value])
    expect(scalars).toEqual([
      [1, 'loss/total', 0.75],
      [1, 'lr', Math.fround(1e-4)],
      [2, 'loss/total', 0.5],
      [2, 'lr', Math.fround(2e-4)],
      [2, 'psnr/depth_1', Math.fround(21.3)],
      [3, 'loss/total', Number.NaN],
    ])
    expect(read.images).toHaveLength(1)
    const [img] = read.images
    expect([img.step, img.tag, img.width, img.height, img.colorspace]).toEqual([2, 'reconstructions', 6, 4, 3])
    expect(img.png.equals(png)).toBe(true)
    const now = Date.now() / 1000
    expect(read.scalars.every((s) => s.wallTime > now - 60 && s.wallTime <= now)).toBe(true)
  })

  it('detects a corrupted byte anywhere in a record, and reads a file cut mid-record up to the cut', async () => {
    const dir = join(work, 'corrupt')
    const writer = await TensorBoardWriter.open(dir)
    writer.scalars(1, { loss: 1 })
    writer.image(1, 'grid', png)
    await writer.close()
    const file = writer.file
    const good = readFileSync(file)
    // The version record is the first; flip a byte in the data of the image record, then in its length.
    const versionRecord = good.readUInt32LE(0) + 16
    const scalarRecord = good.readUInt32LE(versionRecord) + 16
    const imageAt = versionRecord + scalarRecord
    for (const [at, what] of [[imageAt + 12 + 40, /record 2 at byte \d+: the data's CRC does not match/], [imageAt + 1, /record 2 at byte \d+: the length's CRC does not match/]] as const) {
      const bad = Buffer.from(good)
      bad[at] ^= 0x10
      const path = join(dir, `bad-${at}`)
      writeFileSync(path, bad)
      const err = await readTensorBoardEvents(path).catch((e) => e)
      expect(err).toBeInstanceOf(MarvelError)
      expect(err.code).toBe('MARVEL_IO')
      expect(err.message).toMatch(what)
      expect(err.message).toContain(path)
    }
    const cut = join(dir, 'cut')
    writeFileSync(cut, good.subarray(0, good.length - 30))
    const read = await readTensorBoardEvents(cut)
    expect(read.truncated).toBe(true)
    expect(read.scalars.map((s) => s.value)).toEqual([1])
    expect(read.images).toEqual([])
  })

  it('writes periodically while open, so a running job can be watched', async () => {
    const writer = await TensorBoardWriter.open(join(work, 'periodic'), { flushMs: 20 })
    writer.scalars(7, { loss: 3 })
    expect((await readTensorBoardEvents(writer.file)).scalars).toEqual([])
    await new Promise((r) => setTimeout(r, 200))
    expect((await readTensorBoardEvents(writer.file)).scalars.map((s) => [s.step, s.value])).toEqual([[7, 3]])
    await writer.close()
    await writer.close()
    expect(() => writer.scalars(8, { loss: 1 })).toThrow(/closed/)
  })

  it('leaves only whole records when the process is killed while logging', async () => {
    const child = await bundleChild('tensorboard-child.ts', work)
    const dir = join(work, 'killed')
    const proc = spawn(process.execPath, [child, dir], { env: { ...process.env, ...childEnv }, stdio: ['ignore', 'pipe', 'inherit'] })
    const file = await new Promise<string>((resolve) => proc.stdout.once('data', (d: Buffer) => resolve(d.toString().trim())))
    await new Promise((r) => setTimeout(r, 300))
    proc.kill('SIGKILL')
    await new Promise((r) => proc.once('exit', r))
    const read = await readTensorBoardEvents(file)
    expect(read.scalars.length).toBeGreaterThan(100)
    // Steps were logged in order, two scalars each: every complete record is there, none damaged.
    const steps = read.scalars.filter((s) => s.tag === 'loss/total').map((s) => s.step)
    expect(steps).toEqual(steps.map((_, i) => i))
  })

  it('refuses bad arguments with coded errors', async () => {
    await expect(TensorBoardWriter.open('')).rejects.toMatchObject({ code: 'MARVEL_INVALID_ARGUMENT' })
    await expect(TensorBoardWriter.open(join(work, 'o'), { flush: 1 } as never)).rejects.toThrow(/unknown option "flush"/)
    writeFileSync(join(work, 'a-file'), '')
    await expect(TensorBoardWriter.open(join(work, 'a-file', 'logs'))).rejects.toMatchObject({ code: 'MARVEL_IO' })
    const w = await TensorBoardWriter.open(join(work, 'args'))
    expect(() => w.scalars(-1, { a: 1 })).toThrow(/expected step to be an integer/)
    expect(() => w.scalars(1.5, { a: 1 })).toThrow(/expected step to be an integer/)
    expect(() => w.scalars(1, { a: '1' as never })).toThrow(/expected values\["a"\] to be a number but received "1"/)
    expect(() => w.scalars(1, null as never)).toThrow(/expected values to be an object/)
    expect(() => w.image(1, 'grid', Buffer.from('not a png at all, not a png at all'))).toThrow(/expected png to be an encoded PNG image/)
    expect(() => w.image(1, '', png)).toThrow(/expected tag to be a non-empty string/)
    await w.close()
    expect((await readTensorBoardEvents(w.file)).events).toBe(1)
    await expect(readTensorBoardEvents(join(work, 'missing'))).rejects.toMatchObject({ code: 'MARVEL_IO' })
  })
})
