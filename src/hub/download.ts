/**
 * Fetching one blob: streamed into `blobs/<etag>.incomplete`, resumed with a Range request when a previous run was
 * cut short, checked against the announced size and (LFS files) sha256, and only then renamed to `blobs/<etag>`.
 */
import { createHash, type Hash } from 'node:crypto'
import { createReadStream, createWriteStream } from 'node:fs'
import { mkdir, rename, rm, stat } from 'node:fs/promises'
import { dirname } from 'node:path'
import { Transform } from 'node:stream'
import { pipeline } from 'node:stream/promises'

import { MarvelError } from '../errors.js'
import { HubError, HubUnreachableError } from './errors.js'
import { drop, header, isNetworkError, request, describeNetworkError, type RequestOptions } from './http.js'
import { throttle, type ProgressCallback } from './progress.js'

// LFS files are named by the sha256 of their contents; git-stored files by a git sha1, which we do not recompute.
const SHA256 = /^[0-9a-f]{64}$/

export interface BlobJob {
  /** Where the bytes are (the hub's resolve URL or the CDN it redirected to). */
  url: URL
  blobPath: string
  etag: string
  /** Announced size in bytes (`X-Linked-Size` / `Content-Length` of the metadata request). */
  size: number | undefined
  /** The file's name in the repository, for messages and progress. */
  file: string
  http: RequestOptions
  /** Turns an HTTP refusal (404, 401, ...) into the error the caller reports. */
  refusal: (status: number, url: URL) => Error
  onProgress?: ProgressCallback
}

interface Filled {
  bytes: number
  /** Size the server announced for this download, when the metadata did not. */
  total: number | undefined
  sha256: string | undefined
}

async function sizeOf(path: string): Promise<number> {
  try {
    return (await stat(path)).size
  } catch {
    return 0
  }
}

async function hashFile(hash: Hash, path: string): Promise<void> {
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer)
}

/** Brings `partial` to the full file, resuming from its current size when the server allows it. */
async function fill(job: BlobJob, partial: string, have: number, mayResume = true): Promise<Filled> {
  const newHash = () => (SHA256.test(job.etag) ? createHash('sha256') : undefined)
  let hash = newHash()
  if (!mayResume || (job.size !== undefined && have > job.size)) {
    await rm(partial, { force: true })
    have = 0
  }
  if (have > 0 && hash) await hashFile(hash, partial)
  // The previous run got every byte but stopped before the rename: nothing to fetch, only to check.
  if (have > 0 && have === job.size) return { bytes: have, total: job.size, sha256: hash?.digest('hex') }

  const headers = { ...job.http.headers }
  if (have > 0) headers.range = `bytes=${have}-`
  const { res, status, headers: got, url } = await request('GET', job.url, { ...job.http, headers })
  let flags = 'a'
  let total = job.size
  if (status === 206 && have > 0) {
    const range = /^bytes (\d+)-\d+\/(\d+|\*)$/.exec(header(got, 'content-range') ?? '')
    if (!range || Number(range[1]) !== have) {
      res.destroy()
      return fill(job, partial, 0, false)
    }
    if (range[2] !== '*') total ??= Number(range[2])
  } else if (status === 200) {
    // No Range support (or the server chose to resend everything): start over.
    flags = 'w'
    have = 0
    hash = newHash()
  } else if (status === 416 && have > 0) {
    drop(res)
    return fill(job, partial, 0, false)
  } else {
    drop(res)
    throw job.refusal(status, url)
  }
  const bodyLength = Number(header(got, 'content-length'))
  if (total === undefined && status === 200 && Number.isFinite(bodyLength)) total = bodyLength

  const report = throttle(job.file, total, job.onProgress)
  const start = have
  let received = 0
  report(start)
  const count = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      received += chunk.length
      hash?.update(chunk)
      report(start + received)
      done(null, chunk)
    },
  })
  const interrupted = (reason: string, cause?: unknown) =>
    new HubUnreachableError(
      `download of ${job.file} from ${url.href} was interrupted at ${start + received} of ${total ?? '?'} bytes (${reason}); ` +
        `the partial file ${partial} is kept and the next call resumes it`,
      { cause },
    )
  try {
    await pipeline(res, count, createWriteStream(partial, { flags }))
  } catch (e) {
    if (isNetworkError(e)) throw interrupted(describeNetworkError(e), e)
    throw new MarvelError('MARVEL_IO', `cannot write ${partial}: ${(e as Error).message}`, { cause: e })
  }
  if (Number.isFinite(bodyLength) && received < bodyLength) throw interrupted(`connection closed after ${received} of ${bodyLength} body bytes`)
  report(start + received, true)
  return { bytes: start + received, total, sha256: hash?.digest('hex') }
}

/** Downloads `job` into `blobs/<etag>`; on return the blob is complete and verified. */
export async function fetchBlob(job: BlobJob): Promise<void> {
  const partial = `${job.blobPath}.incomplete`
  try {
    await mkdir(dirname(job.blobPath), { recursive: true })
  } catch (e) {
    throw new MarvelError('MARVEL_IO', `cannot create ${dirname(job.blobPath)}: ${(e as Error).message}`, { cause: e })
  }
  // Two attempts at most: a kept prefix from an earlier run may be the corrupt part, so retry once from zero.
  for (let attempt = 0; attempt < 2; attempt++) {
    const resumedFrom = attempt === 0 ? await sizeOf(partial) : 0
    const filled = await fill(job, partial, resumedFrom, attempt === 0)
    const expected = job.size ?? filled.total
    const problem =
      expected !== undefined && filled.bytes !== expected
        ? `got ${filled.bytes} bytes, expected ${expected}`
        : filled.sha256 !== undefined && filled.sha256 !== job.etag
          ? `sha256 is ${filled.sha256}, expected ${job.etag}`
          : undefined
    if (!problem) {
      try {
        await rename(partial, job.blobPath)
      } catch (e) {
        throw new MarvelError('MARVEL_IO', `cannot move ${partial} to ${job.blobPath}: ${(e as Error).message}`, { cause: e })
      }
      return
    }
    await rm(partial, { force: true })
    if (resumedFrom > 0 && attempt === 0) continue
    throw new HubError(
      'corrupt',
      `download of ${job.file} from ${job.url.href} is corrupt: ${problem}; the file was deleted, call again to retry`,
    )
  }
}
