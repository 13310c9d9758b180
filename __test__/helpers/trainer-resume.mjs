// Child process of __test__/trainer.spec.ts: resumes the checkpoint argv[3] in a fresh process through the public
// API, runs argv[4] more steps on the images in argv[5], saves to argv[6] and prints the losses as JSON.
import { readFileSync } from 'node:fs'

const [dist, ckpt, steps, imagesPath, out] = process.argv.slice(2)
const { Trainer } = await import(dist)
const trainer = await Trainer.resume(ckpt)
const images = new Uint8Array(readFileSync(imagesPath))
const losses = []
for (let i = 0; i < Number(steps); i++) losses.push((await trainer.step(images)).loss)
await trainer.save(out, trainer.dataPosition)
process.stdout.write(JSON.stringify({ losses, dataPosition: trainer.dataPosition, startStep: trainer.startStep }))
