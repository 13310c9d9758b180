/**
 * Loads the native addon. Order: the installed per-platform package (`marvel-tokenizer-<platform>`, what
 * `npm install` brings where a prebuilt binary exists), then a binary built locally into the package root
 * (`marvel.<platform>.node`, what `npm run build:native` writes). Neither: an error naming the platform.
 */
import { existsSync, readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

import { MarvelError, type MarvelErrorCode } from './errors.js'
import type * as Native from './native.js'

export type NativeBinding = typeof Native

const require = createRequire(import.meta.url)

/** The package root: this file is `src/binding.ts` in the repository and `dist/index.*` once built. */
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url))
  for (let i = 0; i < 4; i++) {
    const pkg = join(dir, 'package.json')
    if (existsSync(pkg) && JSON.parse(readFileSync(pkg, 'utf8')).name === 'marvel-tokenizer') return dir
    dir = dirname(dir)
  }
  return join(dirname(fileURLToPath(import.meta.url)), '..')
}

function isMusl(): boolean {
  if (process.platform !== 'linux') return false
  const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined
  return !report?.header?.glibcVersionRuntime
}

/** napi-rs platform name, e.g. `linux-x64-gnu`, `darwin-arm64`, `win32-x64-msvc`. */
export function platformName(platform: string = process.platform, arch: string = process.arch): string {
  switch (platform) {
    case 'linux':
      return `linux-${arch}-${isMusl() ? 'musl' : 'gnu'}`
    case 'win32':
      return `win32-${arch}-msvc`
    default:
      return `${platform}-${arch}`
  }
}

export function loadBinding(): NativeBinding {
  const platform = platformName()
  const attempts: string[] = []
  const candidates: Array<[string, () => string]> = [
    [`package marvel-tokenizer-${platform}`, () => require.resolve(`marvel-tokenizer-${platform}`)],
    [`local build`, () => join(packageRoot(), `marvel.${platform}.node`)],
  ]
  if (process.env.MARVEL_NATIVE_PATH) candidates.unshift(['$MARVEL_NATIVE_PATH', () => process.env.MARVEL_NATIVE_PATH!])
  for (const [label, resolve] of candidates) {
    let path: string
    try {
      path = resolve()
    } catch {
      attempts.push(`${label}: not installed`)
      continue
    }
    if (!existsSync(path)) {
      attempts.push(`${label}: ${path} not found`)
      continue
    }
    try {
      const binding = withMarvelErrors(require(path) as NativeBinding)
      passedOver = attempts.slice()
      return binding
    } catch (e) {
      attempts.push(`${label}: ${path} failed to load (${(e as Error).message})`)
    }
  }
  throw new MarvelError(
    'MARVEL_NATIVE_BINDING',
    `marvel has no native binary for platform ${platform}. Tried:\n  ${attempts.join('\n  ')}\n` +
      `Install the prebuilt package marvel-tokenizer-${platform}, or build from source with a Rust toolchain ` +
      `(npm run build:native).`,
  )
}

/** A native error (plain `Error` with a `MARVEL_*` code) as a `MarvelError`, so `instanceof` works for every error. */
function toMarvelError(e: unknown): unknown {
  const code = (e as { code?: unknown })?.code
  if (e instanceof Error && !(e instanceof MarvelError) && typeof code === 'string' && code.startsWith('MARVEL_')) {
    return new MarvelError(code as MarvelErrorCode, e.message, { cause: e })
  }
  return e
}

function wrapped<F extends (...args: never[]) => unknown>(fn: F): F {
  return function (this: unknown, ...args: never[]) {
    try {
      const out = fn.apply(this, args)
      return out instanceof Promise ? out.catch((e) => Promise.reject(toMarvelError(e))) : out
    } catch (e) {
      throw toMarvelError(e)
    }
  } as F
}

/** Wraps every exported function and every method/getter of exported classes once, at load. */
function withMarvelErrors(binding: NativeBinding): NativeBinding {
  const out: Record<string, unknown> = {}
  for (const [name, value] of Object.entries(binding)) {
    if (typeof value !== 'function') {
      out[name] = value
    } else if (/^[A-Z]/.test(name)) {
      const proto = (value as { prototype: object }).prototype
      for (const key of Object.getOwnPropertyNames(proto)) {
        const d = Object.getOwnPropertyDescriptor(proto, key)!
        if (key === 'constructor') continue
        if (typeof d.value === 'function') Object.defineProperty(proto, key, { ...d, value: wrapped(d.value) })
        else if (d.get) Object.defineProperty(proto, key, { ...d, get: wrapped(d.get) })
      }
      out[name] = value
    } else {
      out[name] = wrapped(value as (...args: never[]) => unknown)
    }
  }
  return out as NativeBinding
}

let cached: NativeBinding | undefined

/**
 * The candidates tried and passed over before the addon that loaded (a CUDA addon named by MARVEL_NATIVE_PATH that
 * failed for want of the driver's libcuda.so.1, say), for errors that would otherwise blame the addon that loaded.
 */
let passedOver: string[] = []

export function nativePassedOver(): readonly string[] {
  native()
  return passedOver
}

/** The native addon, loaded once on first use. */
export function native(): NativeBinding {
  cached ??= loadBinding()
  return cached
}

/** Version of the loaded native addon (internal: tests and bug reports). */
export function nativeVersion(): string {
  return native().nativeVersion()
}

let weights: readonly string[] | undefined

/** Weight files looked for in a model folder, in order of preference: the core's one list, read once. */
export function weightFiles(): readonly string[] {
  weights ??= Object.freeze(native().weightFiles())
  return weights
}
