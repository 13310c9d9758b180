import { expect } from 'vitest'

import { MarvelError } from '../../src/index.js'

/** Expects `p` (a promise, or a function that throws or returns one) to fail with a MarvelError of `code` whose message matches. */
export async function failure(p: Promise<unknown> | (() => unknown), code: string, message: RegExp): Promise<void> {
  let err: unknown
  try {
    await (typeof p === 'function' ? p() : p)
  } catch (e) {
    err = e
  }
  expect(err).toBeInstanceOf(MarvelError)
  expect((err as MarvelError).code).toBe(code)
  expect((err as MarvelError).message).toMatch(message)
}
