import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { MarvelError, Trainer } from '../src/index.js'
import { rankValue } from '../src/cli/train.js'
import { ranksOf } from '../src/train/data-parallel.js'
import { ProcessGroup, launchRanks } from '../src/train/ranks.js'
import { bundleChild, childEnv } from './helpers/bundle.js'
import { images, tinyTrainingConfig } from './helpers/training.js'

let work: string
let worker: string
let launcher: string

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'marvel-ranks-'))
  worker = await bundleChild('rank-worker.ts', work)
  launcher = await bundleChild('rank-launcher.ts', work)
})

afterAll(() => rmSync(work, { recursive: true, force: true }))

const f32 = (path: string) => {
  const b = readFileSync(path)
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4)
}

/** Every tensor of a safetensors file as float32 values. */
function safetensors(path: string): Map<string, Float32Array> {
  const b = readFileSync(path)
  const headerLength = Number(b.readBigUInt64LE(0))
  const header = JSON.parse(b.subarray(8, 8 + headerLength).toString('utf8')) as Record<string, { dtype: string; data_offsets: [number, number] }>
  const out = new Map<string, Float32Array>()
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue
    expect(t.dtype).toBe('F32')
    const data = b.subarray(8 + headerLength + t.data_offsets[0], 8 + headerLength + t.data_offsets[1])
    out.set(name, new Float32Array(Uint8Array.from(data).buffer))
  }
  return out
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length)
  let m = 0
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]))
  return m
}

/** Both ranks' exported weights are bit-identical, and within 1e-6 of the single-rank run's (`model-single`), returned. */
function expectRanksMatchSingle(dir: string): Map<string, Float32Array> {
  const reference = safetensors(join(dir, 'model-single', 'model.safetensors'))
  const rank0 = safetensors(join(dir, 'model-0', 'model.safetensors'))
  const rank1 = safetensors(join(dir, 'model-1', 'model.safetensors'))
  let worst = 0
  for (const [name, w] of reference) {
    expect(Buffer.from(rank0.get(name)!.buffer).equals(Buffer.from(rank1.get(name)!.buffer)), name).toBe(true)
    worst = Math.max(worst, maxAbsDiff(w, rank0.get(name)!))
  }
  expect(worst).toBeLessThanOrEqual(1e-6)
  return reference
}

/** launchRanks' rejection (or 'resolved'), and how long it took. */
async function outcome(run: Promise<void>): Promise<[unknown, number]> {
  const started = performance.now()
  const e = await run.then(() => 'resolved', (err: unknown) => err)
  return [e, performance.now() - started]
}

/**
 * The tiny `single` config with an update at the first step (the warmup's lr(0) = 0 would leave any weights as they
 * were) and no entropy term, whose batch entropy is not linear in the batch.
 */
function linearConfig() {
  const config = tinyTrainingConfig()
  config.model.vq_model.entropy_loss_weight = 0
  config.lr_scheduler.params.warmup_steps = 0
  return config
}

