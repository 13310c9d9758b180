#!/usr/bin/env node
// Peak RSS of many concurrent encode() calls of 4K photos, against the same calls one after another: what the
// process-wide decode bound (at most getNumThreads() images decoded at once, src/image.ts) is for.
//
//   npm run build && node bench/decode-memory.mjs            # CALLS=200 by default, THREADS=2
//   CALLS=64 node bench/decode-memory.mjs
//
// Each case runs in a fresh process (peak RSS is per process): `sequential` (await each call), `concurrent`
// (Promise.all with the bound at THREADS), and `concurrent, bound 1024` (setNumThreads(1024): the bound no longer
// binds below 1024 calls, as before it existed; the compute pool also grows, which the tiny model barely uses).
// The model is a tiny random-weight one, so the figures are the image side's memory, not the model's.
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const work = join(root, 'bench', '.work', 'decode-memory')
const CALLS = Number(process.env.CALLS ?? 200)
const THREADS = Number(process.env.THREADS ?? 2)

async function child(mode, threads) {
  const marvel = await import(join(root, 'dist', 'index.js'))
  marvel.setNumThreads(threads)
  const tok = await marvel.Tokenizer.fromPretrained(join(work, 'model'))
  const photo = readFileSync(join(work, 'photo-4k.jpg'))
  const start = Date.now()
  if (mode === 'sequential') {
    for (let i = 0; i < CALLS; i++) await tok.encode(photo)
  } else {
    await Promise.all(Array.from({ length: CALLS }, () => tok.encode(photo)))
  }
  const seconds = (Date.now() - start) / 1000
  tok.dispose()
  console.log(JSON.stringify({ peakRssMb: process.resourceUsage().maxRSS / 1024, seconds }))
}

async function main() {
  if (!existsSync(join(root, 'dist', 'index.js'))) throw new Error('dist/ is not built: run npm run build first')
  const marvel = await import(join(root, 'dist', 'index.js'))
  const sharp = (await import('sharp')).default
  mkdirSync(work, { recursive: true })
  if (!existsSync(join(work, 'model', 'config.json'))) {
    const vit = (p) => ({ [`${p}_model_size`]: 'custom', [`${p}_width`]: 32, [`${p}_num_layers`]: 1, [`${p}_num_heads`]: 2, [`${p}_patch_size`]: 16 })
    const config = {
      model: { vq_model: { quantize_mode: 'lfq', token_size: 6, num_depths: 2, num_latent_tokens: 4, ...vit('vit_enc'), ...vit('vit_dec') } },
      dataset: { preprocessing: { crop_size: 256 } },
    }
    await marvel.createRandomModel(join(work, 'model'), config, 1)
  }
  if (!existsSync(join(work, 'photo-4k.jpg'))) {
    // Noise compresses like a detailed photo (about 5 MB at quality 90), so decoding costs what a real one costs.
    await sharp({ create: { width: 3840, height: 2160, channels: 3, background: '#808080', noise: { type: 'gaussian', mean: 128, sigma: 40 } } })
      .jpeg({ quality: 90 })
      .toFile(join(work, 'photo-4k.jpg'))
  }
  const cases = [
    ['sequential', 'sequential', THREADS],
    [`concurrent, bound ${THREADS} (getNumThreads)`, 'concurrent', THREADS],
    ['concurrent, bound 1024 (no bound in effect)', 'concurrent', 1024],
  ]
  console.log(`${CALLS} encode() calls of one 3840x2160 JPEG, tiny model, ${THREADS} compute threads`)
  console.log('| case | peak RSS (MB) | seconds |\n|---|---|---|')
  for (const [label, mode, threads] of cases) {
    const out = execFileSync(process.execPath, [fileURLToPath(import.meta.url), '--child', mode, String(threads)], { encoding: 'utf8', env: process.env })
    const r = JSON.parse(out.trim().split('\n').pop())
    console.log(`| ${label} | ${r.peakRssMb.toFixed(0)} | ${r.seconds.toFixed(1)} |`)
  }
}

if (process.argv[2] === '--child') await child(process.argv[3], Number(process.argv[4]))
else await main()
