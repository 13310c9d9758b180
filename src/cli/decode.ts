/** `marvel decode`: a token file back to PNG images, at every depth it holds or the first `--depth`. */
import { join } from 'node:path'

import type { Command } from 'commander'

import { Tokens } from '../tokens.js'

import {
  addBatchOption,
  addModelOption,
  batches,
  checkDepth,
  ensureDir,
  loadModel,
  outputNames,
  positiveInt,
  printJson,
  readTokenFile,
} from './common.js'
import { batchProgress } from './progress.js'

interface DecodeFlags {
  model: string
  out: string
  depth?: number
  batchSize: number
  json?: boolean
}

export function registerDecode(program: Command): void {
  const cmd = program
    .command('decode')
    .summary('decode a token file to PNG images')
    .description(
      'Decode a token file written by `marvel encode` (.bin or .json) to one PNG per image, named after the source ' +
        'image when the .json file lists it, else by index (0.png, 1.png, ...).',
    )
    .argument('<tokens>', 'token file (tokens.bin or tokens.json)')
    .requiredOption('-o, --out <dir>', 'folder for the PNG files (created if needed)')
    .option('-d, --depth <d>', 'decode the first d depths (default: every depth the file holds)', positiveInt('--depth'))
  addModelOption(cmd)
  addBatchOption(cmd)
  cmd.option('--json', 'print the written files as JSON on stdout').action((file: string, flags: DecodeFlags) => decode(file, flags))
}

async function decode(file: string, flags: DecodeFlags): Promise<void> {
  const { tokens, files } = await readTokenFile(file)
  const depth = checkDepth(flags.depth ?? tokens.depth, tokens.depth, `${file}`)
  const names = files ? outputNames(files) : Array.from({ length: tokens.batch }, (_, i) => String(i))
  const tok = await loadModel(flags.model)
  try {
    checkDepth(depth, tok.info.depth)
    await ensureDir(flags.out)
    const written: string[] = []
    const progress = batchProgress('decode', tokens.batch)
    try {
      const indices = Array.from({ length: tokens.batch }, (_, i) => i)
      for (const chunk of batches(indices, flags.batchSize)) {
        const part = chunk.length === tokens.batch ? tokens : Tokens.concat(chunk.map((i) => tokens.image(i)))
        const images = await tok.decode(part, { depth })
        for (const [k, image] of images.entries()) {
          const path = join(flags.out, `${names[chunk[k]]}.png`)
          await image.toFile(path)
          written.push(path)
        }
        progress.tick(chunk.length)
      }
    } finally {
      progress.done()
    }
    if (flags.json) {
      printJson({ out: flags.out, depth, bitsPerImage: tokens.slice(depth).bitsPerImage, files: written })
    } else {
      const s = written.length === 1 ? '' : 's'
      console.log(`decoded ${written.length} image${s} at depth ${depth} -> ${flags.out}`)
    }
  } finally {
    tok.dispose()
  }
}
