/**
 * The lifetime of a native model held by a JavaScript object (`Tokenizer`, `MaskgitVqgan`, `Trainer`): calls that
 * started before `dispose()` finish on the model they started with, the native memory is freed when the last of
 * them ends, and model steps run one after another (the core's compute pool is already parallel inside a step; two
 * steps at once would only contend for it and double peak memory).
 */
import { invalidArgument } from './errors.js'

/** Runs tasks one after another, in call order; a failed task does not stop the ones queued behind it. */
export class SerialQueue {
  #tail: Promise<unknown> = Promise.resolve()

  run<T>(task: () => Promise<T>): Promise<T> {
    const result = this.#tail.then(task, task)
    this.#tail = result.catch(() => undefined)
    return result
  }
}

export class NativeLease<M extends { dispose(): void }> {
  readonly #model: M
  readonly #what: string
  #disposed = false
  /** Calls started and not yet finished; the model is freed when this drops to zero after dispose(). */
  #pending = 0
  readonly queue = new SerialQueue()

  /** `what` names the holder in the error a call after dispose() gets ("this tokenizer was disposed"). */
  constructor(model: M, what: string) {
    this.#model = model
    this.#what = what
  }

  /** Runs `work` against the model, keeping it alive until `work` ends even if dispose() comes first. */
  async use<T>(work: (model: M) => Promise<T>): Promise<T> {
    if (this.#disposed) throw invalidArgument(`this ${this.#what} was disposed`)
    this.#pending++
    try {
      return await work(this.#model)
    } finally {
      if (--this.#pending === 0 && this.#disposed) this.#model.dispose()
    }
  }

  /** One queued model step: `use` + the serial queue. */
  step<T>(work: (model: M) => Promise<T>): Promise<T> {
    return this.use((model) => this.queue.run(() => work(model)))
  }

  dispose(): void {
    if (this.#disposed) return
    this.#disposed = true
    if (this.#pending === 0) this.#model.dispose()
  }

  get disposed(): boolean {
    return this.#disposed
  }
}
