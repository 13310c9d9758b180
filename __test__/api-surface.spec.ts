/**
 * The public surface, table-driven: every exported function, static method and method is called with each of its
 * arguments replaced in turn by a value of the wrong kind (null, undefined, a number, NaN, a boolean, a string with a
 * NUL byte, an empty object, an empty array, an array with a hole, a function). Each call must either work (an
 * optional argument left out) or fail with a MarvelError carrying a documented code — never a bare TypeError from
 * deep inside. Every options object must refuse null and an unknown key. A guard lists the runtime exports, so an
 * export added without a row here fails the suite.
 */
import { readFileSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

import sharp from 'sharp'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import * as api from '../src/index.js'
import { MarvelError, MaskgitVqgan, Tokenizer, Tokens, Trainer } from '../src/index.js'
import { hasParity, parityDir } from './helpers/fixtures.js'
import { imageFolder, tinyYaml, writeShards } from './helpers/shards.js'
import { tinyConfig, tinyModel } from './helpers/models.js'
import { images, tinyTrainingConfig } from './helpers/training.js'

const root = fileURLToPath(new URL('..', import.meta.url))
const union = /export type MarvelErrorCode =([\s\S]*?)\n\n/.exec(readFileSync(join(root, 'src', 'errors.ts'), 'utf8'))?.[1] ?? ''
const DOCUMENTED = new Set([...union.matchAll(/'(MARVEL_[A-Z_]+)'/g)].map((m) => m[1]))
/** Documented, but each means marvel has a bug. */
const BUG_CODES = new Set(['MARVEL_PANIC', 'MARVEL_INTERNAL'])

// eslint-disable-next-line no-sparse-arrays
const WRONG: Array<[string, unknown]> = [
  ['null', null],
  ['undefined', undefined],
  ['42', 42],
  ['NaN', Number.NaN],
  ['true', true],
  ['"x\\0"', 'x\0'],
  ['{}', {}],
  ['[]', []],
  // eslint-disable-next-line no-sparse-arrays
  ['[ , 1]', [, 1]],
  ['a function', () => 0],
]

interface Row {
  /** The arguments of a call that works (or fails only for a reason of its own, such as an offline hub). */
  args: () => unknown[]
  call: (...args: unknown[]) => unknown
  /** Position of the options object, when there is one. */
  options?: number
}

/** Exports that are not calls to check, and why. */
const NOT_CALLS: Record<string, string> = {
  MarvelError: 'the error class marvel throws',
  HubError: 'the error class the hub functions throw',
}

let work: string
let model: string
let titok: string
let tok: Tokenizer
let tokens: Tokens
let vq: MaskgitVqgan | undefined
let trainer: Trainer
let png: Buffer
const savedEnv = { offline: process.env.HF_HUB_OFFLINE, cache: process.env.HF_HUB_CACHE }

const rgb = (side: number) => ({ data: new Uint8Array(side * side * 3).map((_, i) => (i * 13) % 256), width: side, height: side })
const z = () => ({ data: new Float32Array([0.5, -0.5, 0.25, -0.25]), shape: [1, 2, 2] })
const evalReport = (): api.EvalReport => ({
  images: 2,
  imageSize: 32,
  numTokens: 4,
  bitsPerToken: 6,
  rfid: { available: false, reason: 'no weights' },
  depths: [{ depth: 1, bitsPerImage: 24, bytesPerImage: 3, psnr: 20, ssim: 0.5, msSsim: null, distinctCodes: 2, codebookUsage: 2 / 64, entropyBits: 1, rfid: null, codecs: [] }],
})

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'marvel-surface-'))
  // The hub rows must never reach the network.
  process.env.HF_HUB_OFFLINE = '1'
  process.env.HF_HUB_CACHE = join(work, 'hub')
  model = await tinyModel({ imageSize: 32, depths: 2 })
  titok = await tinyModel({ quantizeMode: 'vq', imageSize: 32 })
  tok = await Tokenizer.fromPretrained(model)
  tokens = await tok.encode(rgb(32))
  png = await sharp(Buffer.from(rgb(32).data), { raw: { width: 32, height: 32, channels: 3 } }).png().toBuffer()
  if (hasParity) vq = await MaskgitVqgan.fromPretrained(join(parityDir, 'maskgit_vqgan'))
  trainer = await Trainer.create(tinyTrainingConfig(), { seed: 1 })
  await writeShards(join(work, 'shards'), 1, 2)
  await imageFolder(join(work, 'images'), 2)
})

afterAll(() => {
  tok?.dispose()
  vq?.dispose()
  trainer?.dispose()
  for (const [key, value] of [['HF_HUB_OFFLINE', savedEnv.offline], ['HF_HUB_CACHE', savedEnv.cache]] as const) {
    if (value === undefined) delete process.env[key]
    else process.env[key] = value
  }
})

