// Seeded mutators for the fuzz suite (plain JS: the forked worker imports it without a TypeScript loader).
// Input `index` of a run with `seed` is a pure function of (seed, index, the seed files), so any failing input can
// be rebuilt alone: `mutateInput(klass, seeds, seed, index)`.

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

const concat = (...parts) => {
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

function mutateBytes(b, r, others) {
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
function editJson(value, r) {
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

const text = new TextEncoder()
const untext = new TextDecoder()

function mutateConfig(b, r) {
  if (r.chance(0.3)) return mutateBytes(b, r, [])
  const value = JSON.parse(untext.decode(b))
  for (let k = 1 + r.int(3); k > 0; k--) editJson(value, r)
  return text.encode(JSON.stringify(value, null, r.chance(0.5) ? 2 : 0))
}

// ---- safetensors: u64 header length, JSON header, data ----

const DTYPES = ['F16', 'BF16', 'F64', 'I64', 'I32', 'U8', 'BOOL', 'F8_E4M3', 'XYZ', 'f32', '']

function parseSafetensors(b) {
  const n = Number(new DataView(b.buffer, b.byteOffset).getBigUint64(0, true))
  return { header: JSON.parse(untext.decode(b.subarray(8, 8 + n))), data: b.subarray(8 + n) }
}

export function writeSafetensors(header, data) {
  const json = text.encode(JSON.stringify(header))
  const out = new Uint8Array(8 + json.length + data.length)
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true)
  out.set(json, 8)
  out.set(data, 8 + json.length)
  return out
}

function mutateSafetensors(b, r) {
  const choice = r.int(10)
  if (choice < 3) return mutateBytes(b, r, [])
  try {
    return editSafetensors(b, r, choice)
  } catch {
    // An earlier round left no entry with the fields this edit needs.
    return mutateBytes(b, r, [])
  }
}

function editSafetensors(b, r, choice) {
  const { header, data } = parseSafetensors(b)
  const n = b.length - 8 - data.length
  if (choice === 3) {
    // The length field: off by a little, past the file, or absurd.
    const out = b.slice()
    const values = [0n, BigInt(n - 1), BigInt(n + 1), BigInt(n + 8), BigInt(b.length), 2n ** 32n, 2n ** 63n, 2n ** 64n - 1n]
    new DataView(out.buffer).setBigUint64(0, r.pick(values), true)
    return out
  }
  const names = Object.keys(header).filter((k) => k !== '__metadata__')
  const t = header[r.pick(names)]
  switch (choice) {
    case 4:
      t.dtype = r.pick(DTYPES)
      break
    case 5: {
      const dims = [0, 1, 3, 1e9, 2 ** 40, -1, 1.5]
      if (r.chance(0.3)) t.shape.push(r.pick(dims))
      else if (r.chance(0.3)) t.shape.pop()
      else t.shape[r.int(t.shape.length)] = r.pick(dims)
      break
    }
    case 6: {
      const [a, z] = t.data_offsets
      t.data_offsets = r.pick([[z, a], [a, a], [a, z + 4], [a, data.length + 4], [0, 2 ** 53], [-4, z], [a + 0.5, z], [a], [a, z, z]])
      break
    }
    case 7:
      delete header[r.pick(names)]
      break
    case 8:
      header[r.pick(names)] = structuredClone(t)
      if (r.chance(0.5)) header.__metadata__ = { format: r.pick([1, null, ['pt'], 'pt']) }
      break
    default:
      editJson(header, r)
  }
  return writeSafetensors(header, data)
}

// ---- PyTorch zip (.bin): a pickle of the state dict plus one storage file per tensor ----

const CRC_TABLE = Uint32Array.from({ length: 256 }, (_, n) => {
  let c = n
  for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1
  return c
})

/** CRC-32 (IEEE), which zip readers check. */
export function crc32(data) {
  let crc = ~0
  for (let i = 0; i < data.length; i++) crc = CRC_TABLE[(crc ^ data[i]) & 0xff] ^ (crc >>> 8)
  return ~crc >>> 0
}

/** A zip of uncompressed entries, the layout `torch.save` writes. */
export function storedZip(entries) {
  const local = []
  const central = []
  let offset = 0
  for (const [name, data] of entries) {
    const nameBytes = text.encode(name)
    const common = new Uint8Array(26)
    const v = new DataView(common.buffer)
    v.setUint16(0, 20, true) // version needed; flags, method 0 (stored), time, date stay 0
    v.setUint32(10, crc32(data), true)
    v.setUint32(14, data.length, true)
    v.setUint32(18, data.length, true)
    v.setUint16(22, nameBytes.length, true)
    const head = new Uint8Array(4)
    new DataView(head.buffer).setUint32(0, 0x04034b50, true)
    local.push(head, common, nameBytes, data)
    const c = new Uint8Array(46)
    const cv = new DataView(c.buffer)
    cv.setUint32(0, 0x02014b50, true)
    cv.setUint16(4, 20, true)
    c.set(common, 6)
    cv.setUint32(42, offset, true)
    central.push(c, nameBytes)
    offset += 4 + 26 + nameBytes.length + data.length
  }
  const cd = concat(...central)
  const end = new Uint8Array(22)
  const ev = new DataView(end.buffer)
  ev.setUint32(0, 0x06054b50, true)
  ev.setUint16(8, entries.length, true)
  ev.setUint16(10, entries.length, true)
  ev.setUint32(12, cd.length, true)
  ev.setUint32(16, offset, true)
  return concat(...local, cd, end)
}

/**
 * `torch.save(state_dict)`'s data.pkl (pickle protocol 2) for `tensors`: [{name, storage, key, numel, offset,
 * shape, stride}]. Each tensor is `torch._utils._rebuild_tensor_v2(persistent storage, offset, shape, stride,
 * False, OrderedDict())` inside an OrderedDict.
 */
export function statePickle(tensors) {
  const bytes = []
  const op = (...b) => bytes.push(...b)
  const str = (s) => {
    const e = text.encode(s)
    op(0x58, e.length & 0xff, (e.length >> 8) & 0xff, (e.length >> 16) & 0xff, e.length >>> 24, ...e) // BINUNICODE
  }
  const int = (n) => {
    if (n >= 0 && n < 256) op(0x4b, n) // BININT1
    else op(0x4a, n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, (n >>> 24) & 0xff) // BININT
  }
  const global = (module, name) => op(0x63, ...text.encode(`${module}\n${name}\n`))
  const tuple = (items, each) => {
    op(0x28) // MARK
    items.forEach(each)
    op(0x74) // TUPLE
  }
  op(0x80, 2)
  global('collections', 'OrderedDict')
  op(0x29, 0x52) // EMPTY_TUPLE, REDUCE
  op(0x28) // MARK
  for (const t of tensors) {
    str(t.name)
    global('torch._utils', '_rebuild_tensor_v2')
    op(0x28)
    tuple([0], () => {
      str('storage')
      global('torch', t.storage)
      str(t.key)
      str('cpu')
      int(t.numel)
    })
    op(0x51) // BINPERSID
    int(t.offset)
    tuple(t.shape, int)
    tuple(t.stride, int)
    op(0x89) // NEWFALSE
    global('collections', 'OrderedDict')
    op(0x29, 0x52)
    op(0x74, 0x52) // TUPLE, REDUCE
  }
  op(0x75, 0x2e) // SETITEMS, STOP
  return Uint8Array.from(bytes)
}

const contiguousStride = (shape) => shape.map((_, i) => shape.slice(i + 1).reduce((a, b) => a * b, 1))

/** The tensors of an F32 safetensors file as a PyTorch zip checkpoint, and the parts it is built from. */
export function binParts(safetensors) {
  const { header, data } = parseSafetensors(safetensors)
  const tensors = []
  const storages = []
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue
    const [a, z] = t.data_offsets
    const storage = { F32: 'FloatStorage', I32: 'IntStorage', I64: 'LongStorage', F16: 'HalfStorage' }[t.dtype]
    const key = String(storages.length)
    storages.push(data.slice(a, z))
    const numel = t.shape.reduce((x, y) => x * y, 1)
    tensors.push({ name, storage, key, numel, offset: 0, shape: t.shape, stride: contiguousStride(t.shape) })
  }
  return { tensors, storages }
}

export function binBytes({ tensors, storages }, pickle = statePickle(tensors)) {
  return storedZip([
    ['archive/data.pkl', pickle],
    ...storages.map((s, i) => [`archive/data/${i}`, s]),
    ['archive/version', text.encode('3\n')],
  ])
}

function mutateBin(parts, r) {
  const choice = r.int(10)
  if (choice < 2) return mutateBytes(binBytes(parts), r, [])
  const tensors = structuredClone(parts.tensors)
  let storages = parts.storages
  const t = r.pick(tensors)
  switch (choice) {
    case 2:
      t.shape[r.int(t.shape.length)] = r.pick([0, 2, 1e9, 2 ** 31 - 1, 65535])
      break
    case 3:
      t.stride[r.int(t.stride.length)] = r.pick([0, 2, 1e9, 2 ** 31 - 1])
      break
    case 4:
      t.offset = r.pick([1, t.numel, 1e9, 2 ** 31 - 1])
      break
    case 5:
      t.storage = r.pick(['HalfStorage', 'LongStorage', 'ByteStorage', 'BoolStorage', 'ComplexFloatStorage', 'NoSuchStorage'])
      break
    case 6:
      t.key = r.pick(['999', '', '../0', String(tensors.length + 5)])
      break
    case 7: {
      // A storage file cut short or missing.
      const i = r.int(storages.length)
      storages = storages.map((s, j) => (j === i ? s.subarray(0, r.int(s.length)) : s))
      break
    }
    case 8: {
      // Pickle bombs near the end: a long flat run of one opcode (MARK, EMPTY_LIST, EMPTY_DICT, EMPTY_TUPLE), or
      // tuples nested `depth` deep (MARK x depth, EMPTY_TUPLE, TUPLE x depth).
      const pickle = statePickle(tensors)
      const depth = r.pick([100, 10_000, 100_000, 1_000_000])
      const bomb = r.chance(0.5)
        ? new Uint8Array(depth).fill(r.pick([0x28, 0x5d, 0x7d, 0x29]))
        : concat(new Uint8Array(depth).fill(0x28), Uint8Array.of(0x29), new Uint8Array(depth).fill(0x74))
      const at = pickle.length - (r.chance(0.5) ? 1 : 2) // before STOP, or before the final SETITEMS
      return binBytes({ tensors, storages }, concat(pickle.subarray(0, at), bomb, pickle.subarray(at)))
    }
    default: {
      // Opcode-level damage to the pickle alone; the zip around it stays valid.
      const pickle = mutateBytes(statePickle(tensors), r, [])
      return binBytes({ tensors, storages }, pickle)
    }
  }
  return binBytes({ tensors, storages })
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

function isSafetensors(b) {
  try {
    const { header } = parseSafetensors(b)
    return Object.values(header).some((t) => t && Array.isArray(t.data_offsets) && Array.isArray(t.shape))
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
