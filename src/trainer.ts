import { readdirSync } from 'node:fs'
import { join } from 'node:path'

import { native, type NativeBinding } from './binding.js'
import { deviceParameter, requireDevice, type Device } from './device.js'
import { MarvelError, integerParameter, invalidArgument, invalidParameter, optionsParameter } from './errors.js'
import { expectKind, pathParameter } from './files.js'
import { NativeLease } from './lease.js'

type NativeTrainer = Awaited<ReturnType<NativeBinding['createTrainer']>>

function componentRecord(list: Array<{ name: string; value: number }>): Record<string, number> {
  return Object.fromEntries(list.map((c) => [c.name, c.value]))
}

export interface TrainerCreateOptions {
  /** A model folder (TiTok or MARVEL) to start from; a TiTok folder into a MARVEL config drops its VQ codebook. Default: fresh weights. */
  init?: string
  /** Seeds the fresh weights and every random draw of training (depth dropout, a fresh stage-2 discriminator). Default 0. */
  seed?: number
  /**
   * Where to train: `'cpu'`, `'cuda'` or `'cuda:N'` (an addon built with `npm run build:cuda`; the `single` recipe
   * only). Overrides the config's `training.device`; default: that key, else `'cpu'`.
   */
  device?: Device
}

export interface StepOptions {
  /**
   * Stage 1: the batch's MaskGIT-VQGAN codes, `[batch, grid²]` (`[batch, 256]` at 256 px). When absent, the trainer
   * computes them with the MaskGIT-VQGAN named by `model.vq_model.pretrained_tokenizer_weight`; without that key a
   * stage-1 step needs them. Other recipes refuse them.
   */
  proxyCodes?: Int32Array
}

export interface TrainStepResult {
  /** Optimizer steps taken so far (a call that only accumulates gradients leaves it unchanged). */
  step: number
  /** Learning rate of the update this batch contributes to. */
  lr: number
  /** Loss of this batch's forward pass, the one whose gradients this call used. */
  loss: number
  /** The loss's weighted parts (`reconstruction_loss`, `quantizer_loss`, ...). */
  components: Record<string, number>
  /** Global gradient norm before clipping; null when the call only accumulated gradients. */
  gradNorm: number | null
}

export interface GradientsResult {
  /** Optimizer steps taken so far. */
  step: number
  /** The learning rate of the update this batch contributes to. */
  lr: number
  /** Loss of this batch's forward pass. */
  loss: number
  /** The loss's weighted parts, as `TrainStepResult.components`. */
  components: Record<string, number>
  /**
   * Null until this batch completes `gradient_accumulation_steps` of them; then the accumulated gradients,
   * `gradientLength` values: every trainable parameter in parameter order (the same layout on every rank of a run),
   * zeros for a parameter the loss did not reach. Ranks exchange only these, once per optimizer step.
   */
  gradients: Float32Array | null
}

/**
 * Trains a TiTok/MARVEL model in the native core: forward, backward, gradient accumulation, clipping, AdamW with the
 * cosine schedule, EMA. Each call is one async native task; calls on one trainer run in order.
 *
 * ```ts
 * const trainer = await Trainer.create(yaml.parse(readFileSync('single.yaml', 'utf8')), { seed: 42 })
 * for (const batch of batches) console.log((await trainer.step(batch)).loss)
 * await trainer.save('ckpt/latest', { epoch, index })
 * ```
 */
export class Trainer {
  readonly #lease: NativeLease<NativeTrainer>
  /** The loss of the last `gradients()` call, reported by the `applyGradients()` that consumes it. */
  #computed: { loss: number; components: Record<string, number> } | null = null
  /** `'single'`, `'stage1'` or `'stage2'`. */
  readonly recipe: string
  /** Side of the square training images (the config's `dataset.preprocessing.crop_size`). */
  readonly imageSize: number
  /** Depths of the model's tokens (1 for TiTok). */
  readonly depth: number
  /** Optimizer steps taken when the trainer was created or resumed. */
  readonly startStep: number
  /** Values in the flat gradients of `gradients()`: the number of trainable weights. */
  readonly gradientLength: number
  /** What `save(dir, dataPosition)` was given, for a resumed trainer; null for a new one. */
  readonly dataPosition: unknown
  /** Where the weights live and the steps run (`'cpu'` or `'cuda:N'`). */
  readonly device: string

  private constructor(nativeTrainer: NativeTrainer) {
    this.#lease = new NativeLease(nativeTrainer, 'trainer')
    const info = nativeTrainer.info
    this.recipe = info.recipe
    this.imageSize = info.imageSize
    this.depth = info.depth
    this.startStep = info.startStep
    this.gradientLength = info.gradientLength
    this.dataPosition = info.dataPosition == null ? null : JSON.parse(info.dataPosition)
    this.device = info.device
  }

