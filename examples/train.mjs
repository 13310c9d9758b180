// Train a tiny MARVEL tokenizer from a Node script, end to end:
//   image folder → webdataset shards → train (Ctrl-C saves and stops; run again to resume) → exported model → encode/decode.
//
//   node examples/train.mjs [work folder] [steps]      (defaults: runs/example, 300)
//
// It makes its own images (coloured gradients) so it runs anywhere; point `images` at a photo folder for real data.
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

import sharp from 'sharp'
import { Tokenizer, Trainer, loadTrainingConfig, makeShards, train } from 'marvel-tokenizer'

const work = process.argv[2] ?? 'runs/example'
const steps = Number(process.argv[3] ?? 300)
const images = join(work, 'images')

// 1. Some images in two class folders.
for (let i = 0; i < 48; i++) {
  const [w, h] = [48 + (i % 4) * 8, 40 + (i % 3) * 8]
  const data = Buffer.alloc(w * h * 3)
  for (let p = 0; p < w * h; p++) {
    const [x, y] = [p % w, Math.floor(p / w)]
    data[3 * p] = 127 + 100 * Math.sin(x * 0.12 + i)
    data[3 * p + 1] = 127 + 100 * Math.sin(y * 0.17 + i * 0.7)
    data[3 * p + 2] = 127 + 100 * Math.cos((x + y) * 0.08 + i * 1.3)
  }
  const dir = join(images, i % 2 ? 'warm' : 'cool')
  mkdirSync(dir, { recursive: true })
  await sharp(data, { raw: { width: w, height: h, channels: 3 } }).png().toFile(join(dir, `${i}.png`))
}

// 2. Shards (re-running skips the shards already written).
const shards = await makeShards(images, { out: join(work, 'shards'), perShard: 16 })

// 3. Train the tiny config, overridden like the command line does.
const config = loadTrainingConfig(fileURLToPath(new URL('../configs/tiny.yaml', import.meta.url)), [
  `dataset.params.train_shards_path_or_url=${shards.pattern}`,
  `experiment.output_dir=${join(work, 'run')}`,
  `training.max_train_steps=${steps}`,
  'experiment.resume=true',
])
const stop = new AbortController()
process.once('SIGINT', () => stop.abort())
const result = await train(config, {
  signal: stop.signal,
  progress: false,
  onStep: (r) => {
    if (r.step % 50 === 0 || r.step === r.maxTrainSteps) console.log(`step ${r.step}  loss ${r.loss.toFixed(4)}  ${r.imagesPerSecond.toFixed(0)} img/s`)
  },
})
if (result.stopped) {
  console.log(`stopped at step ${result.step}; run again to resume`)
  process.exit(0)
}

// 4. The last checkpoint as a model folder, loaded like any other model.
// A rerun of a finished run takes no step and saves nothing: its checkpoint is the one `latest` names.
const trainer = await Trainer.resume(result.checkpoint ?? join(result.outputDir, 'latest'))
await trainer.exportModel(join(work, 'model'), { ema: true })
trainer.dispose()
const tok = await Tokenizer.fromPretrained(join(work, 'model'))
const tokens = await tok.encode(join(images, 'cool', '0.png'))
for (let depth = 1; depth <= tok.info.depth; depth++) {
  const [image] = await tok.decode(tokens, { depth })
  await image.toFile(join(work, `reconstruction-depth${depth}.png`))
}
writeFileSync(join(work, 'tokens.bin'), tokens.toBytes())
console.log(`model in ${join(work, 'model')}; ${tokens.shape.numTokens} tokens x ${tokens.shape.depth} depths; reconstructions in ${work}`)
tok.dispose()
