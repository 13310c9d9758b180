import { native } from './binding.js'
import { invalidArgument } from './errors.js'

/**
 * Number of threads the compute kernels use. Defaults to the number of physical cores, or to
 * `MARVEL_NUM_THREADS` when that environment variable is set before the first call.
 */
export function getNumThreads(): number {
  return native().getNumThreads()
}

/** Set the number of compute threads (1 to 1024). Calls already running finish on the previous setting. */
export function setNumThreads(threads: number): void {
  if (!Number.isInteger(threads) || threads < 1 || threads > 1024) {
    throw invalidArgument(`setNumThreads: threads must be an integer from 1 to 1024, got ${threads}`)
  }
  native().setNumThreads(threads)
}
