/**
 * TFRecord framing, the container of TensorBoard event files: each record is its length (u64 little-endian), the
 * masked CRC-32C of those 8 bytes, the data, and the masked CRC-32C of the data.
 */
import { maskedCrc32c } from './crc32c.js'

/** Bytes a record adds around its data. */
export const RECORD_OVERHEAD = 16

/** `data` framed as one record. */
export function frameRecord(data: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(data.length + RECORD_OVERHEAD)
  out.writeBigUInt64LE(BigInt(data.length), 0)
  out.writeUInt32LE(maskedCrc32c(out.subarray(0, 8)), 8)
  out.set(data, 12)
  out.writeUInt32LE(maskedCrc32c(data), 12 + data.length)
  return out
}

export interface RecordScan {
  /** Each complete record's data, in file order (views into the scanned buffer). */
  records: Buffer[]
  /** Where a record that runs past the end of the buffer starts (a writer stopped mid-record), else null. */
  truncatedAt: number | null
}

/** Thrown for a record whose checksum does not match: `offset` is where that record starts. */
export class RecordError extends Error {
  constructor(
    message: string,
    readonly offset: number,
  ) {
    super(message)
  }
}

/**
 * Every record of `buf`, each CRC checked. A record cut short at the end is not an error (a writer may be in the
 * middle of appending it, or was killed there): it is reported in `truncatedAt`.
 */
export function scanRecords(buf: Buffer): RecordScan {
  const records: Buffer[] = []
  let at = 0
  while (at < buf.length) {
    if (buf.length - at < 12) return { records, truncatedAt: at }
    const lengthCrc = maskedCrc32c(buf.subarray(at, at + 8))
    if (lengthCrc !== buf.readUInt32LE(at + 8)) throw new RecordError(`record ${records.length} at byte ${at}: the length's CRC does not match`, at)
    const length = buf.readBigUInt64LE(at)
    if (length > BigInt(buf.length - at - RECORD_OVERHEAD)) return { records, truncatedAt: at }
    const n = Number(length)
    const data = buf.subarray(at + 12, at + 12 + n)
    const stored = buf.readUInt32LE(at + 12 + n)
    const computed = maskedCrc32c(data)
    if (stored !== computed) {
      throw new RecordError(`record ${records.length} at byte ${at}: the data's CRC does not match (stored 0x${stored.toString(16)}, computed 0x${computed.toString(16)})`, at)
    }
    records.push(data)
    at += n + RECORD_OVERHEAD
  }
  return { records, truncatedAt: null }
}
