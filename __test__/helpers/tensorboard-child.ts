// Child process of __test__/tensorboard.spec.ts: logs scalars into the event file of argv[2] as fast as it can,
// flushing every few milliseconds, until the test kills it; prints the file name once the first record is written.
import { TensorBoardWriter } from '../../src/train/tensorboard.js'

const writer = await TensorBoardWriter.open(process.argv[2], { flushMs: 2 })
process.stdout.write(`${writer.file}\n`)
let step = 0
const timer = setInterval(() => {
  for (let i = 0; i < 50; i++, step++) writer.scalars(step, { 'loss/total': step * 0.5, lr: 1e-4 })
}, 1)
timer.ref()
