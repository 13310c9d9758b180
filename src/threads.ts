import { native } from './binding.js'
import { integerParameter } from './errors.js'

/**
 * Number of threads the compute kernels use. Defaults to the number of physical cores, or to
 * `MARVEL_NUM_THREADS` when that environment variable is set before the first call.
 */
export function getNumThreads(): number {
  return native().getNumThreads()
}

/**
 * Set the number of compute threads (1 to 1024). Calls already running finish on the previous setting. The same
 * number bounds how many images are decoded at once across the process (see `readImage`).
 */
export function setNumThreads(threads: number): void {
  native().setNumThreads(integerParameter('setNumThreads', 'threads', threads, 1, 1024))
}
