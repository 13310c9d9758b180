// Seeded byte and JSON mutators shared by the fuzz suite's input classes (plain JS: the forked worker imports it
// without a TypeScript loader).

export const text = new TextEncoder()
export const untext = new TextDecoder()

/** splitmix32: small, fast, and good enough to pick mutations. */
export function rng(seed) {
  let s = seed >>> 0
  const next = () => {
    s = (s + 0x9e3779b9) >>> 0
    let z = s
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0
    return (z ^ (z >>> 16)) >>> 0
  }
  const r = {
    u32: next,
    /** Integer in [0, n). */
    int: (n) => (n <= 0 ? 0 : next() % n),
    pick: (list) => list[next() % list.length],
    chance: (p) => next() / 2 ** 32 < p,
  }
  return r
}

export const concat = (...parts) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let at = 0
  for (const p of parts) {
    out.set(p, at)
    at += p.length
  }
  return out
}

const INTERESTING_BYTES = [0x00, 0xff, 0x7f, 0x80, 0x01, 0xfe]
const INTERESTING_U32 = [0, 1, 0xff, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xffffffff, 1_000_000_000, 4096, 65535]

// Byte-level mutators, for every class. Each returns a new array.
const byteMutators = {
  flipBits(b, r) {
    const out = b.slice()
    for (let k = 1 + r.int(8); k > 0 && out.length; k--) out[r.int(out.length)] ^= 1 << r.int(8)
    return out
  },
  setBytes(b, r) {
    const out = b.slice()
    for (let k = 1 + r.int(4); k > 0 && out.length; k--) out[r.int(out.length)] = r.chance(0.5) ? r.pick(INTERESTING_BYTES) : r.int(256)
    return out
  },
  setWord(b, r) {
    if (b.length < 4) return b.slice()
    const out = b.slice()
    const v = r.chance(0.8) ? r.pick(INTERESTING_U32) : r.u32()
    new DataView(out.buffer).setUint32(r.int(out.length - 3), v, r.chance(0.8))
    return out
  },
  insert(b, r) {
    const at = r.int(b.length + 1)
    const ins = Uint8Array.from({ length: 1 + r.int(64) }, () => r.int(256))
    return concat(b.subarray(0, at), ins, b.subarray(at))
  },
  remove(b, r) {
    if (b.length === 0) return b.slice()
    const at = r.int(b.length)
    const n = 1 + r.int(Math.min(256, b.length - at))
    return concat(b.subarray(0, at), b.subarray(at + n))
  },
  truncate(b, r) {
    // Half the cuts land in the first 64 bytes, where headers are.
    return b.slice(0, r.chance(0.5) ? r.int(Math.min(64, b.length + 1)) : r.int(b.length + 1))
  },
  duplicate(b, r) {
    if (b.length === 0) return b.slice()
    const from = r.int(b.length)
    const piece = b.slice(from, from + 1 + r.int(Math.min(512, b.length - from)))
    const at = r.int(b.length + 1)
    return concat(b.subarray(0, at), piece, b.subarray(at))
  },
}

/** Joins the head of `b` to the tail of `other` (another seed of the same class). */
function splice(b, other, r) {
  return concat(b.subarray(0, r.int(b.length + 1)), other.subarray(r.int(other.length + 1)))
}

export function mutateBytes(b, r, others) {
  if (others.length && r.chance(0.1)) return splice(b, r.pick(others), r)
  return byteMutators[r.pick(Object.keys(byteMutators))](b, r)
}

// ---- JSON (config.json, the safetensors header) ----

const INTERESTING_NUMBERS = [0, -1, 1, 2, 3, 7, 15, 17, 64, 1024, 65536, 1e9, 2 ** 31, 2 ** 32, 2 ** 53, 1.5, -0.5, 1e308, -1e9]
const OTHER_VALUES = ['', 'custom', 'lfq', 'vq', null, true, false, [], {}, [1, 2], { a: 1 }]

/** Every [container, key] pair of a JSON value, depth first. */
function slots(v, out = []) {
  if (v && typeof v === 'object') {
    for (const k of Object.keys(v)) {
      out.push([v, k])
      slots(v[k], out)
    }
  }
  return out
}

function typo(key, r) {
  if (key.length < 2) return key + 'x'
  const i = r.int(key.length - 1)
  switch (r.int(3)) {
    case 0:
      return key.slice(0, i) + key[i + 1] + key[i] + key.slice(i + 2)
    case 1:
      return key.slice(0, i) + key.slice(i + 1)
    default:
      return key.slice(0, i) + 'e' + key.slice(i)
  }
}

/** One structural edit of a parsed JSON value, in place. */
export function editJson(value, r) {
  const all = slots(value)
  if (all.length === 0) return
  const numeric = all.filter(([o, k]) => typeof o[k] === 'number')
  const [obj, key] = numeric.length && r.chance(0.5) ? r.pick(numeric) : r.pick(all)
  const action = r.int(6)
  if (action <= 1) obj[key] = r.pick(INTERESTING_NUMBERS) * (r.chance(0.1) ? -1 : 1)
  else if (action === 2) obj[key] = structuredClone(r.pick(OTHER_VALUES))
  else if (action === 3 && !Array.isArray(obj)) delete obj[key]
  else if (action === 4 && !Array.isArray(obj)) {
    obj[typo(key, r)] = obj[key]
    delete obj[key]
  } else if (Array.isArray(obj[key])) obj[key].push(r.pick(INTERESTING_NUMBERS))
  else obj[key] = structuredClone(r.pick(all)[0])
}
