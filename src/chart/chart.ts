/**
 * Line charts drawn without a browser: panels of series on linear axes with "nice" ticks, labels in a built-in
 * bitmap font and a legend above each plot (outside the data area), rendered into an RGB raster and encoded as PNG
 * by sharp. Enough for training curves and rate–distortion plots; not a plotting library.
 */
import sharp from 'sharp'

import { MarvelError, integerParameter, invalidParameter } from '../errors.js'
import { Canvas, type Rgb } from './canvas.js'
import { GLYPH_HEIGHT, textWidth } from './font.js'

export type { Rgb } from './canvas.js'

export interface Series {
  label: string
  /** (x, y) pairs in drawing order; non-finite values are skipped (a gap in the line). */
  points: ReadonlyArray<readonly [number, number]>
  /** Default: the palette colour of the series' index. */
  color?: Rgb
  /** Draw a square marker at every point (default true when the series has at most 64 points). */
  markers?: boolean
}

export interface Panel {
  title: string
  xLabel: string
  series: Series[]
}

export interface ChartSpec {
  /** Pixels. Default 800 x (320 per row of panels). */
  width?: number
  height?: number
  /** Panels per row (default 1). */
  columns?: number
  panels: Panel[]
}

/** Where a panel's data lands: its plot rectangle and the data range mapped onto it. */
export interface PanelLayout {
  plot: { left: number; top: number; width: number; height: number }
  x: { min: number; max: number }
  y: { min: number; max: number }
  xTicks: number[]
  yTicks: number[]
}

/** Distinct colours for series (marvel first, then the codecs, then more). */
export const PALETTE: readonly Rgb[] = [
  [31, 119, 180],
  [255, 127, 14],
  [44, 160, 44],
  [214, 39, 40],
  [148, 103, 189],
  [140, 86, 75],
  [227, 119, 194],
  [127, 127, 127],
]

const INK: Rgb = [40, 40, 40]
const GRID: Rgb = [228, 228, 228]
const MARGIN = { left: 64, right: 16, top: 30, bottom: 40 }
const MAX_SIDE = 8192

/** About `count` round tick values (1, 2 or 5 times a power of ten apart) covering [min, max]. */
export function niceTicks(min: number, max: number, count = 5): number[] {
  const raw = (max - min) / count
  const power = 10 ** Math.floor(Math.log10(raw))
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) ?? 10 * power
  const ticks: number[] = []
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) ticks.push(Math.abs(v) < step * 1e-9 ? 0 : v)
  return ticks
}

/** A tick label: short, exponent form for very large or small magnitudes. */
export function formatTick(v: number, step: number): string {
  if (v === 0) return '0'
  const a = Math.abs(v)
  if (a >= 1e5 || a < 1e-3) return v.toExponential(Math.max(0, Math.min(3, -Math.floor(Math.log10(step / a)))))
  const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9))
  return v.toFixed(Math.min(decimals, 6))
}

function range(values: number[]): { min: number; max: number } {
  if (values.length === 0) return { min: 0, max: 1 }
  let min = Math.min(...values)
  let max = Math.max(...values)
  if (min === max) {
    const d = Math.abs(min) * 0.1 || 1
    min -= d
    max += d
  }
  const pad = (max - min) * 0.06
  return { min: min - pad, max: max + pad }
}

function checkSpec(spec: ChartSpec): Required<Pick<ChartSpec, 'width' | 'height' | 'columns'>> {
  if (!spec || typeof spec !== 'object' || !Array.isArray(spec.panels) || spec.panels.length === 0) {
    throw invalidParameter('renderChart', 'spec.panels', 'a non-empty array of panels', spec?.panels)
  }
  const columns = integerParameter('renderChart', 'columns', spec.columns ?? 1, 1, spec.panels.length)
  const rows = Math.ceil(spec.panels.length / columns)
  const width = integerParameter('renderChart', 'width', spec.width ?? 800, 160 * columns, MAX_SIDE)
  const height = integerParameter('renderChart', 'height', spec.height ?? 320 * rows, 120 * rows, MAX_SIDE)
  // Index loops: forEach skips the holes of sparse arrays.
  for (let i = 0; i < spec.panels.length; i++) {
    const p = spec.panels[i]
    const at = `panels[${i}]`
    if (!p || typeof p !== 'object') throw invalidParameter('renderChart', at, 'a panel { title, xLabel, series }', p)
    if (typeof p.title !== 'string') throw invalidParameter('renderChart', `${at}.title`, 'a string', p.title)
    if (typeof p.xLabel !== 'string') throw invalidParameter('renderChart', `${at}.xLabel`, 'a string', p.xLabel)
    if (!Array.isArray(p.series)) throw invalidParameter('renderChart', `${at}.series`, 'an array of series', p.series)
    for (let k = 0; k < p.series.length; k++) {
      const s = p.series[k]
      const sat = `${at}.series[${k}]`
      if (!s || typeof s !== 'object') throw invalidParameter('renderChart', sat, 'a series { label, points }', s)
      if (typeof s.label !== 'string') throw invalidParameter('renderChart', `${sat}.label`, 'a string', s.label)
      if (!Array.isArray(s.points)) throw invalidParameter('renderChart', `${sat}.points`, 'an array of [x, y] pairs', s.points)
      for (let j = 0; j < s.points.length; j++) {
        const pt = s.points[j]
        if (!Array.isArray(pt) || pt.length !== 2 || typeof pt[0] !== 'number' || typeof pt[1] !== 'number') {
          throw invalidParameter('renderChart', `${sat}.points[${j}]`, 'an [x, y] pair of numbers', pt)
        }
      }
      const c = s.color
      if (c !== undefined && !(Array.isArray(c) && c.length === 3 && c.every((v) => Number.isInteger(v) && v >= 0 && v <= 255))) {
        throw invalidParameter('renderChart', `${sat}.color`, 'an [r, g, b] triple of integers 0..255', c)
      }
    }
  }
  return { width, height, columns }
}

