// Times marvel through its TypeScript API (what a Node user runs): encode (u8 images -> tokens) and decode
// (tokens -> u8 images: decoder ViT + pixel decoder or pixel head) at each batch size, 2 compute threads. Prints one
// JSON line for bench/titok.sh.
//
//   node bench/titok.mjs MODEL_DIR [--threads 2] [--batches 1,8] [--warmup 1] [--runs 5] [--check CHECK.safetensors]
//       [--check-only]   (the check alone, printed on stderr: titok.sh runs it before any engine is timed)
//
// Expects the built package (npm run build -> dist/). With --check (prepare.py's check batch: u8 images, torch's
// tokens and decode_tokens output) it first encodes those images and decodes the tokens through the same API
// (`decodeFloat`, the unclamped float image) and exits non-zero without timing anything when a token differs or the
// image is off by more than 1e-3 of its scale.

import { existsSync, readFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')

function parseArgs(argv) {
  const a = { model: null, threads: 2, batches: [1, 8], warmup: 1, runs: 5, check: null, checkOnly: false }
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]
    if (k === '--threads') a.threads = Number(argv[++i])
    else if (k === '--batches') a.batches = argv[++i].split(',').map(Number)
    else if (k === '--warmup') a.warmup = Number(argv[++i])
    else if (k === '--runs') a.runs = Number(argv[++i])
    else if (k === '--check') a.check = resolve(argv[++i])
    else if (k === '--check-only') a.checkOnly = true
    else if (!k.startsWith('--') && a.model === null) a.model = resolve(k)
    else throw new Error(`unknown argument ${k}`)
  }
  if (!a.model) throw new Error('usage: node bench/titok.mjs MODEL_DIR [--threads N] [--batches 1,8]')
  return a
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

/** Wall seconds and the process's CPU seconds (all threads, as the Rust example's `cpu_s`) of each timed run. */
async function timed(warmup, runs, fn) {
  let out
  for (let i = 0; i < warmup; i++) out = await fn()
  const times = []
  const cpu = []
  for (let i = 0; i < Math.max(1, runs); i++) {
    const c0 = process.cpuUsage()
    const t0 = process.hrtime.bigint()
    out = await fn()
    times.push(Number(process.hrtime.bigint() - t0) / 1e9)
    const c = process.cpuUsage(c0)
    cpu.push((c.user + c.system) / 1e6)
  }
  return { times, cpu, out }
}

const median = (xs) => {
  const v = [...xs].sort((a, b) => a - b)
  const n = v.length
  return n % 2 ? v[(n - 1) / 2] : (v[n / 2 - 1] + v[n / 2]) / 2
}

/** The tensors of a safetensors file as typed arrays (the dtypes prepare.py writes: U8, I64, F32). */
function readSafetensors(path) {
  const buf = readFileSync(path)
  const n = Number(buf.readBigUInt64LE(0))
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'))
  const base = 8 + n
  const out = {}
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue
    const [a, b] = t.data_offsets
    const bytes = buf.subarray(base + a, base + b)
    const copy = new Uint8Array(bytes) // aligned for the typed views below
    const kinds = { U8: Uint8Array, I64: BigInt64Array, F32: Float32Array }
    if (!kinds[t.dtype]) throw new Error(`${path}: ${name} has dtype ${t.dtype}`)
    out[name] = { shape: t.shape, data: new kinds[t.dtype](copy.buffer, 0, copy.byteLength / kinds[t.dtype].BYTES_PER_ELEMENT) }
  }
  return out
}

const TOL = 1e-3

/** marvel through Node against torch's outputs on prepare.py's check batch; figures and whether all are in bounds. */
async function check(tok, path) {
  const t = readSafetensors(path)
  const [batch, h, w, c] = t.images_u8.shape
  const images = Array.from({ length: batch }, (_, i) => ({ data: t.images_u8.data.subarray(i * h * w * c, (i + 1) * h * w * c), width: w, height: h }))
  const tokens = await tok.encode(images, { resize: 'none' })
  // torch: (B, N) for VQ, (B, N, D) for LFQ; marvel's Tokens are depth-major: data[(d * batch + b) * N + n].
  const [, n] = t.tokens.shape
  const depth = t.tokens.shape[2] ?? 1
  let equal = 0
  for (let b = 0; b < batch; b++) {
    for (let k = 0; k < n; k++) {
      for (let d = 0; d < depth; d++) {
        if (BigInt(tokens.data[(d * batch + b) * n + k]) === t.tokens.data[(b * n + k) * depth + d]) equal++
      }
    }
  }
  const identical = equal === batch * n * depth && tokens.data.length === equal
  const recon = await tok.decodeFloat(tokens)
  let err = 0
  let scale = 1
  for (let i = 0; i < t.recon.data.length; i++) {
    const d = Math.abs(recon.data[i] - t.recon.data[i])
    err = Number.isNaN(d) ? NaN : Math.max(err, d)
    scale = Math.max(scale, Math.abs(t.recon.data[i]))
  }
  const imageErr = recon.data.length === t.recon.data.length ? err / scale : NaN
  // NaN compares false, so it never passes.
  const ok = identical && imageErr <= TOL
  return { ok, tol: TOL, tokens_identical: identical, tokens_equal: equal, tokens: batch * n * depth, image_err: imageErr }
}

async function api() {
  const entry = join(root, 'dist', 'index.js')
  if (!existsSync(entry)) throw new Error('the package is not built (npm run build)')
  const m = await import(entry)
  return { m, Tokenizer: m.Tokenizer }
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
  const checked = args.check ? await check(tok, args.check) : null
  if (checked && !checked.ok) {
    console.error(`marvel-node: outputs differ from the reference's, so nothing was timed: ${JSON.stringify(checked)}`)
    process.exit(1)
  }
  if (args.checkOnly) {
    console.error(`marvel-node: ${JSON.stringify(checked)}`)
    return
  }
  const results = []
  for (const b of args.batches) {
    const images = randomImages(b, 7 + b)
    // Inputs are already 256x256: no sharp resize, one native call per batch (the model's time, not sharp's).
    const enc = await timed(args.warmup, args.runs, () => tok.encode(images, { resize: 'none', batchSize: b }))
    const dec = await timed(args.warmup, args.runs, () => tok.decode(enc.out))
    for (const [stage, r] of [['encode', enc], ['decode', dec]]) {
      const med = median(r.times)
      results.push({ stage, batch: b, median_s: med, images_per_s: b / med, runs: r.times, cpu_s: r.cpu })
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
      check: checked,
      results,
    }),
  )
}

main().catch((e) => {
  console.error(`marvel-node: ${e?.stack ?? e}`)
  process.exit(1)
})
