/** Reads the shared parity fixtures (../shared/parity or $MARVEL_PARITY_DIR) for the API-level parity tests. */
import { existsSync, readFileSync } from 'node:fs'
import { join, resolve } from 'node:path'

export const parityDir = process.env.MARVEL_PARITY_DIR ?? resolve(__dirname, '../../../shared/parity')
export const hasParity = existsSync(join(parityDir, 'README.md'))

export interface StoredTensor {
  dtype: string
  shape: number[]
  /** Values as numbers (I64 converted; fixtures hold small ids). */
  values: Float64Array
}

/** Minimal safetensors reader: header JSON + little-endian data. */
export function readSafetensors(path: string): Record<string, StoredTensor> {
  const buf = readFileSync(path)
  const n = Number(buf.readBigUInt64LE(0))
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>
  const base = 8 + n
  const out: Record<string, StoredTensor> = {}
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue
    const bytes = buf.subarray(base + t.data_offsets[0], base + t.data_offsets[1])
    const copy = new Uint8Array(bytes).buffer
    let values: Float64Array
    switch (t.dtype) {
      case 'F32':
        values = Float64Array.from(new Float32Array(copy))
        break
      case 'I64':
        values = Float64Array.from(new BigInt64Array(copy), Number)
        break
      case 'I32':
        values = Float64Array.from(new Int32Array(copy))
        break
      case 'U8':
        values = Float64Array.from(new Uint8Array(copy))
        break
      default:
        throw new Error(`unsupported dtype ${t.dtype} in ${path}`)
    }
    out[name] = { dtype: t.dtype, shape: t.shape, values }
  }
  return out
}

export function maxAbsDiff(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  let m = 0
  for (let i = 0; i < expected.length; i++) m = Math.max(m, Math.abs(actual[i] - expected[i]))
  return m
}

/** A parity suite's title: says why it is skipped only when it is (vitest prints the title either way). */
export const parityTitle = (title: string): string =>
  hasParity ? title : `${title} (skipped: parity fixtures not found at ../shared/parity or $MARVEL_PARITY_DIR)`