/** The layout `renderChart(spec)` draws with (tests and callers map data to pixels with `toPixel`). */
export function layoutChart(spec: ChartSpec): PanelLayout[] {
  const { width, height, columns } = checkSpec(spec)
  const rows = Math.ceil(spec.panels.length / columns)
  const cellW = Math.floor(width / columns)
  const cellH = Math.floor(height / rows)
  return spec.panels.map((panel, i) => {
    const finite = panel.series.flatMap((s) => s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y)))
    const x = range(finite.map((p) => p[0]))
    const y = range(finite.map((p) => p[1]))
    const left = (i % columns) * cellW + MARGIN.left
    const top = Math.floor(i / columns) * cellH + MARGIN.top
    return {
      plot: { left, top, width: cellW - MARGIN.left - MARGIN.right, height: cellH - MARGIN.top - MARGIN.bottom },
      x,
      y,
      xTicks: niceTicks(x.min, x.max, Math.max(2, Math.floor((cellW - MARGIN.left) / 90))),
      yTicks: niceTicks(y.min, y.max, Math.max(2, Math.floor((cellH - MARGIN.top) / 50))),
    }
  })
}

/** The pixel (x right, y down) where data point (x, y) of a panel is drawn. */
export function toPixel(l: PanelLayout, x: number, y: number): [number, number] {
  const px = l.plot.left + ((x - l.x.min) / (l.x.max - l.x.min)) * (l.plot.width - 1)
  const py = l.plot.top + (1 - (y - l.y.min) / (l.y.max - l.y.min)) * (l.plot.height - 1)
  return [Math.round(px), Math.round(py)]
}

function drawPanel(c: Canvas, panel: Panel, l: PanelLayout): void {
  const { left, top, width, height } = l.plot
  const bottom = top + height - 1
  const step = (t: number[]) => (t.length > 1 ? t[1] - t[0] : 1)
  for (const t of l.yTicks) {
    const [, py] = toPixel(l, l.x.min, t)
    c.line(left, py, left + width - 1, py, GRID)
    const label = formatTick(t, step(l.yTicks))
    c.text(left - 6 - textWidth(label), py - 3, label, INK)
  }
  for (const t of l.xTicks) {
    const [px] = toPixel(l, t, l.y.min)
    c.line(px, top, px, bottom, GRID)
    c.line(px, bottom, px, bottom + 4, INK)
    const label = formatTick(t, step(l.xTicks))
    c.text(px - textWidth(label) / 2, bottom + 8, label, INK)
  }
  c.line(left, top, left, bottom, INK)
  c.line(left, bottom, left + width - 1, bottom, INK)
  c.text(left + (width - textWidth(panel.xLabel)) / 2, bottom + 8 + GLYPH_HEIGHT + 8, panel.xLabel, INK)
  c.text(left - MARGIN.left + 6, top - 20, panel.title, INK, 2)

  // Legend: right-aligned in the strip above the plot, so it never hides data.
  let lx = left + width
  for (const [k, s] of [...panel.series.entries()].reverse()) {
    const color = s.color ?? PALETTE[k % PALETTE.length]
    lx -= textWidth(s.label) + 4
    c.text(lx, top - 12, s.label, INK)
    lx -= 18
    c.line(lx, top - 9, lx + 13, top - 9, color, 3)
    lx -= 12
  }

  for (const [k, s] of panel.series.entries()) {
    const color = s.color ?? PALETTE[k % PALETTE.length]
    const markers = s.markers ?? s.points.length <= 64
    let prev: [number, number] | undefined
    for (const [x, y] of s.points) {
      if (!Number.isFinite(x) || !Number.isFinite(y)) {
        prev = undefined
        continue
      }
      const p = toPixel(l, x, y)
      if (prev) c.line(prev[0], prev[1], p[0], p[1], color, 2)
      if (markers) c.fill(p[0] - 2, p[1] - 2, 5, 5, color)
      prev = p
    }
  }
}

/** The chart as an RGB raster. */
export function drawChart(spec: ChartSpec): { data: Uint8Array; width: number; height: number } {
  const { width, height } = checkSpec(spec)
  const layouts = layoutChart(spec)
  const canvas = new Canvas(width, height)
  spec.panels.forEach((panel, i) => drawPanel(canvas, panel, layouts[i]))
  return { data: canvas.data, width, height }
}

/** The chart as a PNG file's bytes. */
export async function renderChart(spec: ChartSpec): Promise<Buffer> {
  const { data, width, height } = drawChart(spec)
  try {
    return await sharp(data, { raw: { width, height, channels: 3 } }).png().toBuffer()
  } catch (e) {
    throw new MarvelError('MARVEL_IMAGE', `cannot encode the chart: ${(e as Error).message}`, { cause: e })
  }
}
