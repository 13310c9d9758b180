/**
 * Memory of loading a model, measured where it can be: each step runs in a fresh child process that prints its own
 * peak RSS (`process.resourceUsage().maxRSS`), against a baseline child that only loads the package and the addon.
 * The model is a random ViT of about 200 MB of f32 weights, large enough that a second copy of the weights (a read
 * buffer kept beside the tensors, a conversion through f64) shows as a failure, small enough for a 2-core runner.
 * These bound memory, not time. Figures for real checkpoints: bench/README.md.
 */
import { spawnSync } from 'node:child_process'
import { mkdtempSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

import { beforeAll, describe, expect, it } from 'vitest'

import { createRandomModel } from '../src/index.js'

const root = fileURLToPath(new URL('..', import.meta.url))
const dist = join(root, 'dist', 'index.js')
const MB = 2 ** 20

/** A TiTok (VQ, so marvelFromTitok takes it) of width 768 with 3 encoder and 3 decoder layers: ~190 MB of f32. */
function midConfig(): object {
  const vit = (prefix: string) => ({
    [`${prefix}_model_size`]: 'custom',
    [`${prefix}_width`]: 768,
    [`${prefix}_num_layers`]: 3,
    [`${prefix}_num_heads`]: 12,
    [`${prefix}_patch_size`]: 16,
  })
  return {
    model: {
      vq_model: {
        quantize_mode: 'vq',
        token_size: 12,
        codebook_size: 4096,
        use_l2_norm: true,
        num_latent_tokens: 32,
        ...vit('vit_enc'),
        ...vit('vit_dec'),
        is_legacy: false,
        finetune_decoder: false,
      },
    },
    dataset: { preprocessing: { crop_size: 256 } },
  }
}

/**
 * Runs `body` (module code with `m`, the built package) in a fresh Node and returns what it measured: its peak RSS
 * and, on Linux, its current RSS at the end (after a full GC), both in bytes.
 */
function measure(body: string): { peak: number; current: number | undefined } {
  const script = `
    const m = await import(${JSON.stringify(dist)})
    m.getNumThreads()
    ${body}
    // Native objects' finalizers and finished async tasks are released on later turns of the event loop, not inside
    // the call that let them go: give them one before measuring what stays resident.
    await new Promise((resolve) => setTimeout(resolve, 100))
    globalThis.gc()
    await new Promise((resolve) => setTimeout(resolve, 100))
    let current
    try {
      const status = (await import('node:fs')).readFileSync('/proc/self/status', 'utf8')
      current = Number(/VmRSS:\\s+(\\d+) kB/.exec(status)[1]) * 1024
    } catch {}
    console.log(JSON.stringify({ peak: process.resourceUsage().maxRSS * 1024, current }))
  `
  const r = spawnSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 120_000 })
  expect(r.stderr).toBe('')
  expect(r.status).toBe(0)
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!)
}

let dir: string
let weights: number
let baseline: { peak: number; current: number | undefined }

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'marvel-mem-'))
  await createRandomModel(join(dir, 'titok'), midConfig(), 7)
  weights = statSync(join(dir, 'titok', 'model.safetensors')).size
  baseline = measure('')
})

const ratio = (bytes: number) => ((bytes - baseline.peak) / weights).toFixed(2)

describe('memory of loading a ~200 MB model (child processes, peak RSS against a baseline child)', () => {
  it('the test model is mid-size: 150 to 250 MB of weights', () => {
    expect(weights).toBeGreaterThan(150 * MB)
    expect(weights).toBeLessThan(250 * MB)
  })

  it('Tokenizer.fromPretrained peaks at most 1.2 x the weights above the baseline', () => {
    const { peak } = measure(`await m.Tokenizer.fromPretrained(${JSON.stringify(join(dir, 'titok'))})`)
    console.log(`load: peak ${(peak / MB).toFixed(0)} MB, baseline ${(baseline.peak / MB).toFixed(0)} MB, weights ${(weights / MB).toFixed(0)} MB: ${ratio(peak)} x weights`)
    expect(peak - baseline.peak).toBeLessThanOrEqual(1.2 * weights)
  })

  it('Tokenizer.inspect reads no weight: at most 50 MB above the baseline', () => {
    const { peak } = measure(`await m.Tokenizer.inspect(${JSON.stringify(join(dir, 'titok'))})`)
    console.log(`inspect: ${((peak - baseline.peak) / MB).toFixed(1)} MB above the baseline (${ratio(peak)} x weights)`)
    expect(peak - baseline.peak).toBeLessThanOrEqual(50 * MB)
  })

  it('marvelFromTitok streams the conversion: at most 0.5 x the weights above the baseline', () => {
    const { peak } = measure(`await m.marvelFromTitok(${JSON.stringify(join(dir, 'titok'))}, ${JSON.stringify(join(dir, 'marvel'))}, { depth: 2 })`)
    console.log(`marvelFromTitok: ${ratio(peak)} x weights above the baseline`)
    expect(peak - baseline.peak).toBeLessThanOrEqual(0.5 * weights)
  })

  it.skipIf(process.platform !== 'linux')(
    `load + dispose twice gives the memory back: RSS within 0.2 x the weights of the baseline${process.platform === 'linux' ? '' : ' (skipped: reads VmRSS from /proc/self/status, Linux only)'}`,
    () => {
      const { current } = measure(`
        for (let i = 0; i < 2; i++) {
          const tok = await m.Tokenizer.fromPretrained(${JSON.stringify(join(dir, 'titok'))})
          tok.dispose()
        }
      `)
      console.log(`after load + dispose twice: RSS ${ratio(current!)} x weights above the baseline peak`)
      expect(current! - baseline.peak).toBeLessThanOrEqual(0.2 * weights)
    },
  )
})
