import { native } from './binding.js'
import { MarvelError, invalidParameter } from './errors.js'

/** A dense float32 tensor: row-major `data` and its `shape`. */
export interface Tensor {
  data: Float32Array
  shape: readonly number[]
}

/** Throws unless `shape` is a list of non-negative integers whose product is `length`; `what` names the tensor. */
export function checkShape(where: string, what: string, length: number, shape: readonly number[]): void {
  if (!Array.isArray(shape) || shape.some((d) => !Number.isInteger(d) || d < 0 || d > 0xffffffff)) {
    throw invalidParameter(where, `${what}.shape`, 'an array of non-negative integers', shape)
  }
  const n = shape.reduce((a, b) => a * b, 1)
  if (n !== length) {
    throw new MarvelError(
      'MARVEL_SHAPE_MISMATCH',
      `${where}: ${what}: shape [${shape.join(', ')}] needs ${n} elements but the buffer holds ${length}`,
    )
  }
}

/** Throws unless `t` is a `Tensor` whose Float32Array fills its shape. */
export function checkTensor(where: string, what: string, t: Tensor): void {
  if (!t || !(t.data instanceof Float32Array)) throw invalidParameter(where, `${what}.data`, 'a Float32Array', t?.data)
  checkShape(where, what, t.data.length, t.shape)
}

/**
 * Matrix product `(..., m, k) x (..., k, n)` of two float32 tensors, computed in Rust off the main thread. Internal
 * (tests, `bench/`): the dense kernel every model layer reduces to, not part of the package's API.
 */
export async function matmul(a: Tensor, b: Tensor): Promise<Tensor> {
  checkTensor('matmul', 'a', a)
  checkTensor('matmul', 'b', b)
  return native().matmul(a.data, [...a.shape], b.data, [...b.shape])
}
