/**
 * Fuzz suite: seeded mutations of every kind of input marvel reads — config.json, model.safetensors,
 * pytorch_model.bin, images (PNG, JPEG, WebP, TIFF, GIF) and token bytes — fed through the public API in a child
 * process (helpers/fuzz-worker.mjs), so that a crash fails the test instead of killing the runner. Every input must
 * either work or fail with a MarvelError whose code is documented (and is not MARVEL_PANIC / MARVEL_INTERNAL,
 * which mean a bug), within a per-input time limit.
 *
 * MARVEL_FUZZ_COUNT (default 2000 per class) and MARVEL_FUZZ_SEED (default 1) change the run;
 * MARVEL_FUZZ_ONLY=bin:17,image:3 replays single inputs. A failure names class, seed and index, and writes the
 * input to a file for reproduction.
 */
import { spawn, execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

import sharp from 'sharp'
import { beforeAll, describe, expect, it } from 'vitest'

import { MarvelError, Tokenizer, createRandomModel } from '../src/index.js'
import { binBytes, mutateInput, readSeeds } from './helpers/fuzz-mutate.mjs'
import { tinyConfig } from './helpers/models.js'

const root = fileURLToPath(new URL('..', import.meta.url))
const dist = join(root, 'dist', 'index.js')
const worker = join(root, '__test__', 'helpers', 'fuzz-worker.mjs')

const COUNT = Number(process.env.MARVEL_FUZZ_COUNT ?? 2000)
const SEED = Number(process.env.MARVEL_FUZZ_SEED ?? 1)
/** Generous for a 2-core CI runner: the slowest input (a 1M-opcode pickle) takes about 0.3 s here. */
const INPUT_TIMEOUT_MS = 20_000
const CLASSES = ['config', 'safetensors', 'bin', 'image', 'tokens'] as const
type FuzzClass = (typeof CLASSES)[number]

/** The documented codes, read from the `MarvelErrorCode` union in src/errors.ts. */
const errorsSource = readFileSync(join(root, 'src', 'errors.ts'), 'utf8')
const union = /export type MarvelErrorCode =([\s\S]*?)\n\n/.exec(errorsSource)?.[1] ?? ''
const DOCUMENTED = new Set([...union.matchAll(/'(MARVEL_[A-Z_]+)'/g)].map((m) => m[1]))
/** Documented, but each means marvel has a bug: a fuzz input must never produce them. */
const BUG_CODES = new Set(['MARVEL_PANIC', 'MARVEL_INTERNAL'])

function only(klass: FuzzClass): number[] | undefined {
  const spec = process.env.MARVEL_FUZZ_ONLY
  if (!spec) return undefined
  return spec
    .split(',')
    .filter((s) => s.startsWith(`${klass}:`))
    .map((s) => Number(s.slice(klass.length + 1)))
}

interface Failure {
  index: number
  what: string
}

interface Summary {
  outcomes: Record<string, number>
  failures: Failure[]
  inputs: number
  seconds: number
  slowestMs: number
}

let seedDir: string

function newestMtime(path: string): number {
  const s = statSync(path)
  if (!s.isDirectory()) return s.mtimeMs
  return Math.max(0, ...readdirSync(path).map((f) => newestMtime(join(path, f))))
}

/** A crashed or hung worker is replaced, from the next input on, this many times before the class gives up. */
const MAX_RESTARTS = 100

/**
 * Runs one class in child processes; every way a child can go wrong becomes a Failure naming the input. A child
 * that dies or hangs is replaced by one that continues after the input that killed it, so one run lists them all.
 */
async function runClass(klass: FuzzClass, indices: number[] | undefined): Promise<Summary> {
  const summary: Summary = { outcomes: {}, failures: [], inputs: 0, seconds: 0, slowestMs: 0 }
  const t0 = Date.now()
  let from = -1 // the unmutated seed first
  for (let restarts = 0; restarts <= MAX_RESTARTS; restarts++) {
    const stoppedAt = await runWorker(klass, indices, from, summary)
    if (stoppedAt === undefined) break
    from = stoppedAt + 1
  }
  summary.seconds = (Date.now() - t0) / 1000
  return summary
}

/** One worker from input `from`; returns the input it died or hung on, if it did. */
function runWorker(klass: FuzzClass, indices: number[] | undefined, from: number, summary: Summary): Promise<number | undefined> {
  const job = { klass, seed: SEED, count: COUNT, only: indices, from, seedDir, dist: pathToFileURL(dist).href }
  const child = spawn(process.execPath, [worker, JSON.stringify(job)], { stdio: ['ignore', 'pipe', 'pipe'] })
  const { outcomes, failures } = summary
  let current: { index: number; since: number } | undefined
  let buffered = ''
  let stderr = ''
  const onLine = (text: string) => {
    const msg = JSON.parse(text) as { start?: number; i?: number; outcome?: string; ms?: number; message?: string }
    if (msg.start !== undefined) {
      current = { index: msg.start, since: Date.now() }
      return
    }
    current = undefined
    const index = msg.i!
    const outcome = msg.outcome!
    summary.slowestMs = Math.max(summary.slowestMs, msg.ms!)
    if (index < 0) {
      if (outcome !== 'ok') failures.push({ index, what: `the unmutated seed fails: ${outcome} ${msg.message}` })
      return
    }
    summary.inputs++
    outcomes[outcome] = (outcomes[outcome] ?? 0) + 1
    if (outcome === 'uncoded') failures.push({ index, what: `uncoded error: ${msg.message}` })
    else if (outcome !== 'ok' && (!DOCUMENTED.has(outcome) || BUG_CODES.has(outcome))) {
      failures.push({ index, what: `${outcome}: ${msg.message}` })
    }
    if (msg.ms! > INPUT_TIMEOUT_MS) failures.push({ index, what: `took ${msg.ms} ms` })
  }
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    buffered += chunk
    let nl
    while ((nl = buffered.indexOf('\n')) >= 0) {
      onLine(buffered.slice(0, nl))
      buffered = buffered.slice(nl + 1)
    }
  })
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
    stderr = (stderr + chunk).slice(-2000)
  })
  let hung: Failure | undefined
  const watchdog = setInterval(() => {
    if (current && Date.now() - current.since > INPUT_TIMEOUT_MS && !hung) {
      hung = { index: current.index, what: `hangs: no result after ${INPUT_TIMEOUT_MS} ms` }
      child.kill('SIGKILL')
    }
  }, 500)
  return new Promise((resolve) => {
    child.on('close', (code, signal) => {
      clearInterval(watchdog)
      if (hung) {
        failures.push(hung)
        resolve(hung.index)
      } else if (code !== 0 || signal) {
        const at = current ? `while running input ${current.index}` : 'outside any input'
        const tail = stderr.trim().split('\n').slice(-6).join(' | ')
        failures.push({ index: current?.index ?? -2, what: `the process died (${signal ?? `exit code ${code}`}) ${at}; stderr: ${tail}` })
        // Outside an input the worker itself is broken: no point going on.
        resolve(current ? current.index : undefined)
      } else {
        resolve(undefined)
      }
    })
  })
}

