import { spawnSync } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'

import * as api from '../src/index.js'
import { MarvelError, getNumThreads, setNumThreads } from '../src/index.js'
import { native, nativeVersion, weightFiles } from '../src/binding.js'
import { matmul } from '../src/tensor.js'

function naiveMatmul(a: Float32Array, b: Float32Array, m: number, k: number, n: number): Float32Array {
  const c = new Float32Array(m * n)
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let s = 0
      for (let p = 0; p < k; p++) s += a[i * k + p] * b[p * n + j]
      c[i * n + j] = s
    }
  return c
}

function seeded(n: number, seed: number): Float32Array {
  let x = seed >>> 0
  const out = new Float32Array(n)
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0
    out[i] = x / 2 ** 32 - 0.5
  }
  return out
}

describe('a tensor through Rust and back', () => {
  it('matmul gives the right numbers and shape', async () => {
    const [m, k, n] = [5, 7, 3]
    const a = seeded(m * k, 1)
    const b = seeded(k * n, 2)
    const c = await matmul({ data: a, shape: [m, k] }, { data: b, shape: [k, n] })
    expect(c.shape).toEqual([m, n])
    expect(c.data).toBeInstanceOf(Float32Array)
    const want = naiveMatmul(a, b, m, k, n)
    for (let i = 0; i < want.length; i++) expect(c.data[i]).toBeCloseTo(want[i], 5)
  })

  it('batched matmul keeps the batch dimension', async () => {
    const a = seeded(2 * 3 * 4, 3)
    const b = seeded(2 * 4 * 2, 4)
    const c = await matmul({ data: a, shape: [2, 3, 4] }, { data: b, shape: [2, 4, 2] })
    expect(c.shape).toEqual([2, 3, 2])
    const second = naiveMatmul(a.subarray(12), b.subarray(8), 3, 4, 2)
    for (let i = 0; i < 6; i++) expect(c.data[6 + i]).toBeCloseTo(second[i], 5)
  })

  it('reports the native version', () => {
    expect(nativeVersion()).toMatch(/^\d+\.\d+\.\d+/)
  })
})

