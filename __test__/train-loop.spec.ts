/**
 * `marvel train` as a user runs it (the built CLI in a child process) on generated shards with configs/tiny.yaml:
 * it trains and writes what it promises, survives SIGKILL and SIGTERM with exact resumes, skips damaged data, fails
 * at start on a missing shard or a bad override; make-shards feeds it and its model loads as a Tokenizer.
 */
import { spawn, spawnSync } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, symlinkSync, truncateSync, unlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import sharp from 'sharp'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { readTensorBoardEvents } from '../src/train/tensorboard.js'
import { Trainer, loadTrainingConfig, prepareImage, train } from '../src/index.js'
import { cli, encoded, ensureBuilt, imageFolder, tinyYaml, writeShard, writeShards } from './helpers/shards.js'

let work: string
let shardPattern: string
const STEPS = 50

beforeAll(async () => {
  ensureBuilt()
  work = mkdtempSync(join(tmpdir(), 'marvel-train-'))
  await writeShards(join(work, 'shards'), 4, 6)
  shardPattern = join(work, 'shards', 'train-{0000..0003}.tar')
})

afterAll(() => rmSync(work, { recursive: true, force: true }))

/** The settings of the 50-step run every test compares with. */
function settings(out: string, extra: string[] = []): string[] {
  return [
    `config=${tinyYaml}`,
    `dataset.params.train_shards_path_or_url=${shardPattern}`,
    'dataset.params.shuffle_buffer_size=8',
    `experiment.output_dir=${out}`,
    `training.max_train_steps=${STEPS}`,
    'experiment.save_every=10',
    'experiment.eval_every=25',
    'experiment.log_every=1',
    ...extra,
  ]
}

function marvel(args: string[]) {
  const r = spawnSync(process.execPath, [cli, ...args], { cwd: work, encoding: 'utf8', timeout: 120_000, env: { ...process.env, MARVEL_DEBUG: '' } })
  return { code: r.status, stdout: r.stdout, stderr: r.stderr }
}

/**
 * Runs `marvel train`, sending `signal` once a progress line reaches step `at`; resolves with how it ended. `group`
 * runs it in a process group of its own and signals the whole group, as a terminal's Ctrl-C does.
 */
function trainUntil(args: string[], at: number, signal: NodeJS.Signals, group = false): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string; sentAt: number }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [cli, 'train', ...args], { cwd: work, detached: group })
    let stderr = ''
    let sentAt = -1
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString()
      const steps = [...stderr.matchAll(/^step +(\d+)\//gm)].map((m) => Number(m[1]))
      if (sentAt < 0 && steps.length > 0 && steps[steps.length - 1] >= at) {
        sentAt = steps[steps.length - 1]
        if (group) process.kill(-child.pid!, signal)
        else child.kill(signal)
      }
    })
    child.on('exit', (code, sig) => resolve({ code, signal: sig, stderr, sentAt }))
  })
}

interface Line {
  step: number
  time?: number
  loss?: number
  lr?: number
  gradNorm?: number
  components?: Record<string, number>
  eval?: { psnr: number[] }
  skipped?: Record<string, number>
}

function metrics(out: string): Line[] {
  return readFileSync(join(out, 'logs', 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l))
}

/** What must be equal between two runs of the same steps: everything but the clock. */
function trajectory(out: string) {
  return metrics(out).map(({ step, loss, lr, gradNorm, components, eval: ev }) => ({ step, loss, lr, gradNorm, components, eval: ev }))
}

