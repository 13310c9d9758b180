/**
 * Bare HTTP exchanges over node:http/https: one request per call, redirects followed by hand so that the hub's
 * metadata (which rides on the redirect to the CDN) can be read and the token never leaves the hub's origin.
 */
import { request as httpRequest, type IncomingHttpHeaders, type IncomingMessage } from 'node:http'
import { request as httpsRequest } from 'node:https'

import { MarvelError } from '../errors.js'
import { HubUnreachableError } from './errors.js'

// As browsers and requests: enough for hub → renamed repo → CDN chains, few enough to stop a loop quickly.
const MAX_REDIRECTS = 10

export interface RequestOptions {
  headers: Record<string, string>
  /** Milliseconds without a byte (connecting, waiting, or mid-body) before the request is abandoned. */
  timeoutMs: number
  /** Origin (`https://huggingface.co`) that may see the Authorization header; other hosts never get it. */
  authOrigin: string
}

export interface Answer {
  res: IncomingMessage
  status: number
  headers: IncomingHttpHeaders
  /** The URL that gave `res`, after redirects. */
  url: URL
}

export function header(headers: IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name]
  return Array.isArray(v) ? v[0] : v
}

function describeNetworkError(e: unknown): string {
  const err = e as NodeJS.ErrnoException
  if (e instanceof HubUnreachableError) return e.detail
  return err.code ? `${err.code}${err.message && !err.message.includes(err.code) ? ` (${err.message})` : ''}` : String(err.message ?? e)
}

/** One request, no redirect followed; the body is left for the caller to read or drop. */
function send(method: 'HEAD' | 'GET', url: URL, headers: Record<string, string>, timeoutMs: number): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = (url.protocol === 'https:' ? httpsRequest : httpRequest)(url, { method, headers })
    req.setTimeout(timeoutMs, () => req.destroy(Object.assign(new Error(`no answer for ${timeoutMs} ms`), { code: 'ETIMEDOUT' })))
    req.once('response', (res) => {
      // The request's timer stops with the response; the body gets the same idle limit.
      res.setTimeout(timeoutMs, () => res.destroy(Object.assign(new Error(`stalled for ${timeoutMs} ms`), { code: 'ETIMEDOUT' })))
      resolve(res)
    })
    req.once('error', (e) => reject(new HubUnreachableError(`cannot reach ${url.href}: ${describeNetworkError(e)}`, { cause: e })))
    req.end()
  })
}

/**
 * Sends `method` to `url` and follows redirects, except those `keep` accepts (returned as they are). The
 * Authorization header goes only to `authOrigin`, so a CDN redirect never sees the user's token.
 */
export async function request(
  method: 'HEAD' | 'GET',
  url: URL,
  opts: RequestOptions,
  keep: (status: number, headers: IncomingHttpHeaders) => boolean = () => false,
): Promise<Answer> {
  let at = url
  for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
    const headers = { ...opts.headers }
    if (at.origin !== opts.authOrigin) delete headers.authorization
    const res = await send(method, at, headers, opts.timeoutMs)
    const status = res.statusCode ?? 0
    const location = header(res.headers, 'location')
    if (status >= 300 && status < 400 && location && !keep(status, res.headers)) {
      res.resume()
      at = new URL(location, at)
      continue
    }
    return { res, status, headers: res.headers, url: at }
  }
  throw new MarvelError('MARVEL_IO', `more than ${MAX_REDIRECTS} redirects from ${url.href}`)
}

/** Reads and drops a body we do not need, so the connection can be reused. */
export function drop(res: IncomingMessage): void {
  res.resume()
}

/** A connection cut mid-body surfaces as one of these; anything else is a bug or a local disk error. */
export function isNetworkError(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException | undefined)?.code
  return (
    e instanceof HubUnreachableError ||
    code === 'ECONNRESET' ||
    code === 'ETIMEDOUT' ||
    code === 'EPIPE' ||
    code === 'ERR_STREAM_PREMATURE_CLOSE' ||
    (e as Error | undefined)?.message === 'aborted'
  )
}

export { describeNetworkError }
