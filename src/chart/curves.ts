/**
 * Training curves from a run's `logs/metrics.jsonl` (one JSON object per line, written by the training loop):
 * training lines `{"step", "time", "lr", "loss", "components", "gradNorm", "imagesPerSecond"}` and evaluation
 * lines `{"step", "time", "eval": {"psnr": [depth 1, depth 2, ...]}}`. Lines that are not such objects are
 * skipped and counted, so a log cut short by a crash still plots.
 */
import { integerParameter, invalidParameter, optionsParameter } from '../errors.js'
import type { ChartSpec, Series } from './chart.js'

export interface TrainingCurves {
  /** (step, loss) of the training lines. */
  loss: Array<[number, number]>
  /** (step, learning rate). */
  lr: Array<[number, number]>
  /** Per depth (index 0 = depth 1): (step, PSNR dB) of the evaluation lines. */
  psnr: Array<Array<[number, number]>>
  /** Lines read as data. */
  lines: number
  /** Lines skipped: not JSON, not an object, or without a numeric step and any metric. */
  skipped: number
}

const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v)

/** The curves of a metrics.jsonl text. */
export function parseMetricsLog(text: string): TrainingCurves {
  if (typeof text !== 'string') throw invalidParameter('parseMetricsLog', 'text', 'the text of a metrics.jsonl file', text)
  const out: TrainingCurves = { loss: [], lr: [], psnr: [], lines: 0, skipped: 0 }
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue
    let row: unknown
    try {
      row = JSON.parse(line)
    } catch {
      out.skipped++
      continue
    }
    const r = row as { step?: unknown; loss?: unknown; lr?: unknown; eval?: { psnr?: unknown } }
    if (!r || typeof r !== 'object' || Array.isArray(r) || !isNum(r.step)) {
      out.skipped++
      continue
    }
    const psnr = r.eval && typeof r.eval === 'object' && Array.isArray(r.eval.psnr) ? r.eval.psnr : undefined
    const used = isNum(r.loss) || isNum(r.lr) || (psnr !== undefined && psnr.some(isNum))
    if (!used) {
      out.skipped++
      continue
    }
    out.lines++
    if (isNum(r.loss)) out.loss.push([r.step, r.loss])
    if (isNum(r.lr)) out.lr.push([r.step, r.lr])
    psnr?.forEach((v, d) => {
      if (!isNum(v)) return
      while (out.psnr.length <= d) out.psnr.push([])
      out.psnr[d].push([r.step as number, v])
    })
  }
  return out
}

/** Loss, learning rate and (when evaluated) PSNR per depth against the step. */
export function trainingChart(curves: TrainingCurves, options?: { width?: number }): ChartSpec {
  const o = optionsParameter('trainingChart', options, ['width'])
  const pairs = (v: unknown) => Array.isArray(v)
  if (!curves || typeof curves !== 'object' || !pairs(curves.loss) || !pairs(curves.lr) || !pairs(curves.psnr)) {
    throw invalidParameter('trainingChart', 'curves', 'the curves parseMetricsLog returns', curves)
  }
  const width = o.width === undefined ? 900 : integerParameter('trainingChart', 'width', o.width, 160, 8192)
  const panels = [
    { title: 'Loss', xLabel: 'step', series: [{ label: 'loss', points: curves.loss }] as Series[] },
    { title: 'Learning rate', xLabel: 'step', series: [{ label: 'lr', points: curves.lr }] as Series[] },
  ]
  if (curves.psnr.length > 0) {
    panels.push({ title: 'PSNR (dB)', xLabel: 'step', series: curves.psnr.map((points, d) => ({ label: `depth ${d + 1}`, points })) })
  }
  return { width, panels }
}