describe('data-parallel ranks', () => {
  it('2 ranks x 2 images give the weights of 1 rank x 4 images after a step', async () => {
    const config = linearConfig()
    const dir = join(work, 'train')
    await launchRanks(2, worker, ['train', dir, JSON.stringify(config)], childEnv)

    const single = await Trainer.create(config, { seed: 5 })
    const whole = await single.gradients(images(4))
    await single.applyGradients(whole.gradients!)
    await single.exportModel(join(dir, 'model-single'))
    single.dispose()

    const [mean0, mean1] = [f32(join(dir, 'mean-0.f32')), f32(join(dir, 'mean-1.f32'))]
    expect(Buffer.from(mean0.buffer).equals(Buffer.from(mean1.buffer))).toBe(true)
    // Adam's first update barely depends on the gradients' scale, so a sum in place of the mean would pass the weight
    // check: compare the averaged gradients with the whole batch's first.
    const scale = whole.gradients!.reduce((m, g) => Math.max(m, Math.abs(g)), 0)
    expect(maxAbsDiff(whole.gradients!, mean0)).toBeLessThanOrEqual(1e-5 * scale)
    const steps = [0, 1].map((r) => JSON.parse(readFileSync(join(dir, `step-${r}.json`), 'utf8')))
    expect(steps.map((s) => s.step)).toEqual([1, 1])
    expect((steps[0].loss + steps[1].loss) / 2).toBeCloseTo(whole.loss, 5)

    const reference = expectRanksMatchSingle(dir)
    // The step moved the weights (lr 2e-3 from the first step), so the comparison above is not of untouched weights.
    const fresh = await Trainer.create(config, { seed: 5 })
    await fresh.exportModel(join(dir, 'model-fresh'))
    fresh.dispose()
    const initial = safetensors(join(dir, 'model-fresh', 'model.safetensors'))
    expect(Math.max(...[...reference].map(([name, w]) => maxAbsDiff(w, initial.get(name)!)))).toBeGreaterThan(1e-3)
  })

  it('with gradient accumulation, ranks exchange gradients once per optimizer step and match one rank\'s accumulation', async () => {
    const config = linearConfig()
    config.training.gradient_accumulation_steps = 2
    const dir = join(work, 'accumulate')
    await launchRanks(2, worker, ['accumulate', dir, JSON.stringify(config)], childEnv)
    for (const r of [0, 1]) {
      const got = JSON.parse(readFileSync(join(dir, `accumulate-${r}.json`), 'utf8'))
      expect(got.collectives).toBe(1)
      expect(got.steps).toEqual([0, 1])
      expect([got.gradNorms[0], typeof got.gradNorms[1]]).toEqual([null, 'number'])
    }
    // One rank, micro-batch i holding each rank's i-th image: the same mean over the same four images.
    const single = await Trainer.create(config, { seed: 5 })
    const frame = 32 * 32 * 3
    const all = images(4)
    const pick = (...ids: number[]) => {
      const out = new Uint8Array(ids.length * frame)
      ids.forEach((id, k) => out.set(all.subarray(id * frame, (id + 1) * frame), k * frame))
      return out
    }
    await single.step(pick(0, 2))
    expect((await single.step(pick(1, 3))).step).toBe(1)
    await single.exportModel(join(dir, 'model-single'))
    single.dispose()
    expectRanksMatchSingle(dir)
  })

  it('gradients() hands back gradients only at the accumulation boundary, and refuses to run past unapplied ones', async () => {
    const t = await Trainer.create(tinyTrainingConfig({ gradient_accumulation_steps: 2 }), { seed: 1 })
    const first = await t.gradients(images(1))
    expect([first.gradients, first.step]).toEqual([null, 0])
    await expect(t.applyGradients(new Float32Array(t.gradientLength))).rejects.toThrow(/no gradients\(\) result to apply/)
    const second = await t.gradients(images(1))
    expect(second.gradients).toBeInstanceOf(Float32Array)
    await expect(t.gradients(images(1))).rejects.toThrow(/were not applied; pass them \(averaged across ranks\) to applyGradients\(\) first/)
    expect((await t.applyGradients(second.gradients!)).step).toBe(1)
    t.dispose()
  })

  it('averages in rank order, so every rank gets the same bits: the float64 sum rounded once', async () => {
    const dir = join(work, 'values')
    await launchRanks(3, worker, ['values', dir], childEnv)
    const inputs = [0, 1, 2].map((r) => f32(join(dir, `input-${r}.f32`)))
    const expected = inputs[0].map((_, i) => (inputs[0][i] + inputs[1][i] + inputs[2][i]) / 3)
    for (const r of [0, 1, 2]) {
      expect([...f32(join(dir, `mean-${r}.f32`))]).toEqual([...expected])
      expect(f32(join(dir, `empty-${r}.f32`)).length).toBe(0)
    }
  })

  it('a rank that fails kills the others and names itself and its last words', async () => {
    const dir = join(work, 'crash')
    const [e, ms] = await outcome(launchRanks(3, worker, ['crash', dir], childEnv))
    expect(e).toBeInstanceOf(MarvelError)
    expect((e as MarvelError).code).toBe('MARVEL_RANK')
    expect((e as MarvelError).message).toMatch(/^rank 1 of 3 exited with code 1:/)
    expect((e as MarvelError).message).toContain('rank one broke after its first collective')
    expect(ms).toBeLessThan(30_000)
    // The surviving ranks' collectives failed with the reason, so they could act on it before being stopped.
    for (const r of [0, 2]) expect(readFileSync(join(dir, `failed-${r}`), 'utf8')).toMatch(/^the run stopped: rank 1 of 3 exited with code 1/)
  })

  it('never hangs: a rank that does not join a collective, or exits while the others wait, ends the run', async () => {
    const [hung] = await outcome(launchRanks(2, worker, ['hang', work], childEnv, { collectiveTimeoutMs: 1500 }))
    expect((hung as MarvelError).code).toBe('MARVEL_RANK')
    expect((hung as MarvelError).message).toMatch(/^rank 1 did not join collective #0 within 1500 ms/)
    const [early] = await outcome(launchRanks(2, worker, ['early-exit', work], childEnv))
    expect((early as MarvelError).message).toMatch(/rank 1 exited with code 0 while .* collective #0/)
    const [lengths] = await outcome(launchRanks(2, worker, ['lengths', work], childEnv))
    expect((lengths as MarvelError).message).toMatch(/rank \d gave collective #0 \d values, rank \d gave \d/)
    const [missing] = await outcome(launchRanks(2, join(work, 'no-such-script.mjs'), [], childEnv))
    expect((missing as MarvelError).code).toBe('MARVEL_RANK')
    expect((missing as MarvelError).message).toMatch(/^rank \d of 2 exited with code 1:[\s\S]*Cannot find module/)
  })

  it('stops every rank when aborted', async () => {
    const controller = new AbortController()
    const run = outcome(launchRanks(2, worker, ['hang', work], childEnv, { signal: controller.signal }))
    setTimeout(() => controller.abort(), 500)
    const [e] = await run
    expect((e as MarvelError).message).toMatch(/aborted/)
  })

  it('a launcher that is sent SIGTERM passes it on, and the ranks stop together after the same step', async () => {
    const dir = join(work, 'signal')
    const proc = spawn(process.execPath, [launcher, worker, '2', 'signal', dir], { env: { ...process.env, ...childEnv }, stdio: 'inherit' })
    const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)))
    while (!existsSync(join(dir, 'ready-0')) || !existsSync(join(dir, 'ready-1'))) await new Promise((r) => setTimeout(r, 20))
    await new Promise((r) => setTimeout(r, 100))
    proc.kill('SIGTERM')
    expect(await exited).toBe(0)
    const steps = [0, 1].map((r) => readFileSync(join(dir, `stopped-${r}`), 'utf8'))
    expect(steps[0]).toBe(steps[1])
    expect(Number(steps[0])).toBeGreaterThan(1)
  })

  it('a launcher sent a second signal kills the ranks at once (they ignore repeats) and fails naming it', async () => {
    const dir = join(work, 'deaf')
    const proc = spawn(process.execPath, [launcher, worker, '2', 'deaf', dir], { env: { ...process.env, ...childEnv }, stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()))
    const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)))
    while (!existsSync(join(dir, 'ready-0')) || !existsSync(join(dir, 'ready-1'))) await new Promise((r) => setTimeout(r, 20))
    proc.kill('SIGINT')
    await new Promise((r) => setTimeout(r, 200))
    expect(proc.exitCode).toBe(null)
    proc.kill('SIGINT')
    expect(await exited).toBe(3)
    expect(stderr).toMatch(/the ranks were killed: a second SIGINT means quit at once/)
  })

  it('ranks whose launcher is killed fail at their next collective instead of waiting forever', async () => {
    const dir = join(work, 'orphans')
    const proc = spawn(process.execPath, [launcher, worker, '2', 'signal', dir], { env: { ...process.env, ...childEnv }, stdio: 'ignore' })
    while (!existsSync(join(dir, 'ready-0')) || !existsSync(join(dir, 'ready-1'))) await new Promise((r) => setTimeout(r, 20))
    const pids = [0, 1].map((r) => Number(readFileSync(join(dir, `ready-${r}`), 'utf8')))
    proc.kill('SIGKILL')
    // Gone, or a zombie nobody reaps (an orphan's parent is whatever reaper the container has).
    const alive = (pid: number) => {
      try {
        return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'))
      } catch {
        return false
      }
    }
    const started = performance.now()
    while (pids.some(alive) && performance.now() - started < 20_000) await new Promise((r) => setTimeout(r, 50))
    expect(pids.filter(alive)).toEqual([])
    for (const r of [0, 1]) expect(readFileSync(join(dir, `failed-${r}`), 'utf8')).toMatch(/the rank launcher is gone/)
  })

  it('RANK / WORLD_SIZE, --rank / --world-size and train({ rank, worldSize }) accept and refuse the same values', () => {
    const flag = (value: string) => rankValue('--world-size', 1)(value)
    for (const bad of [' 2', '2.0', '1e1', '-1', '0x2', '0', '65537']) {
      expect(() => ranksOf({}, { WORLD_SIZE: bad }), bad).toThrow(`WORLD_SIZE=${bad}: expected an integer from 1 to 65536`)
      expect(() => ProcessGroup.fromEnv({ WORLD_SIZE: bad }), bad).toThrow(`WORLD_SIZE=${bad}: expected an integer from 1 to 65536`)
      expect(() => flag(bad), bad).toThrow(`--world-size=${bad}: expected an integer from 1 to 65536`)
    }
    expect(() => ranksOf({ worldSize: 65537 })).toThrow('worldSize=65537: expected an integer from 1 to 65536')
    expect([ranksOf({}, { WORLD_SIZE: '4', RANK: '3' }), flag('4')]).toEqual([{ rank: 3, worldSize: 4 }, 4])
  })

  it('one process without WORLD_SIZE is a group of one; WORLD_SIZE > 1 needs the launcher', async () => {
    const solo = ProcessGroup.fromEnv({})
    expect([solo.rank, solo.worldSize]).toEqual([0, 1])
    const x = new Float32Array([1, 2])
    const mean = await solo.allReduceMean(x)
    expect([...mean]).toEqual([1, 2])
    expect(mean).not.toBe(x)
    solo.close()
    await expect(solo.allReduceMean(x)).rejects.toThrow(/closed/)
    expect(() => ProcessGroup.fromEnv({ WORLD_SIZE: '2', RANK: '0' })).toThrow(/not started by launchRanks/)
    expect(() => ProcessGroup.fromEnv({ WORLD_SIZE: '2', RANK: '2' })).toThrow(/RANK=2: expected an integer from 0 to 1/)
    expect(() => ProcessGroup.fromEnv({ WORLD_SIZE: 'two' })).toThrow(/WORLD_SIZE=two/)
    expect(() => launchRanks(0, worker)).toThrow(/expected n to be an integer from 1/)
    expect(() => launchRanks(2, worker, [1 as never])).toThrow(/expected args to be an array of strings/)
    expect(() => launchRanks(2, worker, [], {}, { forwardSignals: 1 as never })).toThrow(/expected forwardSignals to be a boolean/)
  })
})

