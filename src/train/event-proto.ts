/**
 * The few protobuf messages of a TensorBoard event file, encoded and decoded by hand (tensorflow/core/util/
 * event.proto, tensorflow/core/framework/summary.proto):
 *
 *   Event         { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5;
 *                   SessionLog session_log = 6; }
 *   SessionLog    { SessionStatus status = 1; }  (START = 1)
 *   Summary       { repeated Value value = 1; }
 *   Summary.Value { string tag = 1; float simple_value = 2; Image image = 4; }
 *   Summary.Image { int32 height = 1; int32 width = 2; int32 colorspace = 3; bytes encoded_image_string = 4; }
 *
 * The decoder skips every other field, so files written by TensorFlow or PyTorch read too.
 */

const VARINT = 0
const FIXED64 = 1
const LENGTH = 2
const FIXED32 = 5

export interface SummaryImage {
  height: number
  width: number
  /** 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA. */
  colorspace: number
  encoded: Uint8Array
}

export interface SummaryValue {
  tag: string
  simpleValue?: number
  image?: SummaryImage
}

export interface EventMessage {
  wallTime: number
  step: number
  fileVersion?: string
  summary?: SummaryValue[]
  /** SessionLog.START: TensorBoard drops the events of earlier files from this event's step on. */
  sessionStart?: boolean
}

const SESSION_START = 1

/** Appends protobuf fields to a list of chunks. */
class ProtoWriter {
  readonly #chunks: Uint8Array[] = []

  #varint(value: number): void {
    // Steps stay below 2^53; split into 7-bit groups by division, since bit operators stop at 32 bits.
    const bytes: number[] = []
    let v = value
    while (v >= 0x80) {
      bytes.push((v % 0x80) | 0x80)
      v = Math.floor(v / 0x80)
    }
    bytes.push(v)
    this.#chunks.push(Uint8Array.from(bytes))
  }

  #key(field: number, wire: number): void {
    this.#varint(field * 8 + wire)
  }

  varint(field: number, value: number): this {
    this.#key(field, VARINT)
    this.#varint(value)
    return this
  }

  double(field: number, value: number): this {
    this.#key(field, FIXED64)
    const b = Buffer.allocUnsafe(8)
    b.writeDoubleLE(value)
    this.#chunks.push(b)
    return this
  }

  float(field: number, value: number): this {
    this.#key(field, FIXED32)
    const b = Buffer.allocUnsafe(4)
    b.writeFloatLE(value)
    this.#chunks.push(b)
    return this
  }

  bytes(field: number, value: Uint8Array): this {
    this.#key(field, LENGTH)
    this.#varint(value.length)
    this.#chunks.push(value)
    return this
  }

  string(field: number, value: string): this {
    return this.bytes(field, Buffer.from(value, 'utf8'))
  }

  finish(): Buffer {
    return Buffer.concat(this.#chunks)
  }
}

export function encodeEvent(e: EventMessage): Buffer {
  const w = new ProtoWriter().double(1, e.wallTime).varint(2, e.step)
  if (e.fileVersion !== undefined) w.string(3, e.fileVersion)
  if (e.summary !== undefined) {
    const summary = new ProtoWriter()
    for (const v of e.summary) summary.bytes(1, encodeValue(v))
    w.bytes(5, summary.finish())
  }
  if (e.sessionStart) w.bytes(6, new ProtoWriter().varint(1, SESSION_START).finish())
  return w.finish()
}

function encodeValue(v: SummaryValue): Buffer {
  const w = new ProtoWriter().string(1, v.tag)
  if (v.simpleValue !== undefined) w.float(2, v.simpleValue)
  if (v.image !== undefined) {
    const img = v.image
    w.bytes(4, new ProtoWriter().varint(1, img.height).varint(2, img.width).varint(3, img.colorspace).bytes(4, img.encoded).finish())
  }
  return w.finish()
}

/** A malformed message: the record's CRC matched, so the writer wrote something that is not an Event. */
export class ProtoError extends Error {}

