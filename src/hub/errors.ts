import { MarvelError } from '../errors.js'

/**
 * Why the hub could not give a file:
 * - `not-found`: the hub answered 404 (file, revision or repository), or the cache remembers that it did;
 * - `unauthorized`: 401/403, a private or gated repository, or a token without access;
 * - `corrupt`: the bytes did not match the announced size or sha256 (the download was deleted);
 * - `not-cached`: offline mode is on and the cache does not hold the file.
 */
export type HubErrorReason = 'not-found' | 'unauthorized' | 'corrupt' | 'not-cached'

/** A `MarvelError` with code `MARVEL_HUB`; `reason` says which hub failure it is. */
export class HubError extends MarvelError {
  readonly reason: HubErrorReason

  constructor(reason: HubErrorReason, message: string, options?: { cause?: unknown }) {
    super('MARVEL_HUB', message, options)
    this.reason = reason
  }
}

/**
 * The endpoint could not be reached or failed on its side (connection refused, DNS, timeout, reset, 5xx):
 * code `MARVEL_IO`. Kept apart from HTTP refusals because a cached copy may then stand in, as huggingface_hub does.
 */
export class HubUnreachableError extends MarvelError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('MARVEL_IO', message, options)
  }
}
