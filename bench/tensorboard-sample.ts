// Writes a sample event file with marvel's TensorBoardWriter for bench/tensorboard-check.sh: a few steps of
// scalars and one PNG grid, into the logdir argv[2]. Prints the file's path.
import sharp from 'sharp'

import { TensorBoardWriter } from '../src/train/tensorboard.js'

const writer = await TensorBoardWriter.open(process.argv[2])
for (let step = 1; step <= 5; step++) {
  writer.scalars(step, { 'train/loss': 1 / step, 'train/lr': 1e-4 * step, 'eval/psnr_depth_1': 20 + step / 2 })
}
const [w, h] = [48, 16]
const pixels = Buffer.alloc(w * h * 3).map((_, i) => ((i % (w * 3)) * 255) / (w * 3))
writer.image(5, 'eval/reconstructions', await sharp(pixels, { raw: { width: w, height: h, channels: 3 } }).png().toBuffer())
await writer.close()
console.log(writer.file)
