/** A one-line progress bar for batch work (`encode  [██████░░░░]  48/100 images  12.3 images/s  ETA 4s`), drawn only on a terminal. */
import type { ProgressStream } from '../hub.js'
import { duration } from '../hub/progress.js'

export interface BatchProgress {
  /** `n` more items are done. */
  tick(n: number): void
  /** End the line (clears nothing: the last state stays visible). */
  done(): void
}

const WIDTH = 24

/** The bar's text for `done` of `total` items after `seconds`. */
export function formatBar(label: string, done: number, total: number, seconds: number, unit = 'images'): string {
  const filled = total > 0 ? Math.round((WIDTH * done) / total) : WIDTH
  const rate = seconds > 0 ? done / seconds : 0
  const eta = rate > 0 ? duration((total - done) / rate) : '?'
  return `${label}  [${'█'.repeat(filled)}${'░'.repeat(WIDTH - filled)}]  ${done}/${total} ${unit}  ${rate.toFixed(1)} ${unit}/s  ETA ${eta}`
}

/** A bar on `stream` (default stderr); a silent no-op when the stream is not a TTY, so pipes and logs stay clean. */
export function batchProgress(label: string, total: number, stream: ProgressStream = process.stderr): BatchProgress {
  if (!stream.isTTY) return { tick: () => {}, done: () => {} }
  const start = Date.now()
  let count = 0
  const draw = () => stream.write(`\r\x1b[2K${formatBar(label, count, total, (Date.now() - start) / 1000)}`)
  draw()
  return {
    tick(n) {
      count += n
      draw()
    },
    done() {
      stream.write('\n')
    },
  }
}
