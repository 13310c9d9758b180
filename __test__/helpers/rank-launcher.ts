// A launcher process for __test__/ranks.spec.ts: runs argv[3] ranks of the bundled rank worker argv[2] in mode
// argv[4] with output folder argv[5], forwarding SIGINT/SIGTERM to them; exits 0 when they all succeed.
import { launchRanks } from '../../src/train/ranks.js'

const [worker, n, mode, out] = process.argv.slice(2)
try {
  await launchRanks(Number(n), worker, [mode, out], {}, { forwardSignals: true })
} catch (e) {
  console.error((e as Error).message)
  process.exit(3)
}
