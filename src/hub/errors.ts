import { MarvelError } from '../errors.js'

/**
 * Why the hub could not give a file:
 * - `not-found`: the hub answered 404 (file, revision or repository), or the cache remembers that it did;
 * - `unauthorized`: 401/403, a private or gated repository, or a token without access;
 * - `corrupt`: the bytes did not match the announced size or sha256 (the download was deleted);
 * - `not-cached`: offline mode is on and the cache does not hold the file;
 * - `unreachable`: the endpoint could not be reached or failed on its side (connection refused, DNS, timeout,
 *   a connection cut mid-download, HTTP 5xx) and the cache does not hold the file.
 */
export type HubErrorReason = 'not-found' | 'unauthorized' | 'corrupt' | 'not-cached' | 'unreachable'

/** A `MarvelError` with code `MARVEL_HUB`; `reason` says which hub failure it is. */
export class HubError extends MarvelError {
  readonly reason: HubErrorReason

  constructor(reason: HubErrorReason, message: string, options?: { cause?: unknown }) {
    super('MARVEL_HUB', message, options)
    this.reason = reason
  }
}

/** What an unreachable hub's message ends with: the ways to carry on without it. */
export const OFFLINE_HINT =
  'to work without the hub, pass a local model folder (--model <folder> on the command line, ' +
  'Tokenizer.fromPretrained(<folder>) in code), set HF_HUB_OFFLINE=1 to use only the cache, ' +
  'or point HF_ENDPOINT at a mirror that can be reached'

/**
 * The endpoint could not be reached or failed on its side: `MARVEL_HUB` with reason `unreachable`. Its own class
 * because a cached copy may then stand in, as huggingface_hub does; `detail` is the message without the hint, for
 * callers that add context.
 */
export class HubUnreachableError extends HubError {
  readonly detail: string

  constructor(detail: string, options?: { cause?: unknown }) {
    super('unreachable', `${detail}; ${OFFLINE_HINT}`, options)
    this.detail = detail
  }
}
