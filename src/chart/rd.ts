/**
 * The rate–distortion chart of an evaluation: PSNR against bits per image, one line through marvel's depths and
 * one per classic codec; rFID against bits on a second panel when it was computed.
 */
import { integerParameter, invalidParameter, optionsParameter } from '../errors.js'
import type { EvalReport } from '../eval/evaluate.js'
import type { ChartSpec, Panel, Series } from './chart.js'

export function rateDistortionChart(report: EvalReport, options?: { width?: number }): ChartSpec {
  const o = optionsParameter('rateDistortionChart', options, ['width'])
  const depthOk = (d: unknown) => {
    const x = d as EvalReport['depths'][number]
    return !!x && typeof x === 'object' && typeof x.bitsPerImage === 'number' && typeof x.psnr === 'number' && Array.isArray(x.codecs)
  }
  if (!report || typeof report !== 'object' || !Array.isArray(report.depths) || report.depths.length === 0 || !Array.from(report.depths).every(depthOk)) {
    throw invalidParameter('rateDistortionChart', 'report', 'the report evaluate() returns', report)
  }
  const width = o.width === undefined ? 800 : integerParameter('rateDistortionChart', 'width', o.width, 160, 8192)
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
  return { width, panels }
}