const ROWS: Record<string, Row> = {
  encodePng: { args: () => [rgb(16)], call: (a) => api.encodePng(a as never) },
  writePng: { args: () => [rgb(16), join(work, 'w.png')], call: (a, b) => api.writePng(a as never, b as never) },
  readImage: { args: () => [png], call: (a) => api.readImage(a as never) },
  prepareImage: { args: () => [png, { size: 16 }], call: (a, b) => api.prepareImage(a as never, b as never), options: 1 },
  compare: { args: () => [rgb(16), rgb(16)], call: (a, b) => api.compare(a as never, b as never) },
  lfqQuantize: { args: () => [z(), { depth: 2 }], call: (a, b) => api.lfqQuantize(a as never, b as never), options: 1 },
  lfqLosses: { args: () => [z(), { depth: 1 }], call: (a, b) => api.lfqLosses(a as never, b as never), options: 1 },
  createRandomModel: { args: () => [join(work, 'random'), tinyConfig({ imageSize: 32 }), 1], call: (a, b, c) => api.createRandomModel(a as never, b as never, c as never) },
  marvelFromTitok: { args: () => [titok, join(work, 'converted'), { depth: 2 }], call: (a, b, c) => api.marvelFromTitok(a as never, b as never, c as never), options: 2 },
  getNumThreads: { args: () => [], call: () => api.getNumThreads() },
  setNumThreads: { args: () => [api.getNumThreads()], call: (a) => api.setNumThreads(a as never) },
  createProgressPrinter: { args: () => [{ isTTY: false, write: () => true }], call: (a) => api.createProgressPrinter(a as never) },
  hubDownload: { args: () => ['org/model', 'config.json', { offline: true }], call: (a, b, c) => api.hubDownload(a as never, b as never, c as never), options: 2 },
  snapshotDownload: { args: () => ['org/model', ['config.json'], { offline: true }], call: (a, b, c) => api.snapshotDownload(a as never, b as never, c as never), options: 2 },
  resolveModelFiles: { args: () => ['org/model', { offline: true }], call: (a, b) => api.resolveModelFiles(a as never, b as never), options: 1 },
  evaluate: { args: () => [tok, [rgb(32)], { codecs: false, inception: null }], call: (a, b, c) => api.evaluate(a as never, b as never, c as never), options: 2 },
  frechetDistance: { args: () => [new Float32Array([1, 2, 3, 5]), new Float32Array([0, 1, 4, 4]), 2], call: (a, b, c) => api.frechetDistance(a as never, b as never, c as never) },
  parseMetricsLog: { args: () => ['{"step": 1, "loss": 0.5}\n'], call: (a) => api.parseMetricsLog(a as never) },
  trainingChart: { args: () => [api.parseMetricsLog('{"step": 1, "loss": 0.5}\n'), { width: 400 }], call: (a, b) => api.trainingChart(a as never, b as never), options: 1 },
  rateDistortionChart: { args: () => [evalReport(), { width: 400 }], call: (a, b) => api.rateDistortionChart(a as never, b as never), options: 1 },
  renderChart: { args: () => [{ width: 300, panels: [{ title: 't', xLabel: 'x', series: [{ label: 's', points: [[0, 1], [1, 2]] }] }] }], call: (a) => api.renderChart(a as never) },

  'Tokenizer.fromPretrained': { args: () => [model, {}], call: (a, b) => Tokenizer.fromPretrained(a as never, b as never).then((t) => t.dispose()), options: 1 },
  'Tokenizer.inspect': { args: () => [model, {}], call: (a, b) => Tokenizer.inspect(a as never, b as never), options: 1 },
  'Tokenizer#encode': { args: () => [rgb(32), {}], call: (a, b) => tok.encode(a as never, b as never), options: 1 },
  'Tokenizer#decode': { args: () => [tokens, {}], call: (a, b) => tok.decode(a as never, b as never), options: 1 },
  'Tokenizer#decodeFloat': { args: () => [tokens, {}], call: (a, b) => tok.decodeFloat(a as never, b as never), options: 1 },
  'Tokenizer#reconstruct': { args: () => [rgb(32), {}], call: (a, b) => tok.reconstruct(a as never, b as never), options: 1 },
  'Tokenizer#dispose': { args: () => [], call: () => undefined },

  'new Tokens': { args: () => [new Uint32Array(4), { batch: 1, depth: 1, numTokens: 4 }, 6], call: (a, b, c) => new Tokens(a as never, b as never, c as never) },
  'Tokens.concat': { args: () => [[tokens, tokens]], call: (a) => Tokens.concat(a as never) },
  'Tokens.fromBytes': { args: () => [tokens.toBytes()], call: (a) => Tokens.fromBytes(a as never) },
  'Tokens.fromJSON': { args: () => [tokens.toJSON()], call: (a) => Tokens.fromJSON(a as never) },
  'Tokens#slice': { args: () => [1], call: (a) => tokens.slice(a as never) },
  'Tokens#image': { args: () => [0], call: (a) => tokens.image(a as never) },
  'Tokens#toBytes': { args: () => [], call: () => tokens.toBytes() },
  'Tokens#toJSON': { args: () => [], call: () => tokens.toJSON() },

  'MaskgitVqgan.fromPretrained': { args: () => [join(parityDir, 'maskgit_vqgan')], call: (a) => MaskgitVqgan.fromPretrained(a as never).then((m) => m.dispose()) },
  'MaskgitVqgan#encode': { args: () => [rgb(256), {}], call: (a, b) => vq!.encode(a as never, b as never), options: 1 },
  'MaskgitVqgan#decode': { args: () => [new Uint32Array(256)], call: (a) => vq!.decode(a as never) },
  'MaskgitVqgan#decodeFloat': { args: () => [new Uint32Array(256)], call: (a) => vq!.decodeFloat(a as never) },
  'MaskgitVqgan#dispose': { args: () => [], call: () => undefined },

  'Trainer.create': { args: () => [tinyTrainingConfig(), { seed: 2 }], call: (a, b) => Trainer.create(a as never, b as never).then((t) => t.dispose()), options: 1 },
  'Trainer.resume': { args: () => [join(work, 'ckpt')], call: (a) => Trainer.resume(a as never).then((t) => t.dispose()) },
  'Trainer#step': { args: () => [images(1), {}], call: (a, b) => trainer.step(a as never, b as never), options: 1 },
  'Trainer#save': { args: () => [join(work, 'ckpt'), { index: 1 }], call: (a, b) => trainer.save(a as never, b as never) },
  'Trainer#exportModel': { args: () => [join(work, 'exported'), {}], call: (a, b) => trainer.exportModel(a as never, b as never), options: 1 },
  'Trainer#gradients': { args: () => [images(1), {}], call: (a, b) => trainer.gradients(a as never, b as never), options: 1 },
  'Trainer#applyGradients': { args: () => [new Float32Array(trainer.gradientLength)], call: (a) => trainer.applyGradients(a as never) },
  'Trainer#reconstruct': { args: () => [images(1), {}], call: (a, b) => trainer.reconstruct(a as never, b as never), options: 1 },
  'Trainer#dispose': { args: () => [], call: () => undefined },
  // On a CPU-only addon both answer MARVEL_CUDA_UNAVAILABLE, a documented code.
  'Trainer.ncclId': { args: () => [], call: () => Trainer.ncclId() },
  'Trainer#joinNccl': { args: () => ['0'.repeat(256), 0, 1], call: (a, b, c) => trainer.joinNccl(a as never, b as never, c as never) },

  makeShards: { args: () => [join(work, 'images'), { out: join(work, 'made'), perShard: 1 }], call: (a, b) => api.makeShards(a as never, b as never), options: 1 },
  loadTrainingConfig: { args: () => [tinyYaml, ['training.max_train_steps=1']], call: (a, b) => api.loadTrainingConfig(a as never, b as never) },
  train: {
    args: () => [
      api.loadTrainingConfig(tinyYaml, [`dataset.params.train_shards_path_or_url=${join(work, 'shards')}`, `experiment.output_dir=${join(work, 'run')}`, 'training.max_train_steps=1']),
      { progress: false, resume: true },
    ],
    call: (a, b) => api.train(a as never, b as never),
    options: 1,
  },
}

