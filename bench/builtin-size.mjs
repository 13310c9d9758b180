// Sizes the built-in MARVEL model: for each candidate ViT size (the `single` recipe: pixel head, LFQ 12 bits x 4
// depths, 32 tokens, 16x16 patches) it writes a random-weight model, loads it through the Node API and times
// encode + decode (all 4 depths) of one 256x256 image, batch 1, on --threads compute threads. The budget of
// issue 11: under 0.5 s per image on 2 cores and under 25 MB of weights (stored as F16, which the loader converts
// back to F32; the F16 copy's reconstruction is checked against the F32 one). `--train NAME` also times
// `Trainer.step` for that candidate at batch 8 and 16, so the number of steps of a CPU run can be planned.
//
//   npm run build && node bench/builtin-size.mjs [--threads 2] [--runs 5] [--train NAME] [--only NAME,NAME]
//
// Random weights time the same work as trained ones: no kernel's cost depends on the values.

import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, mkdirSync, copyFileSync } from 'node:fs'
import { loadavg, tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

import { safetensorsToF16 } from '../scripts/builtin-data/f16-safetensors.mjs'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const { Tokenizer, Trainer, createRandomModel, setNumThreads } = await import(pathToFileURL(join(root, 'dist', 'index.js')).href)

/** name -> [width, encoder layers, decoder layers, heads]; heads keep a head width of 64. w256-e4-d6 is configs/builtin.yaml's. */
const CANDIDATES = {
  'w256-l4': [256, 4, 4, 4],
  'w256-e4-d6': [256, 4, 6, 4],
  'w256-l6': [256, 6, 6, 4],
  'w320-l4': [320, 4, 4, 5],
  'w384-l3': [384, 3, 3, 6],
  'w384-l2-4': [384, 2, 4, 6],
  'w384-l4': [384, 4, 4, 6],
  'w512-l2': [512, 2, 2, 8],
}

/** The built-in model's `model.vq_model` at a given ViT size (the keys configs/builtin.yaml uses). */
export function builtinVqModel([width, encLayers, decLayers, heads]) {
  return {
    quantize_mode: 'lfq', token_size: 12, num_depths: 4, num_latent_tokens: 32,
    entropy_loss_weight: 0.02, entropy_loss_temperature: 0.01, entropy_gamma: 1.0, depth_dropout: 0.5,
    vit_enc_model_size: 'custom', vit_enc_width: width, vit_enc_num_layers: encLayers, vit_enc_num_heads: heads,
    vit_dec_model_size: 'custom', vit_dec_width: width, vit_dec_num_layers: decLayers, vit_dec_num_heads: heads,
    vit_enc_patch_size: 16, vit_dec_patch_size: 16, is_legacy: false, finetune_decoder: false,
  }
}

function parseArgs(argv) {
  const a = { threads: 2, runs: 5, train: null, only: null }
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]
    if (k === '--threads') a.threads = Number(argv[++i])
    else if (k === '--runs') a.runs = Number(argv[++i])
    else if (k === '--train') a.train = argv[++i]
    else if (k === '--only') a.only = argv[++i].split(',')
    else throw new Error(`unknown argument ${k}`)
  }
  for (const name of [...(a.only ?? []), ...(a.train ? [a.train] : [])]) {
    if (!CANDIDATES[name]) throw new Error(`unknown candidate ${name}; known: ${Object.keys(CANDIDATES).join(', ')}`)
  }
  return a
}

/** A deterministic photo-like 256x256 image (smooth gradients plus texture): the timing does not depend on it. */
function image(size = 256, seed = 1) {
  const data = new Uint8Array(size * size * 3)
  for (let i = 0; i < data.length; i++) {
    const px = (i / 3) | 0
    const [x, y, c] = [px % size, (px / size) | 0, i % 3]
    data[i] = Math.max(0, Math.min(255, Math.round(128 + 90 * Math.sin(x * 0.05 + c + seed) * Math.cos(y * 0.03) + ((x * 7 + y * 13 + c) % 17) - 8)))
  }
  return data
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b)
  return s[s.length >> 1]
}

/**
 * Median wall time of `fn` and the process's CPU time (user + system) per run. On a shared machine the wall time
 * grows with the other processes' load while the CPU time barely moves: CPU time / threads is what the run would
 * take on idle cores.
 */
async function timeIt(fn, runs) {
  await fn() // warm-up: first-touch allocations and kernel caches
  const times = []
  const cpu0 = process.cpuUsage()
  for (let r = 0; r < runs; r++) {
    const t0 = performance.now()
    await fn()
    times.push(performance.now() - t0)
  }
  const cpu = process.cpuUsage(cpu0)
  return { wall: median(times), cpu: (cpu.user + cpu.system) / 1000 / runs }
}