describe('the public exports', () => {
  it('hold the API, not the internals (matmul, platformName, nativeVersion stay in their modules)', () => {
    for (const internal of ['matmul', 'platformName', 'nativeVersion', 'native', 'weightFiles']) expect(api).not.toHaveProperty(internal)
    for (const name of ['Tokenizer', 'Tokens', 'MaskgitVqgan', 'lfqQuantize', 'lfqLosses', 'MarvelError']) expect(api).toHaveProperty(name)
  })

  it('the binding crate converts and runs tasks only: it has no candle dependency of its own', () => {
    const manifest = readFileSync(join(__dirname, '..', 'crates', 'marvel-node', 'Cargo.toml'), 'utf8')
    const deps = manifest.split('[dependencies]')[1].split('\n[')[0]
    expect(deps).toMatch(/marvel-core/)
    expect(deps).not.toMatch(/candle/)
  })

  it('the weight-file list comes from the core, once', () => {
    expect(weightFiles()).toEqual(['model.safetensors', 'pytorch_model.bin'])
    expect(weightFiles()).toBe(weightFiles())
    expect(Object.isFrozen(weightFiles())).toBe(true)
  })

  it('no TypeScript file spells a weight-file name as a string: they all ask weightFiles()', () => {
    const src = join(__dirname, '..', 'src')
    const files = (readdirSync(src, { recursive: true }) as string[]).filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts'))
    const spelled: string[] = []
    for (const file of files) {
      // Comments may name the files (documentation); code may not.
      const code = readFileSync(join(src, file), 'utf8').replace(/\/\*[\s\S]*?\*\//g, '').replace(/\/\/.*$/gm, '')
      for (const name of weightFiles()) if (new RegExp(`(['"\`])${name.replace('.', '\\.')}\\1`).test(code)) spelled.push(`${file}: ${name}`)
    }
    expect(files.length).toBeGreaterThan(10)
    expect(spelled).toEqual([])
  })
})

describe('errors carry stable codes', () => {
  it('a shape that does not fit the buffer is rejected before crossing into Rust', async () => {
    const err = await matmul({ data: new Float32Array(5), shape: [2, 3] }, { data: new Float32Array(6), shape: [3, 2] }).catch((e) => e)
    expect(err).toBeInstanceOf(MarvelError)
    expect(err.code).toBe('MARVEL_SHAPE_MISMATCH')
    expect(err.message).toMatch(/^matmul: a: shape \[2, 3\] needs 6 elements but the buffer holds 5/)
  })

  it('the binding validates shapes too (called directly, bypassing the TS checks)', async () => {
    const err = await native()
      .matmul(new Float32Array(5), [2, 3], new Float32Array(6), [3, 2])
      .then(() => undefined, (e: unknown) => e as Error & { code: string })
    expect(err).toBeInstanceOf(Error)
    expect(err!.code).toBe('MARVEL_SHAPE_MISMATCH')
    expect(err!.message).toMatch(/a: shape \[2, 3\] needs 6 elements/)
  })

  it('a Rust-side error (inner dimensions) becomes a rejected promise with a code', async () => {
    const err = await matmul({ data: new Float32Array(6), shape: [2, 3] }, { data: new Float32Array(6), shape: [2, 3] }).catch((e) => e)
    expect(err.code).toBe('MARVEL_SHAPE_MISMATCH')
    expect(err.message).toMatch(/\[2, 3\] x \[2, 3\] do not fit/)
  })

  it('bad argument types are rejected with MARVEL_INVALID_ARGUMENT', async () => {
    const err = await matmul({ data: [1, 2] as unknown as Float32Array, shape: [2] }, { data: new Float32Array(2), shape: [2] }).catch((e) => e)
    expect(err.code).toBe('MARVEL_INVALID_ARGUMENT')
    expect(err.message).toBe('matmul: expected a.data to be a Float32Array but received an array of length 2')
  })

  it('a panic inside an async task becomes a rejected promise and the process survives', async () => {
    const err = await native()
      ._panicInTask('boom from the test')
      .then(() => undefined, (e: unknown) => e as Error & { code: string })
    expect(err).toBeInstanceOf(Error)
    expect(err!.code).toBe('MARVEL_PANIC')
    expect(err!.message).toMatch(/boom from the test/)
    // The addon still works after the panic.
    const c = await matmul({ data: new Float32Array([2]), shape: [1, 1] }, { data: new Float32Array([3]), shape: [1, 1] })
    expect(Array.from(c.data)).toEqual([6])
  })
})

describe('heavy calls never block the event loop', () => {
  it('a setInterval counter keeps advancing while a long matmul runs', async () => {
    const n = 1024
    const a = seeded(n * n, 5)
    const b = seeded(n * n, 6)
    let ticks = 0
    const timer = setInterval(() => ticks++, 1)
    const started = performance.now()
    // Several products in flight back to back: long enough to see many timer ticks.
    let calls = 0
    while (performance.now() - started < 400 || calls < 3) {
      await matmul({ data: a, shape: [n, n] }, { data: b, shape: [n, n] })
      calls++
    }
    const elapsed = performance.now() - started
    clearInterval(timer)
    // A blocked loop would see ~0 ticks; an idle one ~elapsed. Require a good share of the possible ticks.
    expect(ticks).toBeGreaterThan(Math.min(20, elapsed / 10))
  })
})

describe('compute threads', () => {
  it('setNumThreads changes what getNumThreads reports', () => {
    const before = getNumThreads()
    expect(before).toBeGreaterThanOrEqual(1)
    setNumThreads(1)
    expect(getNumThreads()).toBe(1)
    setNumThreads(before)
    expect(getNumThreads()).toBe(before)
  })

  // setenv races with every thread that reads the environment (libvips, the resolver): the count lives in the
  // addon's own pool. process.env reads the C environment on each access, so a write from Rust would show here.
  it('setNumThreads leaves the process environment alone', () => {
    const script = `import('./dist/index.js').then(m => { m.setNumThreads(3); m.getNumThreads(); console.log(String(process.env.RAYON_NUM_THREADS)) })`
    const env = { ...process.env }
    delete env.RAYON_NUM_THREADS
    const out = spawnSync(process.execPath, ['--input-type=module', '-e', script], { env, encoding: 'utf8' })
    expect(out.stderr).toBe('')
    expect(out.stdout.trim()).toBe('undefined')
  })

  it('rejects a bad thread count', () => {
    expect(() => setNumThreads(0)).toThrow(/from 1 to 1024/)
    expect(() => setNumThreads(1.5)).toThrow(MarvelError)
  })

  it('MARVEL_NUM_THREADS sets the default', () => {
    const script = `import('./dist/index.js').then(m => console.log(m.getNumThreads()))`
    const run = (value: string) =>
      spawnSync(process.execPath, ['--input-type=module', '-e', script], {
        env: { ...process.env, MARVEL_NUM_THREADS: value },
        encoding: 'utf8',
      })
    const ok = run('3')
    expect(ok.stderr).toBe('')
    expect(ok.stdout.trim()).toBe('3')
    const bad = run('lots')
    expect(bad.status).not.toBe(0)
    expect(bad.stderr).toMatch(/MARVEL_NUM_THREADS="lots" is not a positive integer/)
  })
})
