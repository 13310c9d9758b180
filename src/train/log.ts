/**
 * Where the training loop's numbers go. The loop speaks to `TrainingSink`s only; `metrics.jsonl` is one of them
 * (a TensorBoard event writer is another), and only rank 0 has any.
 *
 * Scalar names given to `scalars(step, values)`:
 * - every logged optimizer step: `time` (seconds since the run first started, continuing across resumes), `lr`,
 *   `loss`, `grad_norm`, `images_per_second`, `components/<name>` for each loss part (`reconstruction_loss`, ...),
 *   and `skipped/<reason>` for each kind of skipped data with a non-zero count (totals since the run started);
 * - every evaluation: `time` and `eval/psnr_depth<d>` for d = 1 .. depth (mean PSNR in dB of the fixed validation
 *   batch reconstructed from the first d depths).
 * `image(step, 'reconstruction', png)` carries the evaluation's grid.
 *
 * `<output_dir>/logs/metrics.jsonl` holds one JSON object per line, of two kinds:
 * ```
 * {"step": 12, "time": 34.5, "lr": 0.0001, "loss": 0.53, "components": {"reconstruction_loss": 0.5, ...},
 *  "gradNorm": 1.2, "imagesPerSecond": 3.1, "skipped": {"corrupt_member": 1}}
 * {"step": 100, "time": 60.2, "eval": {"psnr": [24.1, 25.3]}}
 * ```
 * (each on one line). `eval.psnr[0]` is depth 1. `skipped` appears only once something was skipped. A resumed run
 * first drops the lines of steps after its checkpoint, so each step appears once, as the run that continued it saw it.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

import { MarvelError } from '../errors.js'

export interface TrainingSink {
  scalars(step: number, values: Record<string, number>): void
  image(step: number, tag: string, png: Buffer): void
  close(): Promise<void>
}

function prefixed(values: Record<string, number>, prefix: string): Record<string, number> {
  return Object.fromEntries(Object.entries(values).filter(([k]) => k.startsWith(prefix)).map(([k, v]) => [k.slice(prefix.length), v]))
}

export class MetricsJsonl implements TrainingSink {
  readonly path: string

  /** Appends to `<logDir>/metrics.jsonl`; with `resumeStep`, lines of later steps (written before a crash) are dropped first. */
  constructor(logDir: string, resumeStep?: number) {
    this.path = join(logDir, 'metrics.jsonl')
    try {
      mkdirSync(logDir, { recursive: true })
      if (resumeStep !== undefined && existsSync(this.path)) {
        const kept = readFileSync(this.path, 'utf8')
          .split('\n')
          .filter((line) => {
            if (line.trim() === '') return false
            try {
              return JSON.parse(line).step <= resumeStep
            } catch {
              // A line cut by a kill: nothing to keep.
              return false
            }
          })
        const tmp = `${this.path}.tmp`
        writeFileSync(tmp, kept.map((l) => `${l}\n`).join(''))
        renameSync(tmp, this.path)
      }
    } catch (e) {
      throw new MarvelError('MARVEL_IO', `cannot write ${this.path}: ${(e as Error).message}`, { cause: e })
    }
  }

  scalars(step: number, values: Record<string, number>): void {
    const psnr = Object.entries(prefixed(values, 'eval/psnr_depth'))
      .sort(([a], [b]) => Number(a) - Number(b))
      .map(([, v]) => v)
    let line: object
    if (psnr.length > 0) {
      line = { step, time: values.time, eval: { psnr } }
    } else {
      const skipped = prefixed(values, 'skipped/')
      line = {
        step,
        time: values.time,
        lr: values.lr,
        loss: values.loss,
        components: prefixed(values, 'components/'),
        gradNorm: values.grad_norm,
        imagesPerSecond: values.images_per_second,
        ...(Object.keys(skipped).length > 0 ? { skipped } : {}),
      }
    }
    // Infinity (a perfect reconstruction's PSNR) has no JSON form: it is written as null.
    const text = JSON.stringify(line, (_, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v))
    try {
      appendFileSync(this.path, `${text}\n`)
    } catch (e) {
      throw new MarvelError('MARVEL_IO', `cannot write ${this.path}: ${(e as Error).message}`, { cause: e })
    }
  }

  /** Grids are files of their own (`<output_dir>/grids/`); the JSON lines carry only numbers. */
  image(): void {}

  async close(): Promise<void> {}
}