async function measure(name, size, runs, work) {
  const dir = join(work, name)
  const config = { model: { vq_model: builtinVqModel(size) }, dataset: { preprocessing: { crop_size: 256 } } }
  await createRandomModel(dir, config, 1)
  const f32Bytes = statSync(join(dir, 'model.safetensors')).size
  const half = join(work, `${name}-f16`)
  mkdirSync(half)
  copyFileSync(join(dir, 'config.json'), join(half, 'config.json'))
  writeFileSync(join(half, 'model.safetensors'), safetensorsToF16(readFileSync(join(dir, 'model.safetensors'))))
  const f16Bytes = statSync(join(half, 'model.safetensors')).size

  const tok = await Tokenizer.fromPretrained(half)
  const input = { data: image(), width: 256, height: 256 }
  const tokens = await tok.encode(input, { resize: 'none' })
  const encode = await timeIt(() => tok.encode(input, { resize: 'none' }), runs)
  const decode = await timeIt(() => tok.decode(tokens), runs)
  // The F16 file must load and reconstruct like the F32 one, up to F16 rounding of the weights.
  const full = await Tokenizer.fromPretrained(dir)
  const [a] = await tok.decode(tokens)
  const [b] = await full.decode(tokens)
  let maxDiff = 0
  for (let i = 0; i < a.data.length; i++) maxDiff = Math.max(maxDiff, Math.abs(a.data[i] - b.data[i]))
  const params = tok.info.parameters
  tok.dispose()
  full.dispose()
  return { name, width: size[0], enc: size[1], dec: size[2], heads: size[3], params, f32MB: f32Bytes / 1e6, f16MB: f16Bytes / 1e6, encodeMs: encode.wall, decodeMs: decode.wall, totalMs: encode.wall + decode.wall, cpuMs: encode.cpu + decode.cpu, f16MaxPixelDiff: maxDiff }
}

async function measureTraining(name, size, threads) {
  const lr = 1e-4
  const config = {
    model: { vq_model: builtinVqModel(size) },
    dataset: { preprocessing: { crop_size: 256 } },
    losses: { quantizer_weight: 1.0, reconstruction_loss: 'l2', reconstruction_weight: 1.0 },
    optimizer: { name: 'adamw', params: { learning_rate: lr, beta1: 0.9, beta2: 0.99, weight_decay: 1e-4 } },
    lr_scheduler: { scheduler: 'cosine', params: { learning_rate: lr, warmup_steps: 10, end_lr: lr / 10 } },
    training: { gradient_accumulation_steps: 1, use_ema: true, max_train_steps: 1000, max_grad_norm: 1.0 },
  }
  const rows = []
  for (const batch of [8, 16]) {
    const t = await Trainer.create(config, { seed: 1 })
    const frame = 256 * 256 * 3
    const data = new Uint8Array(batch * frame)
    for (let i = 0; i < batch; i++) data.set(image(256, i + 1), i * frame)
    const { wall: ms, cpu } = await timeIt(() => t.step(data), 3)
    t.dispose()
    rows.push({ name, batch, threads, msPerStep: ms, cpuMsPerStep: cpu, stepsPerSec: 1000 / ms, imagesPerSec: (1000 * batch) / ms, stepsPerHour: Math.round(3.6e6 / ms), idleStepsPerHour: Math.round((3.6e6 * threads) / cpu) })
  }
  return rows
}

const args = parseArgs(process.argv.slice(2))
setNumThreads(args.threads)
const work = mkdtempSync(join(tmpdir(), 'marvel-builtin-size-'))
try {
  console.log(`load average before: ${loadavg().map((x) => x.toFixed(2)).join(' ')} (1/5/15 min); threads ${args.threads}; median of ${args.runs} runs after 1 warm-up`)
  const names = args.only ?? (args.train ? [] : Object.keys(CANDIDATES))
  const rows = []
  for (const name of names) rows.push(await measure(name, CANDIDATES[name], args.runs, work))
  if (rows.length) {
    console.log('| candidate | width | enc/dec layers | heads | parameters | F32 MB | F16 MB | encode ms | decode ms | total ms | CPU ms (all threads) | F16 vs F32 max pixel diff |')
    console.log('|---|---|---|---|---|---|---|---|---|---|---|---|')
    for (const r of rows) {
      console.log(`| ${r.name} | ${r.width} | ${r.enc}/${r.dec} | ${r.heads} | ${(r.params / 1e6).toFixed(2)} M | ${r.f32MB.toFixed(1)} | ${r.f16MB.toFixed(1)} | ${r.encodeMs.toFixed(0)} | ${r.decodeMs.toFixed(0)} | ${r.totalMs.toFixed(0)} | ${r.cpuMs.toFixed(0)} | ${r.f16MaxPixelDiff} |`)
    }
  }
  if (args.train) {
    const rows = await measureTraining(args.train, CANDIDATES[args.train], args.threads)
    console.log('| candidate | batch | threads | ms/step | steps/s | images/s | steps/hour | CPU ms/step | steps/hour on idle cores (CPU time / threads) |')
    console.log('|---|---|---|---|---|---|---|---|---|')
    for (const r of rows) console.log(`| ${r.name} | ${r.batch} | ${r.threads} | ${r.msPerStep.toFixed(0)} | ${r.stepsPerSec.toFixed(3)} | ${r.imagesPerSec.toFixed(2)} | ${r.stepsPerHour} | ${r.cpuMsPerStep.toFixed(0)} | ${r.idleStepsPerHour} |`)
  }
  console.log(`load average after: ${loadavg().map((x) => x.toFixed(2)).join(' ')}`)
} finally {
  rmSync(work, { recursive: true, force: true })
}