/** Reads the fields of one message, calling `on(field, wire, reader)` for each; unread fields are skipped. */
class ProtoReader {
  #at = 0
  constructor(readonly buf: Buffer) {}

  get done(): boolean {
    return this.#at >= this.buf.length
  }

  varint(): number {
    let value = 0
    let scale = 1
    for (let i = 0; i < 10; i++) {
      if (this.#at >= this.buf.length) throw new ProtoError('a varint runs past the end of the message')
      const b = this.buf[this.#at++]
      value += (b & 0x7f) * scale
      if (b < 0x80) return value
      scale *= 0x80
    }
    throw new ProtoError('a varint longer than 10 bytes')
  }

  #take(n: number): Buffer {
    if (this.#at + n > this.buf.length) throw new ProtoError('a field runs past the end of the message')
    const out = this.buf.subarray(this.#at, this.#at + n)
    this.#at += n
    return out
  }

  double(): number {
    return this.#take(8).readDoubleLE()
  }

  float(): number {
    return this.#take(4).readFloatLE()
  }

  bytes(): Buffer {
    return this.#take(this.varint())
  }

  skip(wire: number): void {
    if (wire === VARINT) this.varint()
    else if (wire === FIXED64) this.#take(8)
    else if (wire === LENGTH) this.bytes()
    else if (wire === FIXED32) this.#take(4)
    else throw new ProtoError(`unsupported wire type ${wire}`)
  }

  /** Each field in order: `read` returns false for a field it did not consume, which is then skipped. */
  fields(read: (field: number, wire: number) => boolean): void {
    while (!this.done) {
      const key = this.varint()
      const field = Math.floor(key / 8)
      const wire = key % 8
      if (!read(field, wire)) this.skip(wire)
    }
  }
}

export function decodeEvent(buf: Buffer): EventMessage {
  const e: EventMessage = { wallTime: 0, step: 0 }
  const r = new ProtoReader(buf)
  r.fields((field, wire) => {
    if (field === 1 && wire === FIXED64) e.wallTime = r.double()
    else if (field === 2 && wire === VARINT) e.step = r.varint()
    else if (field === 3 && wire === LENGTH) e.fileVersion = r.bytes().toString('utf8')
    else if (field === 5 && wire === LENGTH) e.summary = decodeSummary(r.bytes())
    else if (field === 6 && wire === LENGTH) e.sessionStart = decodeSessionStatus(r.bytes()) === SESSION_START
    else return false
    return true
  })
  return e
}

function decodeSessionStatus(buf: Buffer): number {
  let status = 0
  const r = new ProtoReader(buf)
  r.fields((field, wire) => {
    if (field !== 1 || wire !== VARINT) return false
    status = r.varint()
    return true
  })
  return status
}

function decodeSummary(buf: Buffer): SummaryValue[] {
  const values: SummaryValue[] = []
  const r = new ProtoReader(buf)
  r.fields((field, wire) => {
    if (field !== 1 || wire !== LENGTH) return false
    values.push(decodeValue(r.bytes()))
    return true
  })
  return values
}

function decodeValue(buf: Buffer): SummaryValue {
  const v: SummaryValue = { tag: '' }
  const r = new ProtoReader(buf)
  r.fields((field, wire) => {
    if (field === 1 && wire === LENGTH) v.tag = r.bytes().toString('utf8')
    else if (field === 2 && wire === FIXED32) v.simpleValue = r.float()
    else if (field === 4 && wire === LENGTH) v.image = decodeImage(r.bytes())
    else return false
    return true
  })
  return v
}

function decodeImage(buf: Buffer): SummaryImage {
  const img: SummaryImage = { height: 0, width: 0, colorspace: 0, encoded: new Uint8Array(0) }
  const r = new ProtoReader(buf)
  r.fields((field, wire) => {
    if (field === 1 && wire === VARINT) img.height = r.varint()
    else if (field === 2 && wire === VARINT) img.width = r.varint()
    else if (field === 3 && wire === VARINT) img.colorspace = r.varint()
    else if (field === 4 && wire === LENGTH) img.encoded = r.bytes()
    else return false
    return true
  })
  return img
}