describe('marvel train', () => {
  const straight = () => join(work, 'straight')

  it('trains the tiny config 50 steps: the loss falls; metrics.jsonl, checkpoints, latest and grids are written', async () => {
    const r = marvel(['train', ...settings(straight())])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stderr).toMatch(/^step 50\/50  loss \d\.\d{4}  lr \d\.\d\de-\d  [\d.]+ img\/s  ETA \d+s$/m)
    expect(r.stderr).toContain(`marvel: finished at step 50; checkpoint ${join(straight(), 'checkpoint-50')}`)

    const lines = metrics(straight())
    const steps = lines.filter((l) => l.eval === undefined)
    expect(steps.map((l) => l.step)).toEqual(Array.from({ length: STEPS }, (_, i) => i + 1))
    for (const l of steps) {
      expect(Object.keys(l)).toEqual(['step', 'time', 'lr', 'loss', 'components', 'gradNorm', 'imagesPerSecond'])
      expect(Object.keys(l.components!)).toContain('reconstruction_loss')
    }
    const mean = (ls: Line[]) => ls.reduce((s, l) => s + l.loss!, 0) / ls.length
    expect(mean(steps.slice(-5))).toBeLessThan(mean(steps.slice(0, 5)) / 2)
    const evals = lines.filter((l) => l.eval !== undefined)
    expect(evals.map((l) => l.step)).toEqual([25, 50])
    for (const e of evals) expect(e.eval!.psnr).toEqual([expect.any(Number), expect.any(Number), expect.any(Number)])
    // Training improves the reconstruction of the fixed validation batch.
    expect(evals[1].eval!.psnr[2]).toBeGreaterThan(evals[0].eval!.psnr[2])

    // keep: 2 — the last two checkpoints, latest on the newest.
    expect(readdirSync(straight()).filter((f) => f.startsWith('checkpoint-')).sort()).toEqual(['checkpoint-40', 'checkpoint-50'])
    expect(readlinkSync(join(straight(), 'latest'))).toBe('checkpoint-50')
    // The same scalars in TensorBoard's event file, every record's CRCs checked by the reader.
    const events = readdirSync(join(straight(), 'logs')).filter((f) => f.startsWith('events.out.tfevents.'))
    expect(events).toHaveLength(1)
    const tb = await readTensorBoardEvents(join(straight(), 'logs', events[0]))
    expect(tb.truncated).toBe(false)
    const tbLoss = tb.scalars.filter((e) => e.tag === 'loss')
    expect(tbLoss.map((e) => e.step)).toEqual(steps.map((l) => l.step))
    tbLoss.forEach((e, i) => expect(e.value).toBeCloseTo(steps[i].loss!, 6))
    expect(tb.images.map((i) => [i.tag, i.step, i.width, i.height])).toEqual([
      ['reconstruction', 25, 128, 128],
      ['reconstruction', 50, 128, 128],
    ])
    const resumed = await Trainer.resume(join(straight(), 'latest'))
    expect(resumed.startStep).toBe(50)
    resumed.dispose()
    // Grids: 4 validation images (rows) x original + 3 depths (columns) of 32 px.
    expect(readdirSync(join(straight(), 'grids')).sort()).toEqual(['step-25.png', 'step-50.png'])
    const grid = await sharp(join(straight(), 'grids', 'step-50.png')).metadata()
    expect([grid.format, grid.width, grid.height]).toEqual(['png', 4 * 32, 4 * 32])
  })

  it('SIGKILLed mid-way, then --resume: latest loads and the remaining steps equal the uninterrupted run\'s', async () => {
    const out = join(work, 'killed')
    const killed = await trainUntil(settings(out), 23, 'SIGKILL')
    expect(killed.signal).toBe('SIGKILL')
    expect(killed.sentAt).toBeLessThan(STEPS)
    const latest = await Trainer.resume(join(out, 'latest'))
    expect(latest.startStep % 10).toBe(0)
    expect(latest.startStep).toBeGreaterThanOrEqual(20)
    latest.dispose()

    // What a kill inside a save leaves behind is cleared when the run resumes.
    mkdirSync(join(out, '.checkpoint-30.partial-99999'))
    writeFileSync(join(out, '.checkpoint-30.partial-99999', 'model.safetensors'), 'half')
    const r = marvel(['train', ...settings(out), '--resume'])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stderr).toContain(`marvel: resuming ${join(out, 'checkpoint-')}`)
    expect(r.stderr).toContain(`marvel: removed ${join(out, '.checkpoint-30.partial-99999')}, left half-written by an earlier run`)
    expect(readdirSync(out).filter((n) => n.startsWith('.'))).toEqual([])
    expect(trajectory(out)).toEqual(trajectory(straight()))
    // The resumed run's event file tells TensorBoard to drop the killed run's steps after the checkpoint.
    const resumedAt = Number(/marvel: resuming .* at step (\d+)/.exec(r.stderr)?.[1])
    const eventFiles = readdirSync(join(out, 'logs')).filter((f) => f.startsWith('events.out.tfevents.'))
    expect(eventFiles).toHaveLength(2)
    const starts = await Promise.all(eventFiles.map(async (f) => (await readTensorBoardEvents(join(out, 'logs', f))).sessionStarts))
    expect(starts.sort((a, b) => a.length - b.length)).toEqual([[], [resumedAt + 1]])
    for (const file of ['model.safetensors', 'ema.safetensors', 'optimizer.safetensors']) {
      expect(readFileSync(join(out, 'checkpoint-50', file)).equals(readFileSync(join(straight(), 'checkpoint-50', file))), file).toBe(true)
    }
    // The clock continues across the resume.
    const times = metrics(out).map((l) => l.time!)
    expect(times.every((t, i) => i === 0 || t >= times[i - 1])).toBe(true)
  })

  it('a lost or dangling latest: --resume continues from the newest checkpoint folder and points latest at it again', () => {
    for (const damage of ['lost', 'dangling'] as const) {
      const out = join(work, `${damage}-latest`)
      cpSync(straight(), out, { recursive: true, verbatimSymlinks: true })
      unlinkSync(join(out, 'latest'))
      // A kill between the rename of a checkpoint folder and the link leaves the first; a lost folder the second.
      if (damage === 'dangling') symlinkSync('checkpoint-60', join(out, 'latest'))
      const refused = marvel(['train', ...settings(out)])
      expect(refused.code).toBe(1)
      expect(refused.stderr).toContain(`already holds a run (its newest checkpoint: ${join(out, 'checkpoint-50')})`)
      const r = marvel(['train', ...settings(out), '--resume'])
      expect(r.code, r.stderr).toBe(0)
      expect(r.stderr).toContain(`continuing from the newest checkpoint, ${join(out, 'checkpoint-50')}`)
      expect(r.stderr).toContain('marvel: finished at step 50')
      expect(readlinkSync(join(out, 'latest'))).toBe('checkpoint-50')
      expect(trajectory(out)).toEqual(trajectory(straight()))
    }
  })

  it('a new run in a folder with logs but no checkpoint starts its metrics.jsonl afresh', () => {
    const out = join(work, 'fresh-over-logs')
    mkdirSync(join(out, 'logs'), { recursive: true })
    writeFileSync(join(out, 'logs', 'metrics.jsonl'), [1, 2, 3, 4].map((step) => `${JSON.stringify({ step, loss: 9 })}\n`).join(''))
    const r = marvel(['train', ...settings(out, ['training.max_train_steps=2'])])
    expect(r.code, r.stderr).toBe(0)
    expect(metrics(out).map((l) => [l.step, l.loss === 9])).toEqual([[1, false], [2, false]])
  })

  it('SIGKILLed again and again at random moments with a checkpoint every step: latest always loads', async () => {
    const out = join(work, 'kill-loop')
    let seed = 20261201
    const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31
    const args = ['train', ...settings(out, ['experiment.save_every=1', 'training.max_train_steps=1000']), '--resume']
    let last = 0
    for (let kill = 0; kill < 5; kill++) {
      const delay = Math.floor(random() * 700)
      const child = spawn(process.execPath, [cli, ...args], { cwd: work, stdio: ['ignore', 'ignore', 'pipe'] })
      // From the first step on, a checkpoint is being written nearly all the time.
      child.stderr!.on('data', (d: Buffer) => /^step /m.test(d.toString()) && setTimeout(() => child.kill('SIGKILL'), delay))
      await new Promise((resolve) => child.once('exit', resolve))
      if (!existsSync(join(out, 'latest'))) continue
      const t = await Trainer.resume(join(out, 'latest'))
      expect(t.startStep, `kill ${kill} after ${delay} ms`).toBeGreaterThanOrEqual(last)
      last = t.startStep
      t.dispose()
    }
    expect(last).toBeGreaterThan(0)
  })

  it('SIGTERM saves a checkpoint at the current step and exits 0; the resumed run matches too', async () => {
    const out = join(work, 'terminated')
    const stopped = await trainUntil(settings(out), 13, 'SIGTERM')
    expect(stopped.code, stopped.stderr).toBe(0)
    const step = Number(/marvel: stopped at step (\d+); checkpoint /.exec(stopped.stderr)?.[1])
    expect(step).toBeGreaterThanOrEqual(13)
    expect(readlinkSync(join(out, 'latest'))).toBe(`checkpoint-${step}`)
    expect(marvel(['train', ...settings(out), '--resume']).code).toBe(0)
    expect(trajectory(out)).toEqual(trajectory(straight()))
  })

  it('--nproc 2: two ranks train with averaged gradients, stop together on SIGTERM, and resume to the uninterrupted run\'s losses', async () => {
    const ranked = (out: string) => ['--nproc', '2', ...settings(out, ['training.max_train_steps=12', 'experiment.save_every=4', 'experiment.eval_every=6'])]
    const whole = join(work, 'ranks-whole')
    const r = marvel(['train', ...ranked(whole)])
    expect(r.code, r.stderr).toBe(0)
    expect(readlinkSync(join(whole, 'latest'))).toBe('checkpoint-12')
    expect(metrics(whole).filter((l) => l.eval === undefined).map((l) => l.step)).toEqual(Array.from({ length: 12 }, (_, i) => i + 1))
    // Both ranks' data positions are kept, so each resumes its own stream.
    const saved = await Trainer.resume(join(whole, 'latest'))
    expect((saved.dataPosition as { ranks: unknown[] }).ranks).toHaveLength(2)
    saved.dispose()

    const out = join(work, 'ranks-stopped')
    const stopped = await trainUntil(ranked(out), 5, 'SIGTERM')
    expect(stopped.code, stopped.stderr).toBe(0)
    const step = Number(/marvel: stopped at step (\d+); checkpoint /.exec(stopped.stderr)?.[1])
    expect(step).toBeGreaterThanOrEqual(5)
    expect(step).toBeLessThan(12)
    const resumed = marvel(['train', ...ranked(out), '--resume'])
    expect(resumed.code, resumed.stderr).toBe(0)
    expect(trajectory(out)).toEqual(trajectory(whole))
  })

  it('--nproc 2: a Ctrl-C to the whole process group (each rank gets it twice) saves a checkpoint and exits 0', async () => {
    const out = join(work, 'ranks-ctrl-c')
    const stopped = await trainUntil(['--nproc', '2', ...settings(out, ['training.max_train_steps=12', 'experiment.save_every=100'])], 3, 'SIGINT', true)
    expect(stopped.code, stopped.stderr).toBe(0)
    const step = Number(/marvel: stopped at step (\d+); checkpoint /.exec(stopped.stderr)?.[1])
    expect(step).toBeGreaterThanOrEqual(3)
    expect(readlinkSync(join(out, 'latest'))).toBe(`checkpoint-${step}`)
  })

  it('evaluates as the reference does: shorter side to crop_size, centre crop, reconstructed through the EMA weights', async () => {
    const out = join(work, 'eval-ema')
    const evalDir = join(work, 'eval-one')
    mkdirSync(evalDir, { recursive: true })
    const png = await encoded(7, 'png', 64, 48)
    writeFileSync(join(evalDir, 'a.png'), png)
    // Training resizes to 40 first; the evaluation must not.
    const extra = ['training.max_train_steps=3', 'experiment.eval_every=3', 'dataset.preprocessing.resize_shorter_edge=40', `dataset.params.eval_shards_path_or_url=${evalDir}`]
    const r = marvel(['train', ...settings(out, extra)])
    expect(r.code, r.stderr).toBe(0)
    const grid = await sharp(join(out, 'grids', 'step-3.png')).removeAlpha().raw().toBuffer({ resolveWithObject: true })
    expect([grid.info.width, grid.info.channels]).toEqual([4 * 32, 3])
    const cell = (column: number) => {
      const c = Buffer.alloc(32 * 32 * 3)
      for (let y = 0; y < 32; y++) grid.data.copy(c, y * 96, (y * grid.info.width + column * 32) * 3, (y * grid.info.width + column * 32 + 32) * 3)
      return c
    }
    expect(cell(0).equals(Buffer.from((await prepareImage(png, { size: 32 })).data))).toBe(true)
    const t = await Trainer.resume(join(out, 'latest'))
    for (let depth = 1; depth <= 3; depth++) {
      expect(Buffer.from(await t.reconstruct(cell(0), { depth, ema: true })).equals(cell(depth)), `depth ${depth}`).toBe(true)
    }
    t.dispose()
  })

  it('refuses to start over an existing run without --resume, and to resume it with settings its checkpoint overrides', () => {
    const r = marvel(['train', ...settings(straight())])
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/already holds a run .*--resume.* \(MARVEL_INVALID_ARGUMENT\)\n$/)
    const changed = marvel(['train', ...settings(straight(), ['training.max_train_steps=60', 'optimizer.params.weight_decay=0']), '--resume'])
    expect(changed.code).toBe(1)
    expect(changed.stderr).toContain('was started with other settings, which its checkpoint keeps: optimizer.params.weight_decay (checkpoint: 0.0001, now: 0); training.max_train_steps (checkpoint: 50, now: 60)')
    // Loop settings may change: more checkpoints kept, other intervals.
    const loop = marvel(['train', ...settings(straight(), ['experiment.keep=3']), '--resume'])
    expect([loop.code, loop.stderr]).toEqual([0, 'marvel: resuming ' + join(straight(), 'checkpoint-50') + ' at step 50\nmarvel: finished at step 50\n'])
  })

  it('skips and counts a broken member, a truncated shard and a non-image; a missing shard and a bad override fail at start', async () => {
    const dir = join(work, 'damaged')
    mkdirSync(dir, { recursive: true })
    const samples = async (from: number, n: number) => {
      const out: Array<[string, Uint8Array]> = []
      for (let i = from; i < from + n; i++) out.push([`k${i}.png`, await encoded(i, 'png')])
      return out
    }
    await writeShard(join(dir, 'a.tar'), await samples(0, 4))
    const a = readFileSync(join(dir, 'a.tar'))
    const second = 512 + Math.ceil((await encoded(0, 'png')).length / 512) * 512
    a.fill(0x41, second, second + 64)
    writeFileSync(join(dir, 'a.tar'), a)
    await writeShard(join(dir, 'b.tar'), await samples(10, 4))
    truncateSync(join(dir, 'b.tar'), readFileSync(join(dir, 'b.tar')).length - 2048)
    await writeShard(join(dir, 'c.tar'), [['notes.png', Buffer.from('not an image')], ...(await samples(20, 4))])

    const out = join(work, 'damaged-run')
    const args = [`config=${tinyYaml}`, `dataset.params.train_shards_path_or_url=${dir}`, `experiment.output_dir=${out}`, 'training.max_train_steps=2', 'experiment.log_every=1', 'dataset.params.shuffle_buffer_size=1', 'training.per_gpu_batch_size=5']
    const r = marvel(['train', ...args])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stderr).toMatch(/marvel: skipped a\.tar@\d+: corrupt tar .*a\.tar at byte \d+: header checksum mismatch/)
    expect(r.stderr).toMatch(/marvel: skipped b\.tar@\d+: truncated tar /)
    expect(r.stderr).toMatch(/marvel: skipped .*c\.tar@0: cannot decode image/)
    const last = metrics(out).at(-1)!
    // Two batches of five are one pass over the ten good samples (no shuffle buffer reading ahead): each damage once.
    expect(last.skipped).toEqual({ corrupt_member: 1, truncated_shard: 1, unreadable_image: 1 })

    const missing = marvel(['train', ...args.slice(0, 1), `dataset.params.train_shards_path_or_url=${join(work, 'shards', 'train-{0000..0005}.tar')}`, `experiment.output_dir=${join(work, 'never')}`])
    expect(missing.code).toBe(1)
    expect(missing.stderr).toMatch(/^marvel: dataset\.params\.train_shards_path_or_url: shards not found .*train-0004\.tar, .*train-0005\.tar \(MARVEL_IO\)\n$/)
    expect(existsSync(join(work, 'never'))).toBe(false)
    const bad = marvel(['train', ...args.slice(0, 3), 'training.per_gpu_batch_size=eight'])
    expect(bad.code).toBe(1)
    expect(bad.stderr).toMatch(/^marvel: override training\.per_gpu_batch_size=eight: training\.per_gpu_batch_size is a number, got "eight" \(MARVEL_CONFIG\)\n$/)
    writeFileSync(join(work, 'a-file'), '')
    const unwritable = marvel(['train', ...args.slice(0, 2), `experiment.output_dir=${join(work, 'a-file', 'run')}`])
    expect(unwritable.stderr).toMatch(/^marvel: cannot create experiment\.output_dir .*a-file\/run: .* \(MARVEL_IO\)\n$/)
    const unknown = marvel(['train', ...args.slice(0, 3), 'experiment.save_evry=3'])
    expect(unknown.stderr).toMatch(/unknown key experiment\.save_evry/)
  })

  it('train() in a script: onStep sees every step, the signal stops it with a checkpoint', async () => {
    const out = join(work, 'api')
    const config = loadTrainingConfig(tinyYaml, [`dataset.params.train_shards_path_or_url=${shardPattern}`, `experiment.output_dir=${out}`, 'training.max_train_steps=20'])
    const stop = new AbortController()
    const seen: number[] = []
    const result = await train(config, {
      signal: stop.signal,
      progress: false,
      onStep: (r) => {
        seen.push(r.step)
        if (r.step === 7) stop.abort()
      },
    })
    expect(seen).toEqual([1, 2, 3, 4, 5, 6, 7])
    // Evaluation shards are read only when evaluations are due, and then must exist from the start.
    const evalMissing = { ...config, dataset: { ...(config.dataset as object), params: { ...(config.dataset as any).params, eval_shards_path_or_url: join(work, 'val-{0..1}.tar') } } }
    await expect(train({ ...evalMissing, experiment: { ...(config.experiment as object), output_dir: join(work, 'api-eval'), eval_every: 5 } }, { progress: false })).rejects.toMatchObject({
      code: 'MARVEL_IO',
      message: expect.stringContaining('dataset.params.eval_shards_path_or_url: shards not found'),
    })
    const noEval = await train({ ...evalMissing, experiment: { ...(config.experiment as object), output_dir: join(work, 'api-no-eval'), eval_every: 0 }, training: { ...(config.training as object), max_train_steps: 2 } }, { progress: false })
    expect(noEval.step).toBe(2)
    expect(result).toEqual({ step: 7, stopped: true, outputDir: out, checkpoint: join(out, 'checkpoint-7') })
    await expect(train(config, { progress: false, resume: true, rank: 1, worldSize: 2 })).rejects.toMatchObject({ code: 'MARVEL_INVALID_ARGUMENT', message: /world size 2/ })
  })

  it('refuses the stage-2 recipe with several ranks at start: its discriminator is not averaged across them', async () => {
    const config = loadTrainingConfig(join(import.meta.dirname, '..', 'configs', 'marvel_l32_x1_stage2.yaml'), [`experiment.output_dir=${join(work, 'stage2-ranks')}`])
    await expect(train(config, { progress: false, rank: 0, worldSize: 2 })).rejects.toMatchObject({
      code: 'MARVEL_CONFIG',
      message: expect.stringContaining('the stage-2 recipe trains on one rank only (world size 2 given)'),
    })
    expect(existsSync(join(work, 'stage2-ranks'))).toBe(false)
  })
})