/** Rows that need the MaskGIT-VQGAN fixture model. */
const needsParity = (name: string) => name.startsWith('MaskgitVqgan')

async function outcome(call: () => unknown): Promise<unknown> {
  try {
    await call()
    return 'ok'
  } catch (e) {
    return e
  }
}

function describeOutcome(e: unknown): string {
  if (e === 'ok') return 'ok'
  if (e instanceof MarvelError) return `${e.code}: ${e.message}`
  return `${(e as Error)?.constructor?.name ?? typeof e}: ${(e as Error)?.message ?? String(e)}`
}

/** Every callable the package exports at run time: functions, static methods, methods (getters are not calls). */
function exportedCalls(): string[] {
  const names: string[] = []
  for (const [name, value] of Object.entries(api)) {
    if (name in NOT_CALLS || typeof value !== 'function') continue
    if (!/^[A-Z]/.test(name)) {
      names.push(name)
      continue
    }
    names.push(`new ${name}`)
    for (const key of Object.getOwnPropertyNames(value)) {
      if (typeof Object.getOwnPropertyDescriptor(value, key)?.value === 'function') names.push(`${name}.${key}`)
    }
    for (const key of Object.getOwnPropertyNames(value.prototype)) {
      if (key !== 'constructor' && typeof Object.getOwnPropertyDescriptor(value.prototype, key)?.value === 'function') names.push(`${name}#${key}`)
    }
  }
  return names.sort()
}

