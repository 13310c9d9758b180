/**
 * The training loop: a config in, a trained model's checkpoints out. It checks the whole config and the data before
 * the first step, streams batches, steps the core `Trainer`, logs, evaluates, and checkpoints every
 * `experiment.save_every` steps and when asked to stop (`signal`, which the CLI fires on SIGINT/SIGTERM). A resumed
 * run continues from `<output_dir>/latest` with the data stream where it stood, so its steps are those the
 * uninterrupted run would have taken.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { basename, join } from 'node:path'

import { BatchStream } from '../data/batches.js'
import { resolveSource, unitsOfRank, type DataSource } from '../data/shards.js'
import { SampleStream, type StreamPosition } from '../data/stream.js'
import { MarvelError, integerParameter, invalidParameter, optionsParameter } from '../errors.js'
import { Trainer } from '../trainer.js'
import { pointLatest, removeLeftovers, resumePoint, saveCheckpoint } from './checkpoints.js'
import { evaluate, validationBatch } from './evaluate.js'
import { MetricsJsonl, type TrainingSink } from './log.js'
import { TrainProgress, type ProgressStream } from './progress.js'
import { agreeToStop, gatherPositions, groupOf, joinDevices, pinLocalGpu, ranksOf, stepBatch, type Ranks } from './data-parallel.js'
import type { ProcessGroup } from './ranks.js'
import { TensorBoardWriter } from './tensorboard.js'
import { changedSinceCheckpoint, checkInitWeight, checkNetworks, expectedRecipe, loopSettings, type LoopSettings } from './settings.js'
import { resolveReferences, type ConfigObject } from './yaml-config.js'

export interface TrainOptions {
  /** Stop after the current optimizer step, save a checkpoint and resolve. */
  signal?: AbortSignal
  /** Called after every optimizer step (awaited). */
  onStep?: (report: StepReport) => void | Promise<void>
  /** Continue from `<output_dir>/latest` when there is one (default: the config's `experiment.resume`). */
  resume?: boolean
  /** This process's rank and the number of ranks (default: `RANK` / `WORLD_SIZE`, else a single rank). */
  rank?: number
  worldSize?: number
  /** Where progress and notes go (default `process.stderr`); `false` for silence. */
  progress?: ProgressStream | false
}

export interface StepReport {
  step: number
  maxTrainSteps: number
  /** Seconds since the run first started (across resumes). */
  time: number
  lr: number
  /** Mean over the step's micro-batches. */
  loss: number
  components: Record<string, number>
  gradNorm: number
  imagesPerSecond: number
  /** Data skipped since the run started, by reason. */
  skipped: Partial<Record<string, number>>
}

export interface TrainResult {
  /** Optimizer steps taken in all (this run and the ones it resumed). */
  step: number
  /** True when `signal` stopped the run before `max_train_steps`. */
  stopped: boolean
  outputDir: string
  /** The last checkpoint this process wrote (rank 0), or null. */
  checkpoint: string | null
}

/** What every checkpoint carries besides the trainer's state (the `dataPosition` of `Trainer.save`). */
interface SavedPosition {
  format: 'marvel-data-position'
  version: 1
  /** Seconds trained before this checkpoint, so `time` in the logs continues. */
  time: number
  /** Each rank's data position, rank r at index r: ranks read different data, so each continues its own stream. */
  ranks: StreamPosition[]
}

/** Whether the data's first sample carries pretokenized codes (`marvel pretokenize` gives every sample some). */
async function hasCodes(source: DataSource): Promise<boolean> {
  if (source.kind !== 'shards') return false
  const stream = await SampleStream.open(source, { seed: 0, bufferSize: 0, ordered: true })
  try {
    return (await stream.next()).codes !== undefined
  } finally {
    await stream.close()
  }
}

/** The sinks rank 0 writes to; the one place a new kind of log joins. */
async function createSinks(logDir: string, resumeStep: number): Promise<TrainingSink[]> {
  return [new MetricsJsonl(logDir, resumeStep), await TensorBoardWriter.open(logDir, resumeStep > 0 ? { restartAt: resumeStep + 1 } : {})]
}

