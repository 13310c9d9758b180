// Times marvel through its TypeScript API (what a Node user runs): encode (u8 images -> tokens) and decode
// (tokens -> u8 images: decoder ViT + pixel decoder) at each batch size, 2 compute threads. Prints one JSON line
// for bench/titok.sh; prints {"engine":"marvel-node","skipped":...} while the package has no model API yet.
//
//   node bench/titok.mjs MODEL_DIR [--threads 2] [--batches 1,8] [--warmup 1] [--runs 5]
//
// Expects the built package (npm run build -> dist/) with `Tokenizer.fromPretrained(dir)`, `tokenizer.encode(images)`
// and `tokenizer.decode(tokens)` (the names of shared/DESIGN.md); adjust `api()` below if they land differently.

import { existsSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')

function parseArgs(argv) {
  const a = { model: null, threads: 2, batches: [1, 8], warmup: 1, runs: 5 }
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]
    if (k === '--threads') a.threads = Number(argv[++i])
    else if (k === '--batches') a.batches = argv[++i].split(',').map(Number)
    else if (k === '--warmup') a.warmup = Number(argv[++i])
    else if (k === '--runs') a.runs = Number(argv[++i])
    else if (!k.startsWith('--') && a.model === null) a.model = resolve(k)
    else throw new Error(`unknown argument ${k}`)
  }
  if (!a.model) throw new Error('usage: node bench/titok.mjs MODEL_DIR [--threads N] [--batches 1,8]')
  return a
}

function skip(reason) {
  console.log(JSON.stringify({ engine: 'marvel-node', skipped: reason }))
  process.exit(0)
}

/** Deterministic random RGB images (xorshift), 256x256. */
function randomImages(batch, seed) {
  let s = (seed * 2654435761) >>> 0 || 1
  const out = []
  for (let b = 0; b < batch; b++) {
    const data = new Uint8Array(256 * 256 * 3)
    for (let i = 0; i < data.length; i++) {
      s ^= s << 13
      s ^= s >>> 17
      s ^= s << 5
      data[i] = s & 0xff
    }
    out.push({ data, width: 256, height: 256 })
  }
  return out
}

async function timed(warmup, runs, fn) {
  let out
  for (let i = 0; i < warmup; i++) out = await fn()
  const times = []
  for (let i = 0; i < Math.max(1, runs); i++) {
    const t0 = process.hrtime.bigint()
    out = await fn()
    times.push(Number(process.hrtime.bigint() - t0) / 1e9)
  }
  return { times, out }
}

const median = (xs) => {
  const v = [...xs].sort((a, b) => a - b)
  const n = v.length
  return n % 2 ? v[(n - 1) / 2] : (v[n / 2 - 1] + v[n / 2]) / 2
}

async function api() {
  const entry = join(root, 'dist', 'index.js')
  if (!existsSync(entry)) skip('package not built (npm run build)')
  const m = await import(entry)
  const Tokenizer = m.Tokenizer ?? m.TiTok ?? m.Titok
  if (typeof Tokenizer?.fromPretrained !== 'function') skip('no Tokenizer.fromPretrained in the TypeScript API yet')
  return { m, Tokenizer }
}

async function main() {
  const args = parseArgs(process.argv.slice(2))
  const { m, Tokenizer } = await api()
  m.setNumThreads(args.threads)
  const baseRss = process.memoryUsage().rss / 2 ** 20
  const t0 = process.hrtime.bigint()
  const tok = await Tokenizer.fromPretrained(args.model)
  const loadS = Number(process.hrtime.bigint() - t0) / 1e9
  const loadedRss = process.memoryUsage().rss / 2 ** 20
  const results = []
  for (const b of args.batches) {
    const images = randomImages(b, 7 + b)
    // Inputs are already 256x256: no sharp resize, one native call per batch (the model's time, not sharp's).
    const enc = await timed(args.warmup, args.runs, () => tok.encode(images, { resize: 'none', batchSize: b }))
    const dec = await timed(args.warmup, args.runs, () => tok.decode(enc.out))
    for (const [stage, r] of [['encode', enc], ['decode', dec]]) {
      const med = median(r.times)
      results.push({ stage, batch: b, median_s: med, images_per_s: b / med, runs: r.times })
    }
  }
  console.log(
    JSON.stringify({
      engine: 'marvel-node',
      version: `marvel-tokenizer (Node ${process.version})`,
      threads: m.getNumThreads(),
      load_s: loadS,
      base_rss_mib: baseRss,
      loaded_rss_mib: loadedRss,
      // maxRSS is in KiB on Linux.
      peak_rss_mib: process.resourceUsage().maxRSS / 1024,
      results,
    }),
  )
}

main().catch((e) => skip(`TypeScript API call failed: ${e?.message ?? e}`))