  /** A trainer for `config`, the object a reference-style training yaml parses to (`model`, `losses`, `optimizer`, `lr_scheduler`, `training`, `dataset`). */
  static async create(config: object, options?: TrainerCreateOptions): Promise<Trainer> {
    if (config === null || typeof config !== 'object' || Array.isArray(config)) throw invalidParameter('Trainer.create', 'config', 'a training config object', config)
    options = optionsParameter('Trainer.create', options, ['init', 'seed', 'device'])
    const seed = integerParameter('Trainer.create', 'seed', options.seed ?? 0, 0, 0xffffffff)
    const training = (config as { training?: unknown }).training
    const configured = training !== null && typeof training === 'object' ? (training as { device?: unknown }).device : undefined
    const device = requireDevice('Trainer.create', deviceParameter('Trainer.create', options.device ?? configured))
    if (device !== 'cpu' || configured !== undefined) config = { ...config, training: { ...(training as object), device } }
    let init: string | null = null
    if (options.init !== undefined) {
      init = pathParameter('Trainer.create', 'init', options.init)
      await expectKind(init, 'init model folder', 'directory')
    }
    return new Trainer(await native().createTrainer(JSON.stringify(config), init, seed))
  }

  /** Continues from a checkpoint folder written by `save`: the next steps are those the saving trainer would have taken. */
  static async resume(dir: string): Promise<Trainer> {
    pathParameter('Trainer.resume', 'dir', dir)
    await expectKind(dir, 'checkpoint folder', 'directory')
    // Every file the core may read must be a regular file: a FIFO would block a worker thread forever.
    for (const name of readdirSync(dir)) await expectKind(join(dir, name), 'checkpoint file')
    return new Trainer(await native().resumeTrainer(dir))
  }

  /**
   * Joins rank `rank` of a `worldSize`-rank NCCL group (one process per GPU) from rank 0's `Trainer.ncclId()`;
   * resolves once every rank has joined. Afterwards `step` averages the gradients on the GPUs before clipping and
   * AdamW (use `step`, not `gradients` / `applyGradients`, which exchange them on the host).
   */
  async joinNccl(id: string, rank: number, worldSize: number): Promise<void> {
    if (typeof id !== 'string' || !/^[0-9a-f]{256}$/.test(id)) throw invalidParameter('joinNccl', 'id', 'the 256 hex digits of Trainer.ncclId()', id)
    integerParameter('joinNccl', 'worldSize', worldSize, 1, 65536)
    integerParameter('joinNccl', 'rank', rank, 0, worldSize - 1)
    await this.#run((t) => t.joinNccl(id, rank, worldSize))
  }

  /** A fresh NCCL group id (rank 0 makes it; every rank passes it to `joinNccl`). Needs an addon built with NCCL. */
  static ncclId(): string {
    if (!native().ncclBuilt()) throw new MarvelError('MARVEL_CUDA_UNAVAILABLE', 'Trainer.ncclId: this marvel binary was built without NCCL (build one with `npm run build:cuda`)')
    return native().ncclUniqueId()
  }