describe('make-shards → train → export → Tokenizer', () => {
  it('shards an image folder (resumably), trains on it, and the exported model encodes and decodes', async () => {
    const images = join(work, 'images')
    await imageFolder(images, 20)
    const shards = join(work, 'made')
    const made = marvel(['make-shards', images, '--out', shards, '--per-shard', '6'])
    expect(made.code, made.stderr).toBe(0)
    const pattern = join(shards, 'shard-{000000..000003}.tar')
    expect(made.stdout).toBe(`4 shards, 20 images, 2 classes: ${pattern}\n`)
    // Resumable: a lost shard is rewritten identically, the others are kept.
    const before = readFileSync(join(shards, 'shard-000002.tar'))
    rmSync(join(shards, 'shard-000002.tar'))
    expect(marvel(['make-shards', images, '--out', shards, '--per-shard', '6']).stdout).toContain('(3 already there)')
    expect(readFileSync(join(shards, 'shard-000002.tar')).equals(before)).toBe(true)
    const other = marvel(['make-shards', images, '--out', shards, '--per-shard', '5'])
    expect([other.code, other.stderr]).toEqual([1, expect.stringContaining('holds shards made from another image list or with other settings')])

    const out = join(work, 'from-folder')
    const r = marvel(['train', `config=${tinyYaml}`, `dataset.params.train_shards_path_or_url=${pattern}`, `experiment.output_dir=${out}`, 'training.max_train_steps=12'])
    expect(r.code, r.stderr).toBe(0)
    const trainer = await Trainer.resume(join(out, 'latest'))
    await trainer.exportModel(join(work, 'exported'), { ema: true })
    trainer.dispose()
    const { Tokenizer } = await import('../src/index.js')
    const tok = await Tokenizer.fromPretrained(join(work, 'exported'))
    expect([tok.info.architecture, tok.info.depth, tok.info.imageSize]).toEqual(['marvel', 3, 32])
    const tokens = await tok.encode(join(images, 'dogs', 'img000.png'))
    expect(tokens.shape).toEqual({ batch: 1, depth: 3, numTokens: 4 })
    const [decoded] = await tok.decode(tokens, { depth: 2 })
    expect([decoded.width, decoded.height, decoded.data.length]).toEqual([32, 32, 32 * 32 * 3])
    tok.dispose()
  })

  it('examples/train.mjs runs', () => {
    const r = spawnSync(process.execPath, [join(import.meta.dirname, '..', 'examples', 'train.mjs'), join(work, 'example'), '20'], { encoding: 'utf8', timeout: 120_000 })
    expect(r.status, r.stderr).toBe(0)
    expect(r.stdout).toMatch(/step 20 +loss \d\.\d{4}/)
    expect(existsSync(join(work, 'example', 'reconstruction-depth3.png'))).toBe(true)
    // Run again once finished: nothing left to train, the model is exported from latest.
    const again = spawnSync(process.execPath, [join(import.meta.dirname, '..', 'examples', 'train.mjs'), join(work, 'example'), '20'], { encoding: 'utf8', timeout: 120_000 })
    expect(again.status, again.stderr).toBe(0)
    expect(again.stdout).toContain(`model in ${join(work, 'example', 'model')}`)
  })
})
