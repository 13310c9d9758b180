/**
 * What a person watching `marvel train` sees: on a terminal one line redrawn every step (step/total, loss, lr,
 * images/s, ETA); otherwise, in a log file or a job's output, the same text as a line every `log_every` steps.
 */
import { duration } from '../hub/progress.js'

export interface ProgressStream {
  isTTY?: boolean
  write(text: string): unknown
}

export interface ProgressState {
  step: number
  total: number
  loss: number
  lr: number
  imagesPerSecond: number
  /** Seconds per optimizer step lately, for the ETA. */
  secondsPerStep: number
}

export function formatProgress(s: ProgressState): string {
  const eta = s.secondsPerStep > 0 ? duration((s.total - s.step) * s.secondsPerStep) : '?'
  const width = String(s.total).length
  return `step ${String(s.step).padStart(width)}/${s.total}  loss ${s.loss.toFixed(4)}  lr ${s.lr.toExponential(2)}  ${s.imagesPerSecond.toFixed(1)} img/s  ETA ${eta}`
}

export class TrainProgress {
  readonly #stream: ProgressStream
  readonly #every: number
  #drawn = false

  constructor(stream: ProgressStream, logEvery: number) {
    this.#stream = stream
    this.#every = logEvery
  }

  update(s: ProgressState): void {
    if (this.#stream.isTTY) {
      this.#stream.write(`\r\x1b[2K${formatProgress(s)}`)
      this.#drawn = true
    } else if (s.step % this.#every === 0 || s.step === s.total) {
      this.#stream.write(`${formatProgress(s)}\n`)
    }
  }

  /** A message on a line of its own (the bar, if any, is redrawn by the next update). */
  note(text: string): void {
    this.#stream.write(`${this.#drawn ? '\r\x1b[2K' : ''}${text}\n`)
    this.#drawn = false
  }

  done(): void {
    if (this.#drawn) this.#stream.write('\n')
    this.#drawn = false
  }
}