describe('the public API surface', () => {
  it('every exported call has a row here (add one for each new export)', () => {
    // Tokenizer, MaskgitVqgan and Trainer are built by their static factories only: their constructors are private.
    const rows = new Set([...Object.keys(ROWS), 'new Tokenizer', 'new MaskgitVqgan', 'new Trainer'])
    expect(exportedCalls().filter((name) => !rows.has(name))).toEqual([])
  })

  for (const [name, row] of Object.entries(ROWS)) {
    const skip = needsParity(name) && !hasParity
    it.skipIf(skip)(`${name}: a wrong value in any argument is a coded MarvelError, never a bare TypeError${skip ? ' (skipped: no parity fixtures for the MaskGIT-VQGAN model)' : ''}`, async () => {
      const problems: string[] = []
      const base = row.args()
      for (let i = 0; i < base.length; i++) {
        for (const [label, wrong] of WRONG) {
          const args = row.args()
          args[i] = wrong
          const e = await outcome(() => row.call(...args))
          const fine = e === 'ok' || (e instanceof MarvelError && DOCUMENTED.has(e.code) && !BUG_CODES.has(e.code))
          if (!fine) problems.push(`argument ${i} = ${label}: ${describeOutcome(e)}`)
        }
      }
      expect(problems).toEqual([])
    })

    if (row.options === undefined) continue
    it.skipIf(skip)(`${name}: options null, not an object, or with an unknown key are refused with MARVEL_INVALID_ARGUMENT${skip ? ' (skipped: no parity fixtures)' : ''}`, async () => {
      const problems: string[] = []
      for (const [label, wrong, message] of [
        ['null', null, /expected options to be an object but received null/],
        ['7', 7, /expected options to be an object but received number 7/],
        ['{ depths: 1 }', { depths: 1 }, /unknown option "depths"/],
        ['{ bogus: true }', { bogus: true }, /unknown option "bogus"; accepted: /],
      ] as const) {
        const args = row.args()
        args[row.options!] = wrong
        const e = await outcome(() => row.call(...args))
        if (!(e instanceof MarvelError && e.code === 'MARVEL_INVALID_ARGUMENT' && message.test(e.message))) {
          problems.push(`options = ${label}: ${describeOutcome(e)}`)
        }
      }
      expect(problems).toEqual([])
    })
  }
})

describe('renamed options are named, not ignored', () => {
  it('decode({ depths: 1 }) and marvelFromTitok({ depths: 2 }) suggest depth instead of using every depth', async () => {
    const decoded = await outcome(() => tok.decode(tokens, { depths: 1 } as never))
    expect(decoded).toBeInstanceOf(MarvelError)
    expect((decoded as MarvelError).message).toBe('decode: unknown option "depths" (did you mean depth?); accepted: depth')
    const out = join(work, 'never-written')
    const converted = await outcome(() => api.marvelFromTitok(titok, out, { depths: 2 } as never))
    expect((converted as MarvelError).message).toBe('marvelFromTitok: unknown option "depths" (did you mean depth?); accepted: depth')
  })

  it('the calls the review found throwing bare TypeErrors now name the argument', async () => {
    const cases: Array<[() => unknown, RegExp]> = [
      [() => api.lfqLosses(null as never, { depth: 1 }), /^lfqLosses: expected z\.data to be a Float32Array but received undefined/],
      [() => api.lfqLosses({ data: new Float32Array(4) } as never, { depth: 1 }), /^lfqLosses: expected z\.shape to be an array of non-negative integers but received undefined/],
      [() => api.createProgressPrinter(null as never), /^createProgressPrinter: expected stream to be a writable stream/],
      // eslint-disable-next-line no-sparse-arrays
      [() => tok.encode([rgb(32), , rgb(32)] as never), /^encode: expected images\[1\] to be a path, an encoded image .* but received undefined/],
      [() => Tokenizer.fromPretrained(model, null as never), /^fromPretrained: expected options to be an object but received null/],
      [() => Tokenizer.inspect(model, null as never), /^inspect: expected options to be an object but received null/],
    ]
    for (const [call, message] of cases) {
      const e = await outcome(call)
      expect(e, String(call)).toBeInstanceOf(MarvelError)
      expect((e as MarvelError).code).toBe('MARVEL_INVALID_ARGUMENT')
      expect((e as MarvelError).message).toMatch(message)
    }
  })

  it.skipIf(!hasParity)(`MaskgitVqgan.encode(img, null) is refused like Tokenizer's${hasParity ? '' : ' (skipped: no parity fixtures)'}`, async () => {
    const e = await outcome(() => vq!.encode(rgb(256), null as never))
    expect((e as MarvelError).message).toBe('encode: expected options to be an object but received null')
  })
})
