// Rewrites a safetensors file with every F32 tensor stored as F16 (other dtypes copied), halving a model's size.
// marvel's weights loader converts F16 back to F32 at load time (crates/marvel-core/src/weights.rs,
// `half_precision_floats_are_converted`), so the shipped built-in model can be stored at half the bytes.
//
//   node scripts/builtin-data/f16-safetensors.mjs IN.safetensors OUT.safetensors

import { readFileSync, writeFileSync } from 'node:fs'
import { pathToFileURL } from 'node:url'

const f32 = new Float32Array(1)
const u32 = new Uint32Array(f32.buffer)

/** IEEE binary16 bits of `x`, rounded to nearest, ties to even (as numpy's astype(float16) and torch's .half()). */
export function f16Bits(x) {
  f32[0] = x
  const bits = u32[0]
  const sign = (bits >>> 16) & 0x8000
  const exp = (bits >>> 23) & 0xff
  let mant = bits & 0x7fffff
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0) // inf, NaN (quiet)
  const e = exp - 127 + 15
  if (e >= 0x1f) return sign | 0x7c00 // overflow: inf
  if (e <= 0) {
    // Subnormal half (or zero): shift the implicit-1 mantissa right, rounding to nearest even.
    if (e < -10) return sign
    mant |= 0x800000
    const shift = 14 - e
    const half = mant >>> shift
    const rest = mant & ((1 << shift) - 1)
    const mid = 1 << (shift - 1)
    return sign | (half + (rest > mid || (rest === mid && half & 1) ? 1 : 0))
  }
  const half = (e << 10) | (mant >>> 13)
  const rest = mant & 0x1fff
  // A carry out of the mantissa correctly bumps the exponent (and reaches inf at the top).
  return sign | (half + (rest > 0x1000 || (rest === 0x1000 && half & 1) ? 1 : 0))
}

/** The F16 safetensors bytes of an F32/mixed safetensors buffer; metadata (`__metadata__`) is kept. */
export function safetensorsToF16(buffer) {
  const headerLength = Number(buffer.readBigUInt64LE(0))
  const header = JSON.parse(buffer.subarray(8, 8 + headerLength).toString('utf8'))
  const data = buffer.subarray(8 + headerLength)
  const names = Object.keys(header).filter((k) => k !== '__metadata__')
  names.sort((a, b) => header[a].data_offsets[0] - header[b].data_offsets[0])
  const out = {}
  if (header.__metadata__) out.__metadata__ = header.__metadata__
  const parts = []
  let offset = 0
  for (const name of names) {
    const { dtype, shape, data_offsets: [start, end] } = header[name]
    let bytes = data.subarray(start, end)
    let stored = dtype
    if (dtype === 'F32') {
      const values = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length))
      const halves = new Uint16Array(values.length)
      for (let i = 0; i < values.length; i++) halves[i] = f16Bits(values[i])
      bytes = Buffer.from(halves.buffer)
      stored = 'F16'
    }
    out[name] = { dtype: stored, shape, data_offsets: [offset, offset + bytes.length] }
    parts.push(bytes)
    offset += bytes.length
  }
  let json = JSON.stringify(out)
  // The safetensors format pads the header with spaces to an 8-byte boundary.
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8)
  const head = Buffer.alloc(8)
  head.writeBigUInt64LE(BigInt(Buffer.byteLength(json)))
  return Buffer.concat([head, Buffer.from(json, 'utf8'), ...parts])
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const [input, output] = process.argv.slice(2)
  if (!input || !output) {
    console.error('usage: node scripts/builtin-data/f16-safetensors.mjs IN.safetensors OUT.safetensors')
    process.exit(2)
  }
  writeFileSync(output, safetensorsToF16(readFileSync(input)))
}
