/**
 * The rate–distortion chart of an evaluation: PSNR against bits per image, one line through marvel's depths and
 * one per classic codec; rFID against bits on a second panel when it was computed.
 */
import type { EvalReport } from '../eval/evaluate.js'
import type { ChartSpec, Panel, Series } from './chart.js'

export function rateDistortionChart(report: EvalReport, options: { width?: number } = {}): ChartSpec {
  const marvel: Series = { label: 'marvel', points: report.depths.map((d) => [d.bitsPerImage, d.psnr] as const) }
  const codecs = [...new Set(report.depths.flatMap((d) => d.codecs.map((c) => c.codec)))]
  const codecSeries: Series[] = codecs.map((codec) => ({
    label: codec,
    points: report.depths.flatMap((d) => d.codecs.filter((c) => c.codec === codec).map((c) => [c.bitsPerImage, c.psnr] as const)),
  }))
  const panels: Panel[] = [{ title: 'PSNR (dB)', xLabel: 'bits per image', series: [marvel, ...codecSeries] }]
  if (report.depths.some((d) => d.rfid !== null)) {
    panels.push({ title: 'rFID', xLabel: 'bits per image', series: [{ label: 'marvel', points: report.depths.map((d) => [d.bitsPerImage, d.rfid ?? NaN] as const) }] })
  }
  return { width: options.width ?? 800, panels }
}