  #run<T>(work: (t: NativeTrainer) => Promise<T>): Promise<T> {
    return this.#lease.step(work)
  }

  /** The number of images in `images` (`[batch, S, S, 3]` bytes), checked. */
  #batchOf(where: string, images: unknown): number {
    const frame = this.imageSize * this.imageSize * 3
    if (!(images instanceof Uint8Array) || images.length === 0 || images.length % frame !== 0) {
      throw invalidParameter(where, 'images', `a Uint8Array of [batch, ${this.imageSize}, ${this.imageSize}, 3] RGB bytes (a multiple of ${frame})`, images)
    }
    return images.length / frame
  }

  /** The batch size of `images` and the proxy codes of `options`, checked. */
  #microBatch(where: string, images: Uint8Array, options: StepOptions | undefined): [number, Int32Array | null] {
    const batch = this.#batchOf(where, images)
    options = optionsParameter(where, options, ['proxyCodes'])
    const codes = options.proxyCodes
    if (codes !== undefined && (!(codes instanceof Int32Array) || codes.length === 0 || codes.length % batch !== 0)) {
      throw invalidParameter(where, 'proxyCodes', `an Int32Array of [${batch}, 256] codes`, codes)
    }
    return [batch, codes ?? null]
  }

  /** One micro-batch: `images` is `[batch, S, S, 3]` RGB bytes. Every `gradient_accumulation_steps` calls update the weights. */
  async step(images: Uint8Array, options?: StepOptions): Promise<TrainStepResult> {
    const [batch, codes] = this.#microBatch('step', images, options)
    const r = await this.#run((t) => t.step(images, batch, codes))
    return { step: r.step, lr: r.lr, loss: r.loss, components: componentRecord(r.components), gradNorm: r.gradNorm ?? null }
  }

  /**
   * The first half of `step` for data-parallel training: this rank's loss, its gradients added to this rank's
   * accumulation, the weights untouched. Every `gradient_accumulation_steps`-th call returns the accumulated
   * gradients: average them across ranks (`ProcessGroup.allReduceMean`), then pass the mean to `applyGradients`.
   */
  async gradients(images: Uint8Array, options?: StepOptions): Promise<GradientsResult> {
    const [batch, codes] = this.#microBatch('gradients', images, options)
    if (this.#computed !== null) throw invalidArgument('gradients: the accumulated gradients of the last gradients() call were not applied; pass them (averaged across ranks) to applyGradients() first')
    const r = await this.#run((t) => t.gradients(images, batch, codes))
    const result = { step: r.step, lr: r.lr, loss: r.loss, components: componentRecord(r.components), gradients: r.gradients ?? null }
    if (result.gradients !== null) this.#computed = { loss: result.loss, components: result.components }
    return result
  }

  /**
   * The second half of `step`: clips `gradients` (the rank-averaged accumulated gradients the last `gradients()`
   * call returned) and updates the weights and their EMA. The result reports the loss of that `gradients()` call
   * (this rank's batch).
   */
  async applyGradients(gradients: Float32Array): Promise<TrainStepResult> {
    if (!(gradients instanceof Float32Array) || gradients.length !== this.gradientLength) {
      throw invalidParameter('applyGradients', 'gradients', `a Float32Array of ${this.gradientLength} values (the layout of gradients())`, gradients)
    }
    const computed = this.#computed
    if (computed === null) throw invalidArgument('applyGradients: no gradients() result to apply; call gradients() and await it first, once per applyGradients()')
    this.#computed = null
    const r = await this.#run((t) => t.applyGradients(gradients))
    const components = { ...computed.components, ...componentRecord(r.components) }
    return { step: r.step, lr: r.lr, loss: computed.loss, components, gradNorm: r.gradNorm ?? null }
  }

  /** Writes a checkpoint folder (replacing `dir` only once the new one is complete); `dataPosition` is any JSON value, returned by `resume` as `dataPosition`. */
  async save(dir: string, dataPosition: unknown = null): Promise<void> {
    pathParameter('save', 'dir', dir)
    let json: string | undefined
    try {
      json = JSON.stringify(dataPosition)
    } catch {
      json = undefined
    }
    if (json === undefined) throw invalidParameter('save', 'dataPosition', 'a JSON-serialisable value', dataPosition)
    await this.#run((t) => t.save(dir, json))
  }

  /** Writes a model folder (`config.json` + `model.safetensors`) that `Tokenizer.fromPretrained` loads; `ema` exports the moving average. */
  async exportModel(dir: string, options?: { ema?: boolean }): Promise<void> {
    pathParameter('exportModel', 'dir', dir)
    options = optionsParameter('exportModel', options, ['ema'])
    const ema = options.ema ?? false
    if (typeof ema !== 'boolean') throw invalidParameter('exportModel', 'ema', 'a boolean', ema)
    await this.#run((t) => t.exportModel(dir, ema))
  }

  /**
   * The current weights' reconstructions of `images` (same layout), from the first `depth` depths (all by default);
   * `ema` decodes with the moving average of the weights instead (`training.use_ema`).
   */
  async reconstruct(images: Uint8Array, options?: { depth?: number; ema?: boolean }): Promise<Uint8Array> {
    const batch = this.#batchOf('reconstruct', images)
    options = optionsParameter('reconstruct', options, ['depth', 'ema'])
    const depth = options.depth === undefined ? null : integerParameter('reconstruct', 'depth', options.depth, 1, this.depth)
    const ema = options.ema ?? false
    if (typeof ema !== 'boolean') throw invalidParameter('reconstruct', 'ema', 'a boolean', ema)
    return this.#run((t) => t.reconstruct(images, batch, depth, ema))
  }

  /** Frees the trainer's memory once calls in flight finish. Any later call throws. */
  dispose(): void {
    this.#lease.dispose()
  }

  get disposed(): boolean {
    return this.#lease.disposed
  }
}
