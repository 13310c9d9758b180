/**
 * Stable error codes. Every error marvel raises — from argument checks here or from the Rust core — is an
 * `Error` whose `code` is one of these, so callers can branch on the kind of failure.
 */
export type MarvelErrorCode =
  | 'MARVEL_INVALID_ARGUMENT'
  | 'MARVEL_SHAPE_MISMATCH'
  | 'MARVEL_IO'
  | 'MARVEL_IMAGE'
  | 'MARVEL_CONFIG'
  | 'MARVEL_CHECKPOINT'
  | 'MARVEL_TENSOR'
  | 'MARVEL_PANIC'
  | 'MARVEL_NATIVE_BINDING'
  /** Hugging Face hub: file not on the hub, access refused, corrupt download, or offline and not cached. */
  | 'MARVEL_HUB'

export class MarvelError extends Error {
  readonly code: MarvelErrorCode

  constructor(code: MarvelErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'MarvelError'
    this.code = code
  }
}

export function invalidArgument(message: string): MarvelError {
  return new MarvelError('MARVEL_INVALID_ARGUMENT', message)
}
