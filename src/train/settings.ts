/**
 * What the training loop reads from a config, checked as a whole before anything starts. The loop owns the
 * reference's `experiment` section and `dataset.params` (the core trainer passes them through), and reads a few
 * keys of `training` and `dataset.preprocessing` that the core also checks. Key names are the reference's
 * (bytedance/1d-tokenizer `configs/training/TiTok/**`); marvel's additions are marked.
 */
import { statSync } from 'node:fs'

import { MarvelError } from '../errors.js'
import type { ConfigObject } from './yaml-config.js'

/** Keys of `experiment`: the reference's, plus `keep` (marvel: checkpoints kept). */
export const EXPERIMENT_KEYS = [
  'project', 'name', 'output_dir', 'max_train_examples', 'save_every', 'eval_every', 'generate_every', 'log_every',
  'log_grad_norm_every', 'resume', 'init_weight', 'logging_dir', 'keep',
] as const
/** Keys of `dataset.params`: the reference's, plus `shuffle_buffer_size` (marvel: samples held for shuffling). */
export const DATASET_PARAMS_KEYS = [
  'train_shards_path_or_url', 'eval_shards_path_or_url', 'num_workers_per_gpu', 'pretokenization', 'dataset_with_class_label',
  'dataset_with_text_label', 'shuffle_buffer_size',
] as const

export interface LoopSettings {
  outputDir: string
  saveEvery: number
  /** Evaluation (grid and PSNR per depth) every this many steps; 0: never. `generate_every` adds its own steps. */
  evalEvery: number
  generateEvery: number
  logEvery: number
  keep: number
  resume: boolean
  /** A model folder to start from; null: fresh weights. */
  initWeight: string | null
  seed: number
  batchSize: number
  maxTrainSteps: number
  accumulation: number
  trainData: string
  evalData: string | null
  shuffleBuffer: number
  resizeShorterEdge: number
  cropSize: number
  randomCrop: boolean
  randomFlip: boolean
  /** Validation images in the grid and the PSNR (the reference's `training.num_generated_images`). */
  numGeneratedImages: number
}

function configError(message: string): MarvelError {
  return new MarvelError('MARVEL_CONFIG', message)
}

function section(config: ConfigObject, path: string, required: boolean): ConfigObject {
  let node: unknown = config
  for (const p of path.split('.')) node = node !== null && typeof node === 'object' ? (node as ConfigObject)[p] : undefined
  if (node === undefined || node === null) {
    if (required) throw configError(`the training config has no \`${path}\` section`)
    return {}
  }
  if (typeof node !== 'object' || Array.isArray(node)) throw configError(`\`${path}\` must be a mapping`)
  return node as ConfigObject
}

/** Optimal string alignment distance, case-insensitive (the core's rule for "did you mean"). */
function editDistance(a: string, b: string): number {
  a = a.toLowerCase()
  b = b.toLowerCase()
  const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)))
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1))
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1)
    }
  }
  return d[a.length][b.length]
}

export function nearestKey(key: string, known: readonly string[]): string | undefined {
  const limit = Math.max(2, Math.floor(key.length / 5))
  let best: [number, string] | undefined
  for (const k of known) {
    const d = editDistance(key, k)
    if (d <= limit && (!best || d < best[0])) best = [d, k]
  }
  return best?.[1]
}

function checkKeys(object: ConfigObject, path: string, known: readonly string[]): void {
  const problems = Object.keys(object)
    .filter((k) => !known.includes(k))
    .map((k) => {
      const near = nearestKey(k, known)
      return near ? `unknown key ${path}.${k}; did you mean ${near}?` : `unknown key ${path}.${k} (known keys here: ${known.join(', ')})`
    })
  if (problems.length > 0) throw configError(problems.join('; '))
}

/** Whether `path` is a key the loop knows although the config does not hold it (for overrides). */
export function isLoopKey(path: string): boolean {
  const [a, b, c] = path.split('.')
  if (a === 'experiment' && c === undefined) return (EXPERIMENT_KEYS as readonly string[]).includes(b)
  if (a === 'dataset' && b === 'params' && path.split('.').length === 3) return (DATASET_PARAMS_KEYS as readonly string[]).includes(c)
  // The core checks the names of keys in its own sections when the trainer is created.
  return ['training', 'losses', 'model', 'optimizer', 'lr_scheduler', 'dataset'].includes(a) && b !== undefined
}

