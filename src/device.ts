import { MarvelError, invalidParameter } from './errors.js'
import { native, nativePassedOver } from './binding.js'

/** Where the model's math runs: the CPU, the first GPU (`'cuda'`, same as `'cuda:0'`) or GPU N (`'cuda:N'`). */
export type Device = 'cpu' | 'cuda' | `cuda:${number}`

const DEVICE = /^(cpu|cuda|cuda:(0|[1-9][0-9]{0,3}))$/

/** `value` as a device name, or an argument error naming it; `undefined` is the CPU. */
export function deviceParameter(where: string, value: unknown): Device {
  if (value === undefined) return 'cpu'
  if (typeof value !== 'string' || !DEVICE.test(value)) throw invalidParameter(where, 'device', "'cpu', 'cuda' or 'cuda:N'", value)
  return value as Device
}

/**
 * Fails early, on the main thread, when a GPU is asked for and this addon has no CUDA (the native loader says the
 * same later, but only after the model folder was resolved, perhaps downloaded). A missing driver or device is
 * found by the native loader, with the same code.
 */
export function requireDevice(where: string, device: Device): Device {
  if (device !== 'cpu' && !native().cudaBuilt()) {
    // A CUDA addon that could not load (no driver: libcuda.so.1 missing) leaves the CPU one loaded; say so.
    const skipped = nativePassedOver().filter((a) => a.includes('failed to load'))
    const why = skipped.length > 0 ? `; passed over: ${skipped.join('; ')}` : ' (build one with `npm run build:cuda`)'
    throw new MarvelError('MARVEL_CUDA_UNAVAILABLE', `${where}: device '${device}' requested, but this marvel binary was built without CUDA${why}`)
  }
  return device
}
