/** What `marvel train` prints while it runs: a redrawn line on a terminal, periodic plain lines elsewhere. */
import { describe, expect, it } from 'vitest'

import { TrainProgress, formatProgress } from '../src/train/progress.js'

const state = (step: number) => ({ step, total: 200, loss: 0.123456, lr: 1e-4, imagesPerSecond: 12.34, secondsPerStep: 0.5 })

describe('training progress', () => {
  it('formats step/total, loss, lr, images/s and the ETA', () => {
    expect(formatProgress(state(50))).toBe('step  50/200  loss 0.1235  lr 1.00e-4  12.3 img/s  ETA 1m15s')
    expect(formatProgress({ ...state(1), secondsPerStep: 0 })).toContain('ETA ?')
  })

  it('redraws one line on a terminal; writes every log_every-th step (and the last) as a line elsewhere', () => {
    const tty: string[] = []
    const t = new TrainProgress({ isTTY: true, write: (s) => tty.push(s) }, 10)
    t.update(state(1))
    t.note('marvel: skipped x.tar@0: damaged')
    t.update(state(2))
    t.done()
    expect(tty).toEqual([`\r\x1b[2K${formatProgress(state(1))}`, '\r\x1b[2Kmarvel: skipped x.tar@0: damaged\n', `\r\x1b[2K${formatProgress(state(2))}`, '\n'])

    const plain: string[] = []
    const p = new TrainProgress({ isTTY: false, write: (s) => plain.push(s) }, 10)
    for (const step of [1, 9, 10, 11, 20, 200]) p.update(state(step))
    p.done()
    expect(plain).toEqual([10, 20, 200].map((s) => `${formatProgress(state(s))}\n`))
  })
})
