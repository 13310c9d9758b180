// A rank of __test__/ranks.spec.ts, started by launchRanks: argv[2] picks what it does, argv[3] is the folder for
// its results.
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

import { stepBatch } from '../../src/train/data-parallel.js'
import { ProcessGroup } from '../../src/train/ranks.js'
import { Trainer } from '../../src/trainer.js'
import { images } from './training.js'

const [mode, out, extra] = process.argv.slice(2)
mkdirSync(out, { recursive: true })
const group = ProcessGroup.fromEnv()
const { rank, worldSize } = group
const save = (name: string, data: Float32Array) => writeFileSync(join(out, name), Buffer.from(data.buffer, data.byteOffset, data.byteLength))

/** Collectives forever (until the launcher kills this rank). */
async function reduceForever(): Promise<never> {
  for (;;) await group.allReduceMean(new Float32Array([rank]))
}

switch (mode) {
  case 'train': {
    // One data-parallel step of the tiny model: this rank's share of images(4), gradients averaged, applied.
    const trainer = await Trainer.create(JSON.parse(extra), { seed: 5 })
    const frame = 32 * 32 * 3
    const share = 4 / worldSize
    const mine = images(4).subarray(rank * share * frame, (rank + 1) * share * frame)
    const computed = await trainer.gradients(mine)
    const mean = await group.allReduceMean(computed.gradients!)
    const applied = await trainer.applyGradients(mean)
    save(`mean-${rank}.f32`, mean)
    writeFileSync(join(out, `step-${rank}.json`), JSON.stringify({ loss: computed.loss, step: applied.step, gradNorm: applied.gradNorm }))
    await trainer.exportModel(join(out, `model-${rank}`))
    trainer.dispose()
    break
  }
  case 'accumulate': {
    // gradient_accumulation_steps = 2 through the loop's stepBatch: this rank's two images of images(4) as two
    // micro-batches of one, counting the collectives.
    const trainer = await Trainer.create(JSON.parse(extra), { seed: 5 })
    const frame = 32 * 32 * 3
    let collectives = 0
    const counting = { allReduceMean: (x: Float32Array) => (collectives++, group.allReduceMean(x)) } as unknown as ProcessGroup
    const results = []
    for (const i of [0, 1]) {
      const image = images(4).slice((rank * 2 + i) * frame, (rank * 2 + i + 1) * frame)
      results.push(await stepBatch(trainer, { images: image }, counting))
    }
    writeFileSync(join(out, `accumulate-${rank}.json`), JSON.stringify({ collectives, steps: results.map((r) => r.step), gradNorms: results.map((r) => r.gradNorm) }))
    await trainer.exportModel(join(out, `model-${rank}`))
    trainer.dispose()
    break
  }
  case 'values': {
    // Values whose float32 sums round differently in different orders.
    const x = Float32Array.from({ length: 1000 }, (_, i) => Math.sin(i * (rank + 1)) * 10 ** ((i % 7) - 3))
    save(`input-${rank}.f32`, x)
    save(`mean-${rank}.f32`, await group.allReduceMean(x))
    save(`empty-${rank}.f32`, await group.allReduceMean(new Float32Array(0)))
    break
  }
  case 'crash':
    await group.allReduceMean(new Float32Array([rank]))
    if (rank === 1) throw new Error('rank one broke after its first collective')
    // Outlive the launcher's SIGTERM long enough to hear why the collective failed.
    process.on('SIGTERM', () => undefined)
    try {
      await reduceForever()
    } catch (e) {
      writeFileSync(join(out, `failed-${rank}`), (e as Error).message)
      process.exit(1)
    }
    break
  case 'hang':
    if (rank === 1) setInterval(() => undefined, 1000)
    else await reduceForever()
    break
  case 'early-exit':
    if (rank !== 1) await reduceForever()
    break
  case 'signal': {
    // The stop pattern of a training loop: a signal sets a flag, and the ranks agree through a collective to stop
    // after the same step, so none exits while another waits for it.
    let signalled = 0
    process.on('SIGTERM', () => (signalled = 1))
    let steps = 0
    writeFileSync(join(out, `ready-${rank}`), String(process.pid))
    try {
      for (;;) {
        steps++
        const [stop] = await group.allReduceMean(Float32Array.of(signalled))
        if (stop > 0) break
        await new Promise((r) => setTimeout(r, 5))
      }
    } catch (e) {
      writeFileSync(join(out, `failed-${rank}`), (e as Error).message)
      process.exit(1)
    }
    writeFileSync(join(out, `stopped-${rank}`), String(steps))
    break
  }
  case 'deaf': {
    // A rank that treats every signal as a repeat of one it is already handling: only the launcher can end it.
    for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => undefined)
    writeFileSync(join(out, `ready-${rank}`), String(process.pid))
    await reduceForever()
    break
  }
  case 'lengths':
    await group.allReduceMean(new Float32Array(rank === 0 ? 3 : 4))
    break
}
group.close()
