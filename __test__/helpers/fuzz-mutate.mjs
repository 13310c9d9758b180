// Seeded mutators for the fuzz suite (plain JS: the forked worker imports it without a TypeScript loader).
// Input `index` of a run with `seed` is a pure function of (seed, index, the seed files), so any failing input can
// be rebuilt alone: `mutateInput(klass, seeds, seed, index)`.

import { concat, editJson, mutateBytes, rng, text, untext } from './fuzz-bytes.mjs'
import { binParts, crc32, isSafetensors, mutateBin, mutateSafetensors } from './fuzz-checkpoints.mjs'

export { rng } from './fuzz-bytes.mjs'
export { binBytes, binParts, crc32, statePickle, storedZip, writeSafetensors } from './fuzz-checkpoints.mjs'

function mutateConfig(b, r) {
  if (r.chance(0.3)) return mutateBytes(b, r, [])
  const value = JSON.parse(untext.decode(b))
  for (let k = 1 + r.int(3); k > 0; k--) editJson(value, r)
  return text.encode(JSON.stringify(value, null, r.chance(0.5) ? 2 : 0))
}

// ---- images: byte damage, plus the size fields of PNG and GIF headers ----

function mutateImage(b, r, others) {
  const isPng = b[0] === 0x89 && b[1] === 0x50
  const isGif = b[0] === 0x47 && b[1] === 0x49
  if (isPng && b.length > 33 && r.chance(0.2)) {
    // IHDR width/height (bytes 16..24) with its CRC fixed, so the decoder believes them.
    const out = b.slice()
    const v = new DataView(out.buffer)
    v.setUint32(r.pick([16, 20]), r.pick([0, 1, 65535, 1_000_000, 0x7fffffff, 0xffffffff]))
    v.setUint32(29, crc32(out.subarray(12, 29)))
    return out
  }
  const isTiff = (b[0] === 0x49 && b[1] === 0x49) || (b[0] === 0x4d && b[1] === 0x4d)
  if (isTiff && b.length > 16 && r.chance(0.3)) {
    // One IFD entry's value (width, height, strip offsets and byte counts, bits per sample, ...).
    const out = b.slice()
    const v = new DataView(out.buffer)
    const le = b[0] === 0x49
    const ifd = v.getUint32(4, le)
    if (ifd + 2 <= out.length) {
      const entries = v.getUint16(ifd, le)
      const at = ifd + 2 + 12 * r.int(Math.max(1, entries)) + 8
      if (at + 4 <= out.length) v.setUint32(at, r.pick([0, 1, 7, 9, 0xffff, 0x10000, 0x7fffffff, 0xffffffff, b.length, b.length + 1]), le)
    }
    return out
  }
  const sof = b[0] === 0xff && b[1] === 0xd8 ? b.findIndex((x, i) => x === 0xff && (b[i + 1] === 0xc0 || b[i + 1] === 0xc2)) : -1
  if (sof > 0 && sof + 9 <= b.length && r.chance(0.2)) {
    // JPEG frame header: height and width.
    const out = b.slice()
    new DataView(out.buffer).setUint16(sof + r.pick([5, 7]), r.pick([0, 1, 65535, 30000]))
    return out
  }
  if (isGif && b.length > 10 && r.chance(0.2)) {
    const out = b.slice()
    new DataView(out.buffer).setUint16(r.pick([6, 8]), r.pick([0, 1, 65535]), true)
    return out
  }
  return mutateBytes(b, r, others)
}

// ---- token bytes: 20-byte header (magic, version, bits, reserved, batch, tokens, depths) + bit-packed ids ----

function mutateTokens(b, r) {
  if (b.length < 20 || r.chance(0.4)) return mutateBytes(b, r, [])
  const out = b.slice()
  const v = new DataView(out.buffer)
  switch (r.int(4)) {
    case 0:
      out[5] = r.pick([0, 1, 6, 11, 12, 31, 32, 33, 255]) // bits per token
      break
    case 1:
      v.setUint32(r.pick([8, 12, 16]), r.pick([0, 1, 2, 3, 5, 1000, 0x7fffffff, 0xffffffff]), true)
      break
    case 2: {
      // A consistent header for another grid, with a payload of the right length: passes the parser, so the
      // decoder gets depths, token counts or ids the model may not have.
      const bits = r.pick([1, 6, 7, 12, 32])
      const [batch, tokens, depths] = [1 + r.int(3), r.pick([1, 3, 4, 5]), r.pick([1, 2, 3, 4, 24])]
      const head = out.slice(0, 20)
      const hv = new DataView(head.buffer)
      head[5] = bits
      hv.setUint32(8, batch, true)
      hv.setUint32(12, tokens, true)
      hv.setUint32(16, depths, true)
      const payload = Uint8Array.from({ length: Math.ceil((batch * tokens * depths * bits) / 8) }, () => r.int(256))
      const used = (batch * tokens * depths * bits) % 8
      if (used) payload[payload.length - 1] &= (1 << used) - 1
      return concat(head, payload)
    }
    default:
      out[r.int(8)] = r.int(256) // magic, version, reserved
  }
  return out
}

/**
 * Input `index` of class `klass`. `seeds`: { config, safetensors, bin (from binParts), images: [...], tokens }
 * as Uint8Arrays. Each input applies 1 to 3 mutations, so some stay close to valid and reach deep code.
 */
export function mutateInput(klass, seeds, seed, index) {
  const r = rng((Math.imul(seed, 0x9e3779b1) ^ Math.imul(index + 1, 0x85ebca6b)) >>> 0)
  const rounds = 1 + r.int(3)
  let b
  switch (klass) {
    case 'config':
      b = seeds.config
      for (let k = 0; k < rounds; k++) b = k === 0 || isJson(b) ? mutateConfig(b, r) : mutateBytes(b, r, [])
      return b
    case 'safetensors':
      b = mutateSafetensors(seeds.safetensors, r)
      for (let k = 1; k < rounds; k++) b = isSafetensors(b) ? mutateSafetensors(b, r) : mutateBytes(b, r, [])
      return b
    case 'bin':
      b = mutateBin(seeds.bin, r)
      return rounds === 3 ? mutateBytes(b, r, []) : b
    case 'image': {
      const image = seeds.images[index % seeds.images.length]
      b = image
      for (let k = 0; k < rounds; k++) b = mutateImage(b, r, seeds.images)
      return b
    }
    case 'tokens':
      b = seeds.tokens
      for (let k = 0; k < rounds; k++) b = mutateTokens(b, r)
      return b
    default:
      throw new Error(`unknown fuzz class ${klass}`)
  }
}

function isJson(b) {
  try {
    const v = JSON.parse(untext.decode(b))
    return v !== null && typeof v === 'object'
  } catch {
    return false
  }
}

/** The seed files the fuzz spec writes into `dir`, as the mutators take them. */
export async function readSeeds(dir) {
  const { readFileSync, readdirSync } = await import('node:fs')
  const { join } = await import('node:path')
  const file = (name) => new Uint8Array(readFileSync(join(dir, name)))
  const safetensors = file('model/model.safetensors')
  return {
    config: file('model/config.json'),
    safetensors,
    bin: binParts(safetensors),
    images: readdirSync(join(dir, 'images')).sort().map((f) => file(join('images', f))),
    tokens: file('tokens.bin'),
  }
}