/** This rank's part of a checkpoint's data position (null for a checkpoint saved outside `train`). */
function savedPosition(value: unknown, checkpoint: string, ranks: Ranks): { time: number; stream: StreamPosition } | null {
  if (value === null || value === undefined) return null
  const p = value as SavedPosition
  if (p.format !== 'marvel-data-position' || p.version !== 1 || typeof p.time !== 'number' || !Array.isArray(p.ranks)) {
    throw new MarvelError('MARVEL_CHECKPOINT', `${checkpoint} holds a data position marvel train did not write`)
  }
  if (p.ranks.length !== ranks.worldSize) {
    throw new MarvelError('MARVEL_CHECKPOINT', `${checkpoint} was saved by ${p.ranks.length} rank(s); resume it with the same world size, not ${ranks.worldSize}`)
  }
  return { time: p.time, stream: p.ranks[ranks.rank] }
}

/** A resumed trainer keeps its checkpoint's model, losses, optimizer and schedule: a config that changed them is refused. */
function checkUnchanged(latest: string, config: ConfigObject, outputDir: string): void {
  let saved: ConfigObject
  try {
    saved = JSON.parse(readFileSync(join(latest, 'config.json'), 'utf8'))
  } catch (e) {
    throw new MarvelError('MARVEL_CHECKPOINT', `cannot read ${join(latest, 'config.json')}: ${(e as Error).message}`, { cause: e })
  }
  const changed = changedSinceCheckpoint(config, saved)
  if (changed.length > 0) {
    throw new MarvelError('MARVEL_CONFIG', `the run in ${outputDir} was started with other settings, which its checkpoint keeps: ${changed.join('; ')}; start a new run (another experiment.output_dir) to change them`)
  }
}

/**
 * Micro-batches until the trainer updates the weights (`gradient_accumulation_steps` of them): the update's step,
 * lr and gradient norm, the data position after its last batch, and the loss and its parts averaged over the batches.
 */
async function optimizerStep(trainer: Trainer, data: BatchStream, useCodes: boolean, group: ProcessGroup | null) {
  let micro = 0
  let images = 0
  let lossSum = 0
  const parts: Record<string, number> = {}
  for (;;) {
    const batch = await data.next()
    const r = await stepBatch(trainer, { images: batch.images, ...(useCodes && batch.codes ? { proxyCodes: batch.codes } : {}) }, group)
    micro++
    images += batch.size
    lossSum += r.loss
    for (const [k, v] of Object.entries(r.components)) parts[k] = (parts[k] ?? 0) + v
    if (r.gradNorm !== null) {
      const components = Object.fromEntries(Object.entries(parts).map(([k, v]) => [k, v / micro]))
      return { result: { step: r.step, lr: r.lr, gradNorm: r.gradNorm, position: batch.position }, loss: lossSum / micro, components, images }
    }
  }
}

/** A logged step's scalars under the names `TrainingSink` documents. */
function stepScalars(report: StepReport): Record<string, number> {
  const values: Record<string, number> = {
    time: report.time,
    lr: report.lr,
    loss: report.loss,
    grad_norm: report.gradNorm,
    images_per_second: report.imagesPerSecond,
  }
  for (const [k, v] of Object.entries(report.components)) values[`components/${k}`] = v
  for (const [k, v] of Object.entries(report.skipped)) if (v) values[`skipped/${k}`] = v
  return values
}

function evalDue(s: LoopSettings, step: number): boolean {
  return (s.evalEvery > 0 && step % s.evalEvery === 0) || (s.generateEvery > 0 && step % s.generateEvery === 0)
}

/**
 * Trains with `config` (a parsed reference-style training config; `${...}` references are resolved here).
 *
 * ```js
 * const config = loadTrainingConfig('configs/tiny.yaml', ['training.max_train_steps=200'])
 * const stop = new AbortController()
 * process.on('SIGINT', () => stop.abort())
 * await train(config, { signal: stop.signal, onStep: (r) => console.log(r.step, r.loss) })
 * ```
 */
