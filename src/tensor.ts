import { native } from './binding.js'
import { MarvelError, invalidArgument } from './errors.js'

/** A dense float32 tensor: row-major `data` and its `shape`. */
export interface Tensor {
  data: Float32Array
  shape: readonly number[]
}

/** Throws unless `shape` is a list of non-negative integers whose product is `length`. */
export function checkShape(what: string, length: number, shape: readonly number[]): void {
  if (!Array.isArray(shape) || shape.some((d) => !Number.isInteger(d) || d < 0 || d > 0xffffffff)) {
    throw invalidArgument(`${what}: shape must be an array of non-negative integers, got ${JSON.stringify(shape)}`)
  }
  const n = shape.reduce((a, b) => a * b, 1)
  if (n !== length) {
    throw new MarvelError(
      'MARVEL_SHAPE_MISMATCH',
      `${what}: shape [${shape.join(', ')}] needs ${n} elements but the buffer holds ${length}`,
    )
  }
}

function checkTensor(what: string, t: Tensor): void {
  if (!t || !(t.data instanceof Float32Array)) throw invalidArgument(`${what}: data must be a Float32Array`)
  checkShape(what, t.data.length, t.shape)
}

/**
 * Matrix product `(..., m, k) x (..., k, n)` of two float32 tensors, computed in Rust off the main thread.
 * The result's buffer is the one Rust wrote (no copy on the way back).
 */
export async function matmul(a: Tensor, b: Tensor): Promise<Tensor> {
  checkTensor('a', a)
  checkTensor('b', b)
  return native().matmul(a.data, [...a.shape], b.data, [...b.shape])
}