describe('Trainer.gradients / applyGradients', () => {
  it('split step in two: gradients then applyGradients of them is step, bit for bit', async () => {
    const config = tinyTrainingConfig()
    const a = await Trainer.create(config, { seed: 9 })
    const b = await Trainer.create(config, { seed: 9 })
    for (let i = 0; i < 3; i++) {
      const stepped = await a.step(images(2))
      const computed = await b.gradients(images(2))
      expect(computed.gradients!.length).toBe(b.gradientLength)
      const applied = await b.applyGradients(computed.gradients!)
      expect(applied).toEqual(stepped)
    }
    await a.exportModel(join(work, 'split-a'))
    await b.exportModel(join(work, 'split-b'))
    expect(readFileSync(join(work, 'split-a', 'model.safetensors')).equals(readFileSync(join(work, 'split-b', 'model.safetensors')))).toBe(true)
    a.dispose()
    b.dispose()
  })

  it('refuses gradients of the wrong length or not finite, and an apply without gradients', async () => {
    const t = await Trainer.create(tinyTrainingConfig(), { seed: 1 })
    await expect(t.applyGradients(new Float32Array(t.gradientLength))).rejects.toThrow(/no gradients\(\) result to apply/)
    const gradients = (await t.gradients(images(1))).gradients!
    await expect(t.applyGradients(gradients.subarray(1))).rejects.toThrow(new RegExp(`expected gradients to be a Float32Array of ${t.gradientLength} values`))
    await expect(t.applyGradients(new Float64Array(t.gradientLength) as never)).rejects.toMatchObject({ code: 'MARVEL_INVALID_ARGUMENT' })
    const bad = gradients.slice()
    bad[5] = Number.NaN
    await expect(t.applyGradients(bad)).rejects.toMatchObject({ code: 'MARVEL_INVALID_ARGUMENT', message: /NaN at index 5 \(parameter `[^`]+`\); the weights were not updated/ })
    await expect(t.applyGradients(gradients)).rejects.toThrow(/no gradients\(\) result to apply/)
    await expect(t.gradients(images(1), { proxyCodes: new Int32Array(16) })).rejects.toMatchObject({ message: /no proxy codes/ })
    t.dispose()
  })
})
