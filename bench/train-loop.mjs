// Does data loading keep up with training? The same config trained twice for STEPS steps: through `train()` on
// generated JPEG shards (tar reading, shuffling, sharp decode + augmentation, batching, logging, no checkpoints in
// between), and as `Trainer.step` on one fixed batch. Prints steps/s of each and their ratio (1.0: loading costs
// nothing; below 0.9 the loop waits for data), and the process's RSS during the loop (flat: the data pipeline's
// memory is bounded by the shuffle buffer and two batches in flight, not by the number of steps).
//
//   node bench/train-loop.mjs                                  # configs/tiny.yaml, batch 4, 320x240 JPEGs
//   CONFIG=configs/marvel_s128_single.yaml BATCH=8 STEPS=20 node bench/train-loop.mjs
//
// Environment: CONFIG, BATCH (per_gpu_batch_size), STEPS (timed steps, default 100; 3 more are warm-up), IMAGES (in
// the shards, default 256), WIDTH / HEIGHT (of the JPEGs, default 320x240), MARVEL_NUM_THREADS.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

import sharp from 'sharp'
import { Trainer, getNumThreads, loadTrainingConfig, makeShards, train } from 'marvel-tokenizer'

const root = fileURLToPath(new URL('..', import.meta.url))
const CONFIG = process.env.CONFIG ?? join(root, 'configs', 'tiny.yaml')
const BATCH = Number(process.env.BATCH ?? 4)
const STEPS = Number(process.env.STEPS ?? 100)
const WARMUP = 3
const IMAGES = Number(process.env.IMAGES ?? 256)
const [W, H] = [Number(process.env.WIDTH ?? 320), Number(process.env.HEIGHT ?? 240)]

const work = mkdtempSync(join(tmpdir(), 'marvel-bench-loop-'))
try {
  // Noise-textured JPEGs: they cost what photos cost to decode.
  for (let i = 0; i < IMAGES; i++) {
    const data = Buffer.alloc(W * H * 3)
    let s = i * 2654435761
    for (let p = 0; p < data.length; p++) {
      s = (s * 1103515245 + 12345) >>> 0
      data[p] = ((p % (W * 3)) / 3 + (s >>> 28) * 8) & 255
    }
    await sharp(data, { raw: { width: W, height: H, channels: 3 } }).jpeg({ quality: 90 }).toFile(join(work, `${String(i).padStart(5, '0')}.jpg`))
  }
  const shards = await makeShards(work, { out: join(work, 'shards'), perShard: 64 })
  const config = loadTrainingConfig(CONFIG, [
    `dataset.params.train_shards_path_or_url=${shards.pattern}`,
    `experiment.output_dir=${join(work, 'run')}`,
    `training.per_gpu_batch_size=${BATCH}`,
    `training.max_train_steps=${WARMUP + STEPS}`,
    `experiment.save_every=${WARMUP + STEPS}`,
    'experiment.eval_every=0',
    'experiment.generate_every=0',
    'experiment.resume=false',
    'experiment.init_weight=',
  ])

  // 1. The loop, data and all.
  let start = 0
  let end = 0
  let rssAfterWarmup = 0
  let rssPeak = 0
  await train(config, {
    progress: false,
    onStep: (r) => {
      const rss = process.memoryUsage().rss
      if (r.step === WARMUP) {
        start = performance.now()
        rssAfterWarmup = rss
      }
      rssPeak = Math.max(rssPeak, rss)
      end = performance.now()
    },
  })
  const loopRate = (STEPS / (end - start)) * 1000

  // 2. One fixed batch, no data work at all.
  const trainer = await Trainer.create(config, { seed: 0 })
  const size = trainer.imageSize
  const batch = new Uint8Array(BATCH * size * size * 3).map((_, i) => (i * 31) & 255)
  for (let i = 0; i < WARMUP; i++) await trainer.step(batch)
  const t0 = performance.now()
  for (let i = 0; i < STEPS; i++) await trainer.step(batch)
  const fixedRate = (STEPS / (performance.now() - t0)) * 1000
  trainer.dispose()

  const result = { config: CONFIG, batch: BATCH, steps: STEPS, images: `${IMAGES} JPEG ${W}x${H}`, threads: getNumThreads(), loopStepsPerSecond: loopRate, fixedBatchStepsPerSecond: fixedRate, ratio: loopRate / fixedRate, rssAfterWarmupMB: rssAfterWarmup / 2 ** 20, rssPeakMB: rssPeak / 2 ** 20 }
  console.log(JSON.stringify(result))
  console.log(`train() ${loopRate.toFixed(2)} steps/s, fixed batch ${fixedRate.toFixed(2)} steps/s: ratio ${(loopRate / fixedRate).toFixed(3)}`)
  console.log(`RSS during train(): ${result.rssAfterWarmupMB.toFixed(0)} MB after warm-up, ${result.rssPeakMB.toFixed(0)} MB at most`)
} finally {
  rmSync(work, { recursive: true, force: true })
}
