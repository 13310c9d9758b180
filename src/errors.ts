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
  /** A bug in marvel itself that is not a Rust panic (an invariant of the binding broke). */
  | 'MARVEL_INTERNAL'
  | 'MARVEL_NATIVE_BINDING'
  /** Hugging Face hub: file not on the hub, access refused, corrupt download, or offline and not cached. */
  | 'MARVEL_HUB'
  /** Data-parallel training: a rank failed, exited while the others waited for it, or did not join a collective in time. */
  | 'MARVEL_RANK'
  /** A GPU device was asked for, but this addon was built without CUDA, or no driver or device was found. */
  | 'MARVEL_CUDA_UNAVAILABLE'

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

/** How a received value reads in a message: short, and unambiguous about its type. */
export function describeValue(value: unknown): string {
  if (value === null) return 'null'
  if (value === undefined) return 'undefined'
  if (typeof value === 'string') return JSON.stringify(value.length > 60 ? `${value.slice(0, 57)}...` : value)
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return `${typeof value} ${String(value)}`
  if (typeof value === 'function') return 'a function'
  if (Array.isArray(value)) return `an array of length ${value.length}`
  if (ArrayBuffer.isView(value)) return `a ${value.constructor.name} of length ${(value as { length?: number }).length ?? value.byteLength}`
  return `an object (${(value as object).constructor?.name ?? 'null prototype'})`
}

/**
 * The one shape of an argument error, as sharp's `invalidParameterError`: which parameter (with the call it belongs
 * to), what was expected, what came. `invalidParameter('decode', 'depth', 'an integer from 1 to 4', 1.5)` reads
 * "decode: expected depth to be an integer from 1 to 4 but received number 1.5".
 */
export function invalidParameter(where: string, name: string, expected: string, actual: unknown): MarvelError {
  return invalidArgument(`${where}: expected ${name} to be ${expected} but received ${describeValue(actual)}`)
}

/** `value` as an integer in [min, max], or an argument error naming it. Rejects 1.5, NaN, 2^32+1 when out of range. */
export function integerParameter(where: string, name: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw invalidParameter(where, name, `an integer from ${min} to ${max}`, value)
  }
  return value
}

/**
 * `options` as an object holding only `accepted` keys; `undefined` (the argument left out) reads as `{}`. `null`,
 * a number or an array is refused, and so is an unknown key: a misspelt or renamed option (`depths` for `depth`)
 * would otherwise be ignored silently and the call would run with the default.
 */
export function optionsParameter<T extends object>(where: string, options: T | undefined, accepted: readonly string[]): T {
  if (options === undefined) return {} as T
  if (options === null || typeof options !== 'object' || Array.isArray(options)) throw invalidParameter(where, 'options', 'an object', options)
  for (const key of Object.keys(options)) {
    if (accepted.includes(key)) continue
    const near = accepted.find((a) => a.toLowerCase() === key.toLowerCase() || `${a}s` === key || `${key}s` === a)
    const list = accepted.length === 0 ? 'none' : accepted.join(', ')
    throw invalidArgument(`${where}: unknown option ${JSON.stringify(key)}${near ? ` (did you mean ${near}?)` : ''}; accepted: ${list}`)
  }
  return options
}