function integer(object: ConfigObject, path: string, key: string, fallback: number | undefined, min: number): number {
  const v = object[key] ?? fallback
  if (v === undefined) throw configError(`${path}.${key} is required`)
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) throw configError(`${path}.${key} must be an integer ≥ ${min}, got ${JSON.stringify(v)}`)
  return v
}

function boolean(object: ConfigObject, path: string, key: string, fallback: boolean): boolean {
  const v = object[key] ?? fallback
  if (typeof v !== 'boolean') throw configError(`${path}.${key} must be true or false, got ${JSON.stringify(v)}`)
  return v
}

function string(object: ConfigObject, path: string, key: string): string | null {
  const v = object[key]
  if (v === undefined || v === null || v === '') return null
  if (typeof v !== 'string') throw configError(`${path}.${key} must be a string, got ${JSON.stringify(v)}`)
  return v
}

/** The loop's settings from a resolved config; every key checked, nothing read from disk. */
export function loopSettings(config: ConfigObject): LoopSettings {
  const experiment = section(config, 'experiment', true)
  checkKeys(experiment, 'experiment', EXPERIMENT_KEYS)
  const params = section(config, 'dataset.params', true)
  checkKeys(params, 'dataset.params', DATASET_PARAMS_KEYS)
  const pre = section(config, 'dataset.preprocessing', false)
  const training = section(config, 'training', true)

  const outputDir = string(experiment, 'experiment', 'output_dir')
  if (outputDir === null) throw configError('experiment.output_dir is required: the folder for checkpoints, logs and grids')
  const trainData = string(params, 'dataset.params', 'train_shards_path_or_url')
  if (trainData === null) throw configError('dataset.params.train_shards_path_or_url is required: shards or an image folder to train on')
  const maxTrainSteps = integer(training, 'training', 'max_train_steps', undefined, 1)
  const evalEvery = integer(experiment, 'experiment', 'eval_every', 0, 0)
  const cropSize = integer(pre, 'dataset.preprocessing', 'crop_size', 256, 1)
  const resizeShorterEdge = integer(pre, 'dataset.preprocessing', 'resize_shorter_edge', cropSize, 1)
  if (resizeShorterEdge < cropSize) {
    throw configError(`dataset.preprocessing.resize_shorter_edge (${resizeShorterEdge}) is smaller than crop_size (${cropSize}): the crop would not fit`)
  }
  return {
    outputDir,
    saveEvery: integer(experiment, 'experiment', 'save_every', maxTrainSteps, 1),
    evalEvery,
    generateEvery: integer(experiment, 'experiment', 'generate_every', 0, 0),
    logEvery: integer(experiment, 'experiment', 'log_every', 50, 1),
    keep: integer(experiment, 'experiment', 'keep', 2, 1),
    resume: boolean(experiment, 'experiment', 'resume', false),
    initWeight: string(experiment, 'experiment', 'init_weight'),
    seed: integer(training, 'training', 'seed', 0, 0),
    batchSize: integer(training, 'training', 'per_gpu_batch_size', undefined, 1),
    maxTrainSteps,
    accumulation: integer(training, 'training', 'gradient_accumulation_steps', 1, 1),
    trainData,
    evalData: string(params, 'dataset.params', 'eval_shards_path_or_url'),
    shuffleBuffer: integer(params, 'dataset.params', 'shuffle_buffer_size', 1000, 0),
    resizeShorterEdge,
    cropSize,
    randomCrop: boolean(pre, 'dataset.preprocessing', 'random_crop', true),
    randomFlip: boolean(pre, 'dataset.preprocessing', 'random_flip', true),
    numGeneratedImages: integer(training, 'training', 'num_generated_images', 2, 1),
  }
}