/** Writes each failing input to a file and describes the failures so that each can be replayed. */
async function report(klass: FuzzClass, failures: Failure[]): Promise<string> {
  const seeds = await readSeeds(seedDir)
  const dir = join(tmpdir(), 'marvel-fuzz-repro')
  mkdirSync(dir, { recursive: true })
  return failures
    .slice(0, 100)
    .map(({ index, what }) => {
      let file = ''
      if (index >= 0) {
        file = join(dir, `${klass}-seed${SEED}-${index}.bin`)
        writeFileSync(file, mutateInput(klass, seeds, SEED, index))
      }
      return `${klass} seed ${SEED} input ${index}: ${what}${file ? ` [input: ${file}; replay: MARVEL_FUZZ_SEED=${SEED} MARVEL_FUZZ_ONLY=${klass}:${index}]` : ''}`
    })
    .join('\n')
}

beforeAll(async () => {
  const stale = !existsSync(dist) || statSync(dist).mtimeMs < newestMtime(join(root, 'src'))
  if (stale) execFileSync('npx', ['tsup'], { cwd: root, stdio: 'pipe' })

  // Seeds: a tiny two-stage MARVEL model at 64 px (every weight kind: ViTs, LFQ, pixel codebook and decoder), the
  // same weights as a PyTorch zip, images in five formats, and the token bytes of one image.
  seedDir = mkdtempSync(join(tmpdir(), 'marvel-fuzz-seeds-'))
  const model = join(seedDir, 'model')
  await createRandomModel(model, tinyConfig({ imageSize: 64, twoStage: true, depths: 3 }), 11)
  mkdirSync(join(seedDir, 'images'))
  const [w, h] = [40, 48]
  const pixels = Buffer.alloc(w * h * 3)
  for (let i = 0; i < pixels.length; i++) pixels[i] = (i * 37 + ((i / 3 / w) | 0) * 11) % 256
  const image = () => sharp(pixels, { raw: { width: w, height: h, channels: 3 } })
  await image().png().toFile(join(seedDir, 'images', '0.png'))
  await image().jpeg({ quality: 90 }).toFile(join(seedDir, 'images', '1.jpg'))
  await image().webp({ quality: 90 }).toFile(join(seedDir, 'images', '2.webp'))
  await image().tiff().toFile(join(seedDir, 'images', '3.tiff'))
  await image().gif().toFile(join(seedDir, 'images', '4.gif'))
  const tok = await Tokenizer.fromPretrained(model)
  const tokens = await tok.encode(join(seedDir, 'images', '0.png'))
  writeFileSync(join(seedDir, 'tokens.bin'), tokens.toBytes())
  tok.dispose()
})

