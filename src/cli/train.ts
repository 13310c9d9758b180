/** `marvel train`: the training loop from the command line, with the reference's `key=value` overrides. */
import { InvalidArgumentError, type Command } from 'commander'

import { train } from '../train/loop.js'
import { LAUNCHER_ENV, MAX_WORLD_SIZE, launchRanks, rankInteger } from '../train/ranks.js'
import { loadTrainingConfig } from '../train/yaml-config.js'
import { UsageError } from './common.js'

/** commander parser for --rank / --world-size / --nproc: the same values `RANK` / `WORLD_SIZE` take. */
export function rankValue(flag: string, min: number): (value: string) => number {
  return (value) => {
    try {
      const n = rankInteger(flag, value, min, flag === '--rank' ? MAX_WORLD_SIZE - 1 : MAX_WORLD_SIZE)
      if (n === undefined) throw new InvalidArgumentError(`${flag} needs a value`)
      return n
    } catch (e) {
      if (e instanceof InvalidArgumentError) throw e
      throw new InvalidArgumentError((e as Error).message)
    }
  }
}

export function registerTrain(program: Command): void {
  program
    .command('train')
    .summary('train a tokenizer from a YAML config')
    .description(
      'Train a TiTok/MARVEL tokenizer. Settings are config=<file.yaml> followed by dotted overrides\n' +
        '(training.per_gpu_batch_size=8 experiment.output_dir=runs/a ...), typed by the value they replace.\n' +
        'Checkpoints go to <output_dir>/checkpoint-<step> (latest: <output_dir>/latest), logs to\n' +
        '<output_dir>/logs/metrics.jsonl, reconstruction grids to <output_dir>/grids. SIGINT/SIGTERM save a\n' +
        'checkpoint and stop; --resume continues from latest.',
    )
    .argument('<settings...>', 'config=<file.yaml> and key=value overrides')
    .option('--resume', 'continue from <output_dir>/latest (as experiment.resume: true)')
    .option('--rank <n>', 'this process\'s rank (default: $RANK, else 0)', rankValue('--rank', 0))
    .option('--world-size <n>', 'number of ranks (default: $WORLD_SIZE, else 1)', rankValue('--world-size', 1))
    .option('--nproc <n>', 'run <n> ranks on this machine, averaging gradients through IPC (default 1)', rankValue('--nproc', 1))
    .action((settings: string[], flags: TrainFlags) => run(settings, flags))
}

interface TrainFlags {
  resume?: boolean
  rank?: number
  worldSize?: number
  nproc?: number
}

async function run(settings: string[], flags: TrainFlags): Promise<void> {
  const configs = settings.filter((s) => s.startsWith('config='))
  if (configs.length !== 1) throw new UsageError(`give exactly one config=<file.yaml>, got ${configs.length}`)
  const config = loadTrainingConfig(configs[0].slice('config='.length), settings.filter((s) => !s.startsWith('config=')))
  const nproc = flags.nproc ?? 1
  if (nproc > 1 && process.env.RANK === undefined) {
    if (flags.rank !== undefined || flags.worldSize !== undefined) throw new UsageError('--nproc launches its own ranks; give it without --rank/--world-size')
    // The launcher only relays: each rank is this same command, told its place by RANK/WORLD_SIZE (it skips this branch).
    await launchRanks(nproc, process.argv[1], process.argv.slice(2), {}, { forwardSignals: true })
    return
  }
  const stop = new AbortController()
  let signals = 0
  // A rank of `--nproc` is in its launcher's process group: a terminal's Ctrl-C reaches it directly and again through
  // the launcher, so a repeat here is the same signal; the launcher counts the user's and kills the ranks on a second.
  const underLauncher = process.env[LAUNCHER_ENV] === 'ipc'
  const onSignal = (name: string) => {
    if (++signals > 1) {
      if (underLauncher) return
      // A second signal means "now": the checkpoint of the first is abandoned.
      process.exit(130)
    }
    process.stderr.write(`\nmarvel: ${name}: stopping after this step and saving a checkpoint (again to quit at once)\n`)
    stop.abort()
  }
  const onInt = () => onSignal('SIGINT')
  const onTerm = () => onSignal('SIGTERM')
  process.on('SIGINT', onInt)
  process.on('SIGTERM', onTerm)
  try {
    const result = await train(config, { signal: stop.signal, resume: flags.resume || undefined, rank: flags.rank, worldSize: flags.worldSize })
    const where = result.checkpoint ? `; checkpoint ${result.checkpoint}` : ''
    process.stderr.write(`marvel: ${result.stopped ? 'stopped' : 'finished'} at step ${result.step}${where}\n`)
  } finally {
    process.off('SIGINT', onInt)
    process.off('SIGTERM', onTerm)
  }
}