/** `experiment.init_weight` must be a model folder (config.json + weights), as `Trainer.create`'s `init` is. */
export function checkInitWeight(path: string | null): void {
  if (path === null) return
  let isDir = false
  try {
    isDir = statSync(path).isDirectory()
  } catch {
    throw new MarvelError('MARVEL_IO', `experiment.init_weight names ${path}, which does not exist`)
  }
  if (!isDir) {
    throw new MarvelError('MARVEL_CONFIG', `experiment.init_weight must be a model folder (config.json + model.safetensors or pytorch_model.bin), got the file ${path}`)
  }
}

/** The recipe the core will choose (its rule: `training.recipe`, else from the model layout; the reference's defaults). */
export function expectedRecipe(config: ConfigObject): string {
  const training = section(config, 'training', false)
  if (typeof training.recipe === 'string') return training.recipe
  const vq = section(config, 'model.vq_model', false)
  if (vq.is_legacy === false) return 'single'
  return vq.finetune_decoder === false ? 'stage1' : 'stage2'
}

/** Keys naming pretrained networks; each named file must exist before a trainer is built (an L-32 takes a while). */
const NETWORK_KEYS = ['model.vq_model.pretrained_tokenizer_weight', 'losses.perceptual_weights', 'losses.discriminator_weights'] as const

/**
 * Every network file the config names exists, and the recipe's required ones are named. `pretokenized`: the data
 * carries stage 1's codes in a form training uses, so the MaskGIT-VQGAN is not needed.
 */
export function checkNetworks(config: ConfigObject, pretokenized = false): void {
  const recipe = expectedRecipe(config)
  const value = (key: string) => {
    const [a, ...rest] = key.split('.')
    const v = section(config, [a, ...rest.slice(0, -1)].join('.'), false)[rest[rest.length - 1]]
    return typeof v === 'string' && v !== '' ? v : null
  }
  if (recipe === 'stage1' && !pretokenized && value('model.vq_model.pretrained_tokenizer_weight') === null) {
    throw configError('the stage-1 recipe needs model.vq_model.pretrained_tokenizer_weight (the MaskGIT-VQGAN whose codes it learns), or shards made by marvel pretokenize with random_crop and random_flip false')
  }
  if (recipe === 'stage2' && value('losses.perceptual_weights') === null) {
    throw configError('the stage-2 recipe needs losses.perceptual_weights (torchvision convnext_small weights for the perceptual loss)')
  }
  for (const key of NETWORK_KEYS) {
    const path = value(key)
    if (path === null) continue
    try {
      statSync(path)
    } catch {
      throw new MarvelError('MARVEL_IO', `${key} names ${path}, which does not exist`)
    }
  }
}

/** Sections whose values the core's checkpoint carries and keeps: a resumed run trains with the checkpoint's. */
const FIXED_AT_START = ['model', 'losses', 'optimizer', 'lr_scheduler', 'training.max_train_steps', 'training.gradient_accumulation_steps', 'dataset.preprocessing'] as const

function leaves(value: unknown, path: string, out: Map<string, string>): Map<string, string> {
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) leaves(v, `${path}.${k}`, out)
  } else if (value !== undefined) {
    out.set(path, JSON.stringify(value))
  }
  return out
}

/**
 * The keys whose value in `config` differs from the checkpoint's `saved` config, among those a resumed trainer takes
 * from its checkpoint (the model, losses, optimizer, schedule): changing them on resume would be silently ignored.
 */
export function changedSinceCheckpoint(config: ConfigObject, saved: ConfigObject): string[] {
  const changed: string[] = []
  for (const key of FIXED_AT_START) {
    const pick = (root: ConfigObject) => key.split('.').reduce<unknown>((node, p) => (node !== null && typeof node === 'object' ? (node as ConfigObject)[p] : undefined), root)
    const now = leaves(pick(config), key, new Map())
    const then = leaves(pick(saved), key, new Map())
    for (const path of new Set([...now.keys(), ...then.keys()])) {
      if (now.get(path) !== then.get(path)) changed.push(`${path} (checkpoint: ${then.get(path) ?? 'unset'}, now: ${now.get(path) ?? 'unset'})`)
    }
  }
  return changed
}
