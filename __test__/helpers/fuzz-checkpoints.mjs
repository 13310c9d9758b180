// Checkpoint formats for the fuzz suite: safetensors (parsed, edited, written back) and PyTorch's zip
// `pytorch_model.bin` (a data.pkl pickle plus one storage file per tensor, written without torch).
import { concat, editJson, mutateBytes, text, untext } from './fuzz-bytes.mjs'

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

export function mutateSafetensors(b, r) {
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

export function mutateBin(parts, r) {
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

export function isSafetensors(b) {
  try {
    const { header } = parseSafetensors(b)
    return Object.values(header).some((t) => t && Array.isArray(t.data_offsets) && Array.isArray(t.shape))
  } catch {
    return false
  }
}