export async function train(config: object, options?: TrainOptions): Promise<TrainResult> {
  if (config === null || typeof config !== 'object' || Array.isArray(config)) throw invalidParameter('train', 'config', 'a training config object', config)
  options = optionsParameter('train', options, ['signal', 'onStep', 'resume', 'rank', 'worldSize', 'progress'])
  const { signal, onStep, resume: resumeOption, rank, worldSize, progress: stream } = options
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw invalidParameter('train', 'signal', 'an AbortSignal', signal)
  if (onStep !== undefined && typeof onStep !== 'function') throw invalidParameter('train', 'onStep', 'a function', onStep)
  if (resumeOption !== undefined && typeof resumeOption !== 'boolean') throw invalidParameter('train', 'resume', 'a boolean', resumeOption)
  if (rank !== undefined) integerParameter('train', 'rank', rank, 0, 1 << 20)
  if (worldSize !== undefined) integerParameter('train', 'worldSize', worldSize, 1, 1 << 20)
  if (stream !== undefined && stream !== false && (stream === null || typeof stream !== 'object' || typeof stream.write !== 'function')) {
    throw invalidParameter('train', 'progress', 'false or a writable stream', stream)
  }
  const resolved = resolveReferences(config as ConfigObject)
  const s = loopSettings(resolved)
  const ranks = ranksOf({ rank: options.rank, worldSize: options.worldSize })
  if (ranks.worldSize > 1 && expectedRecipe(resolved) === 'stage2') {
    // Stage 2 steps its discriminator on each rank's own batch after the update, and nothing averages those gradients.
    throw new MarvelError(
      'MARVEL_CONFIG',
      `the stage-2 recipe trains on one rank only (world size ${ranks.worldSize} given): its discriminator's gradients are not averaged across ranks, so each rank would train a different discriminator`,
    )
  }
  const group = groupOf(ranks)
  const writer = ranks.rank === 0
  // Rank 0 speaks for the run; the other ranks' lines would only repeat its steps.
  const silent = options.progress === false || !writer
  const progress = new TrainProgress(silent || options.progress === false ? { write: () => true } : (options.progress ?? process.stderr), s.logEvery)

  // Everything that can be checked without training is checked before the trainer is built.
  const source = resolveSource(s.trainData, 'dataset.params.train_shards_path_or_url')
  // Evaluation data is read only when evaluations are due; then it must exist from the start too.
  const evaluates = s.evalEvery > 0 || s.generateEvery > 0
  const evalSource = evaluates && s.evalData ? resolveSource(s.evalData, 'dataset.params.eval_shards_path_or_url') : source
  // Pretokenized codes describe the centre crop: they are the batch's targets only when training crops just that.
  const centreCrop = !s.randomCrop && !s.randomFlip && s.resizeShorterEdge === s.cropSize
  const pretokenized = await hasCodes(source)
  checkNetworks(resolved, pretokenized && centreCrop)
  const point = resumePoint(s.outputDir)
  const latest = point?.dir ?? null
  const resume = options.resume ?? s.resume
  if (latest && !resume) {
    throw new MarvelError('MARVEL_INVALID_ARGUMENT', `${s.outputDir} already holds a run (${point!.recovered ? 'its newest checkpoint' : 'latest'}: ${latest}); resume it (--resume, or experiment.resume: true) or choose another experiment.output_dir`)
  }
  if (point?.recovered) progress.note(`marvel: ${join(s.outputDir, 'latest')} is missing or names no folder; continuing from the newest checkpoint, ${latest}`)
  // A resumed run's weights come from its checkpoint.
  if (!latest) checkInitWeight(s.initWeight)
  const part = unitsOfRank(source.units, ranks.rank, ranks.worldSize)
  const mine: DataSource = { ...source, units: part.units }

  if (latest) checkUnchanged(latest, resolved, s.outputDir)
  else if (resume) progress.note(`marvel: no checkpoint in ${s.outputDir} yet; starting a new run`)
  if (writer) {
    // Before the trainer is built (an L-32 takes a while): an output folder that cannot be made fails now.
    try {
      mkdirSync(join(s.outputDir, 'grids'), { recursive: true })
    } catch (e) {
      throw new MarvelError('MARVEL_IO', `cannot create experiment.output_dir ${s.outputDir}: ${(e as Error).message}`, { cause: e })
    }
  }
  pinLocalGpu(ranks, (resolved.training as ConfigObject | undefined)?.device)
  const trainer = latest ? await Trainer.resume(latest) : await Trainer.create(resolved, { seed: s.seed, ...(s.initWeight ? { init: s.initWeight } : {}) })
  await joinDevices(trainer, group)
  let data: BatchStream | undefined
  const sinks: TrainingSink[] = []
  let checkpoint: string | null = null
  try {
    if (trainer.imageSize !== s.cropSize) {
      throw new MarvelError('MARVEL_CONFIG', `dataset.preprocessing.crop_size is ${s.cropSize} but the ${latest ? 'checkpoint\'s' : ''} model takes ${trainer.imageSize}x${trainer.imageSize} images`)
    }
    const saved = latest ? savedPosition(trainer.dataPosition, latest, ranks) : null
    const stream = await SampleStream.open(
      mine,
      {
        seed: s.seed,
        bufferSize: s.shuffleBuffer,
        sampleStride: part.sampleStride,
        sampleOffset: part.sampleOffset,
        rank: ranks.rank,
        onSkip: (k) => progress.note(`marvel: skipped ${k.where}: ${k.message}`),
      },
      saved?.stream,
    )
    data = new BatchStream(stream, {
      augmentation: { resizeShorterEdge: s.resizeShorterEdge, cropSize: s.cropSize, randomCrop: s.randomCrop, randomFlip: s.randomFlip },
      batchSize: s.batchSize,
      onSkip: (k) => progress.note(`marvel: skipped ${k.where}: ${k.message}`),
    })
    const validation = writer && evaluates ? await validationBatch(evalSource, s.numGeneratedImages, s.cropSize) : null
    // The reference evaluates (and exports) the EMA model when it keeps one.
    const useEma = (resolved.training as ConfigObject | undefined)?.use_ema === true
    if (writer) {
      for (const n of removeLeftovers(s.outputDir)) progress.note(`marvel: removed ${join(s.outputDir, n)}, left half-written by an earlier run`)
      // The checkpoint loaded, so `latest` may name it again.
      if (point?.recovered) pointLatest(s.outputDir, basename(latest!))
      // A new run keeps no lines of an earlier one that saved no checkpoint (step 0: every line goes).
      sinks.push(...await createSinks(join(s.outputDir, 'logs'), latest ? trainer.startStep : 0))
    }
    if (latest) progress.note(`marvel: resuming ${latest} at step ${trainer.startStep}`)
    const useCodes = pretokenized && centreCrop && trainer.recipe === 'stage1'
    if (pretokenized && !useCodes && trainer.recipe === 'stage1') {
      progress.note('marvel: the shards\' pretokenized codes describe centre crops; with random_crop or random_flip (or resize_shorter_edge ≠ crop_size) the trainer encodes each batch itself')
    }

    let step = trainer.startStep
    let position: StreamPosition = saved?.stream ?? stream.position()
    const timeBase = saved?.time ?? 0
    const started = performance.now()
    const now = () => timeBase + (performance.now() - started) / 1000
    let window = { time: now(), images: 0 }
    let stepStart = now()
    let secondsPerStep = 0
    const stopped = () => options.signal?.aborted === true

    // Ranks decide together, so all stop after the same step and none waits alone in a collective.
    let stopping = await agreeToStop(group, stopped())
    while (step < s.maxTrainSteps && !stopping) {
      const { result: r, loss, components, images } = await optimizerStep(trainer, data, useCodes, group)
      window.images += images
      position = r.position
      step = r.step
      const t = now()
      secondsPerStep = secondsPerStep === 0 ? t - stepStart : 0.9 * secondsPerStep + 0.1 * (t - stepStart)
      stepStart = t
      const report: StepReport = {
        step,
        maxTrainSteps: s.maxTrainSteps,
        time: t,
        lr: r.lr,
        loss,
        components,
        gradNorm: r.gradNorm,
        imagesPerSecond: window.images / Math.max(t - window.time, 1e-9),
        skipped: position.skipped,
      }
      progress.update({ step, total: s.maxTrainSteps, loss: report.loss, lr: report.lr, imagesPerSecond: report.imagesPerSecond, secondsPerStep })
      if (writer && step % s.logEvery === 0) {
        for (const sink of sinks) sink.scalars(step, stepScalars(report))
        window = { time: t, images: 0 }
      }
      await options.onStep?.(report)
      if (writer && validation && evalDue(s, step)) {
        const ev = await evaluate(trainer, validation, { ema: useEma })
        writeFileSync(join(s.outputDir, 'grids', `step-${step}.png`), ev.png)
        const values: Record<string, number> = { time: now() }
        ev.psnr.forEach((p, d) => (values[`eval/psnr_depth${d + 1}`] = p))
        for (const sink of sinks) {
          sink.scalars(step, values)
          sink.image(step, 'reconstruction', ev.png)
        }
      }
      stopping = await agreeToStop(group, stopped())
      if (step % s.saveEvery === 0 || step >= s.maxTrainSteps || stopping) {
        const positions = await gatherPositions(group, position)
        if (writer) {
          const saving: SavedPosition = { format: 'marvel-data-position', version: 1, time: now(), ranks: positions }
          checkpoint = await saveCheckpoint(trainer, s.outputDir, step, saving, s.keep)
        }
      }
    }
    progress.done()
    return { step, stopped: step < s.maxTrainSteps, outputDir: s.outputDir, checkpoint }
  } finally {
    await data?.close()
    for (const sink of sinks) await sink.close()
    trainer.dispose()
    group?.close()
  }
}
