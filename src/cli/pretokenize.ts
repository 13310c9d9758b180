/** `marvel pretokenize`: stage 1's MaskGIT-VQGAN codes computed once and stored in the shards. */
import type { Command } from 'commander'

import { pretokenize } from '../data/pretokenize.js'
import { positiveInt } from './common.js'
import { rankValue } from './train.js'

export function registerPretokenize(program: Command): void {
  program
    .command('pretokenize')
    .summary('store MaskGIT-VQGAN codes in shards for stage-1 training')
    .description(
      'Copy webdataset shards, adding to every sample a <key>.codes member: the MaskGIT-VQGAN codes of its image\n' +
        '(centre crop at the model size; int32 little-endian). Stage-1 training then reads them instead of encoding\n' +
        'each batch, when its augmentation is that centre crop (random_crop and random_flip false). With RANK and\n' +
        'WORLD_SIZE (or --rank/--world-size) each rank writes shards i with i mod world size = rank; shards already\n' +
        'written are kept.',
    )
    .argument('<shards>', 'shards: a path, a brace pattern (train-{0000..0127}.tar) or a folder of .tar files')
    .requiredOption('--maskgit <weights>', 'MaskGIT-VQGAN weights file, or a folder with one')
    .requiredOption('-o, --out <dir>', 'folder for the new shards')
    .option('-b, --batch-size <n>', 'images per MaskGIT call', positiveInt('--batch-size', 4096), 16)
    .option('--rank <n>', 'this process\'s rank (default: $RANK, else 0)', rankValue('--rank', 0))
    .option('--world-size <n>', 'number of ranks (default: $WORLD_SIZE, else 1)', rankValue('--world-size', 1))
    .action((shards: string, flags: { maskgit: string; out: string; batchSize: number; rank?: number; worldSize?: number }) => run(shards, flags))
}

async function run(shards: string, flags: { maskgit: string; out: string; batchSize: number; rank?: number; worldSize?: number }): Promise<void> {
  const done = await pretokenize(shards, {
    maskgit: flags.maskgit,
    out: flags.out,
    batchSize: flags.batchSize,
    rank: flags.rank,
    worldSize: flags.worldSize,
    onShard: (s) => {
      if (!process.stderr.isTTY) return
      process.stderr.write(`${s.existed ? 'kept' : 'wrote'} ${s.path}${s.existed ? '' : ` (${s.samples} samples)`}\n`)
    },
  })
  const reused = done.reused > 0 ? ` (${done.reused} already there)` : ''
  const skipped = done.skipped > 0 ? `; ${done.skipped} samples or members skipped (no image, undecodable, damaged)` : ''
  process.stdout.write(`${done.shards.length} shards${reused}, ${done.samples} samples given codes${skipped}\n`)
}