describe('fuzz: mutated inputs never crash, hang or throw an uncoded error', () => {
  it('the documented codes are read from src/errors.ts', () => {
    expect(DOCUMENTED.has('MARVEL_CONFIG') && DOCUMENTED.has('MARVEL_CHECKPOINT') && DOCUMENTED.has('MARVEL_IMAGE')).toBe(true)
  })

  it('the .bin seed writer makes a checkpoint that loads to the same model as the safetensors', async () => {
    const seeds = await readSeeds(seedDir)
    const dir = mkdtempSync(join(tmpdir(), 'marvel-fuzz-bin-'))
    writeFileSync(join(dir, 'config.json'), seeds.config)
    writeFileSync(join(dir, 'pytorch_model.bin'), binBytes(seeds.bin))
    const [fromBin, fromSafetensors] = await Promise.all([Tokenizer.fromPretrained(dir), Tokenizer.fromPretrained(join(seedDir, 'model'))])
    const png = join(seedDir, 'images', '0.png')
    expect(Array.from((await fromBin.encode(png)).data)).toEqual(Array.from((await fromSafetensors.encode(png)).data))
    fromBin.dispose()
    fromSafetensors.dispose()
  })

  it('mutations are reproducible from (seed, index) and change the input', async () => {
    const seeds = await readSeeds(seedDir)
    for (const klass of CLASSES) {
      const a = mutateInput(klass, seeds, 7, 3)
      expect(Buffer.compare(Buffer.from(a), Buffer.from(mutateInput(klass, seeds, 7, 3)))).toBe(0)
      const distinct = new Set(Array.from({ length: 30 }, (_, i) => Buffer.from(mutateInput(klass, seeds, 7, i)).toString('base64')))
      expect(distinct.size, klass).toBeGreaterThan(25)
    }
  })

  it('createRandomModel refuses absurd sizes and misspelled keys before allocating anything', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'marvel-fuzz-create-'))
    const edit = (vq: Record<string, unknown>) => {
      const cfg = tinyConfig() as { model: { vq_model: Record<string, unknown> } }
      Object.assign(cfg.model.vq_model, vq)
      return cfg
    }
    const cases: Array<[object, RegExp]> = [
      [edit({ vit_enc_width: 65536 }), /vit_enc_width = 65536 is above the limit of 8192/],
      [edit({ num_latent_tokens: 1e9 }), /num_latent_tokens = 1000000000 is above the limit/],
      [edit({ vit_dec_num_layers: 1e9 }), /vit_dec_num_layers = 1000000000 is above the limit/],
      [
        edit({ vit_enc_width: 8192, vit_enc_num_layers: 200, vit_enc_num_heads: 8 }),
        /this config has 1\.6e11 parameters \(644\.\d GB as f32\), above the limit/,
      ],
      [edit({ vit_enc_widht: 64 }), /unknown key model\.vq_model\.vit_enc_widht; did you mean vit_enc_width\?/],
    ]
    for (const [config, message] of cases) {
      const err = await createRandomModel(join(dir, 'm'), config).catch((e: unknown) => e)
      expect(err).toBeInstanceOf(MarvelError)
      expect((err as MarvelError).code).toBe('MARVEL_CONFIG')
      expect((err as MarvelError).message).toMatch(message)
      expect(existsSync(join(dir, 'm'))).toBe(false)
    }
  })

  for (const klass of CLASSES) {
    it(`${klass}: ${COUNT} inputs`, { timeout: 900_000 }, async () => {
      const indices = only(klass)
      const s = await runClass(klass, indices)
      console.log(`fuzz ${klass}: ${s.inputs} inputs in ${s.seconds.toFixed(1)} s (slowest ${s.slowestMs} ms): ${JSON.stringify(s.outcomes)}`)
      expect(s.failures.length, await report(klass, s.failures)).toBe(0)
      expect(s.inputs).toBe(indices?.length ?? COUNT)
    })
  }
})
