/** Download progress: a throttled reporter for `onProgress`, and a one-line terminal printer for CLIs. */

import { invalidParameter } from '../errors.js'

export interface HubProgress {
  /** The file's name in the repository, e.g. `model.safetensors`. */
  file: string
  /** Bytes on disk so far, a resumed prefix included. */
  downloaded: number
  /** Expected size in bytes, when the hub announced one. */
  total: number | undefined
}

export type ProgressCallback = (p: HubProgress) => void

// Ten updates a second is smooth on a terminal and costs nothing next to the download.
const INTERVAL_MS = 100

/** Calls `onProgress` at most every 100 ms, and always for the first and the last byte count. */
export function throttle(file: string, total: number | undefined, onProgress?: ProgressCallback): (downloaded: number, done?: boolean) => void {
  if (!onProgress) return () => {}
  let last = -Infinity
  return (downloaded, done = false) => {
    const now = Date.now()
    if (!done && now - last < INTERVAL_MS) return
    last = now
    onProgress({ file, downloaded, total })
  }
}

/** The part of a writable stream the printer needs; `process.stderr` fits. */
export interface ProgressStream {
  write(chunk: string): unknown
  isTTY?: boolean
}

const mb = (bytes: number) => (bytes / 1e6).toFixed(1)

/** `42s`, `3m05s`, `1h07m`; `?` when unknown. */
export function duration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?'
  const s = Math.ceil(seconds)
  if (s < 60) return `${s}s`
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`
  return `${Math.floor(s / 3600)}h${String(Math.floor(s / 60) % 60).padStart(2, '0')}m`
}

/** `file  12.3/45.6 MB  3.2 MB/s  ETA 10s` (size and ETA dropped when the total is unknown). */
export function formatProgress(p: HubProgress, bytesPerSecond: number): string {
  const size = p.total === undefined ? `${mb(p.downloaded)} MB` : `${mb(p.downloaded)}/${mb(p.total)} MB`
  const rate = `${mb(bytesPerSecond)} MB/s`
  if (p.total === undefined) return `${p.file}  ${size}  ${rate}`
  const eta = bytesPerSecond > 0 ? duration((p.total - p.downloaded) / bytesPerSecond) : '?'
  return `${p.file}  ${size}  ${rate}  ETA ${eta}`
}

/**
 * A progress callback that redraws one line per file on `stream` (default stderr) and ends it when the file is
 * complete. Prints nothing when the stream is not a terminal, so logs and pipes stay clean.
 */
export function createProgressPrinter(stream: ProgressStream = process.stderr): ProgressCallback {
  if (stream === null || typeof stream !== 'object' || typeof stream.write !== 'function') {
    throw invalidParameter('createProgressPrinter', 'stream', 'a writable stream (an object with write())', stream)
  }
  if (!stream.isTTY) return () => {}
  // Speed counts only bytes fetched in this run, not a resumed prefix.
  const started = new Map<string, { at: number; bytes: number }>()
  return (p) => {
    const now = Date.now()
    let start = started.get(p.file)
    if (!start) started.set(p.file, (start = { at: now, bytes: p.downloaded }))
    const seconds = (now - start.at) / 1000
    const rate = seconds > 0 ? (p.downloaded - start.bytes) / seconds : 0
    const done = p.total !== undefined && p.downloaded >= p.total
    stream.write(`\r\x1b[2K${formatProgress(p, rate)}${done ? '\n' : ''}`)
    if (done) started.delete(p.file)
  }
}
