/** An RGB raster with the few primitives a line chart needs: rectangles, thick lines and bitmap text. */
import { GLYPH_GAP, GLYPH_HEIGHT, GLYPH_WIDTH, glyph } from './font.js'

export type Rgb = readonly [number, number, number]

export class Canvas {
  readonly data: Uint8Array

  constructor(
    readonly width: number,
    readonly height: number,
    background: Rgb = [255, 255, 255],
  ) {
    this.data = new Uint8Array(width * height * 3)
    this.fill(0, 0, width, height, background)
  }

  /** Pixels outside the canvas are ignored (lines may run past an edge). */
  set(x: number, y: number, c: Rgb): void {
    x = Math.round(x)
    y = Math.round(y)
    if (x < 0 || y < 0 || x >= this.width || y >= this.height) return
    const i = (y * this.width + x) * 3
    this.data[i] = c[0]
    this.data[i + 1] = c[1]
    this.data[i + 2] = c[2]
  }

  get(x: number, y: number): Rgb {
    const i = (y * this.width + x) * 3
    return [this.data[i], this.data[i + 1], this.data[i + 2]]
  }

  fill(x: number, y: number, w: number, h: number, c: Rgb): void {
    for (let j = Math.max(0, Math.round(y)); j < Math.min(this.height, Math.round(y + h)); j++) {
      for (let i = Math.max(0, Math.round(x)); i < Math.min(this.width, Math.round(x + w)); i++) this.set(i, j, c)
    }
  }

  /** A line `thickness` pixels wide (a square brush stamped along a DDA walk). */
  line(x0: number, y0: number, x1: number, y1: number, c: Rgb, thickness = 1): void {
    const steps = Math.max(1, Math.ceil(Math.max(Math.abs(x1 - x0), Math.abs(y1 - y0))))
    const r = (thickness - 1) / 2
    for (let s = 0; s <= steps; s++) {
      const x = x0 + ((x1 - x0) * s) / steps
      const y = y0 + ((y1 - y0) * s) / steps
      if (thickness <= 1) this.set(x, y, c)
      else this.fill(Math.round(x - r), Math.round(y - r), thickness, thickness, c)
    }
  }

  /** `text` with its top-left corner at (x, y), each font pixel `scale` x `scale`. */
  text(x: number, y: number, text: string, c: Rgb, scale = 1): void {
    let cx = Math.round(x)
    for (const ch of text) {
      const rows = glyph(ch)
      for (let r = 0; r < GLYPH_HEIGHT; r++) {
        for (let k = 0; k < GLYPH_WIDTH; k++) if (rows[r][k] === '#') this.fill(cx + k * scale, Math.round(y) + r * scale, scale, scale, c)
      }
      cx += (GLYPH_WIDTH + GLYPH_GAP) * scale
    }
  }
}
