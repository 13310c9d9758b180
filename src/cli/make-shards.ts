/** `marvel make-shards`: an image folder as webdataset `.tar` shards for `marvel train`. */
import type { Command } from 'commander'

import { makeShards } from '../data/make-shards.js'
import { positiveInt } from './common.js'
import { batchProgress } from './progress.js'

export function registerMakeShards(program: Command): void {
  program
    .command('make-shards')
    .summary('pack an image folder into webdataset shards')
    .description(
      'Write webdataset .tar shards of an image folder: each image as it is (<key>.jpg/.png/.webp) and, when the\n' +
        'images sit in sub-folders, <key>.cls with the class index (sub-folder names sorted). Re-running after an\n' +
        'interruption writes only the missing shards.',
    )
    .argument('<folder>', 'image folder (searched recursively)')
    .requiredOption('-o, --out <dir>', 'folder for the shards')
    .option('-n, --per-shard <n>', 'images per shard', positiveInt('--per-shard', 10_000_000), 1000)
    .option('--prefix <name>', 'shard file name prefix', 'shard')
    .action((folder: string, flags: { out: string; perShard: number; prefix: string }) => run(folder, flags))
}

async function run(folder: string, flags: { out: string; perShard: number; prefix: string }): Promise<void> {
  let bar: ReturnType<typeof batchProgress> | undefined
  const made = await makeShards(folder, {
    out: flags.out,
    perShard: flags.perShard,
    prefix: flags.prefix,
    onShard: (s) => {
      bar ??= batchProgress('make-shards', s.total)
      bar.tick(1)
    },
  })
  bar?.done()
  const classes = made.classes.length > 0 ? `, ${made.classes.length} classes` : ''
  const reused = made.reused > 0 ? ` (${made.reused} already there)` : ''
  process.stdout.write(`${made.shards.length} shards${reused}, ${made.images} images${classes}: ${made.pattern}\n`)
}
