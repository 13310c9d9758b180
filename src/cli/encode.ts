/** `marvel encode`: images to a token file (`.bin`, compact; `.json`, readable, with the source file list). */
import { dirname, extname } from 'node:path'

import { Option, type Command } from 'commander'

import { Tokens } from '../tokens.js'
import {
  UsageError,
  addBatchOption,
  addModelOption,
  batches,
  checkDepth,
  ensureDir,
  fileSize,
  loadModel,
  positiveInt,
  printJson,
  writeOutput,
  type TokenFileJSON,
} from './common.js'
import { expandInputs } from './inputs.js'
import { batchProgress } from './progress.js'

interface EncodeFlags {
  model: string
  out: string
  depth?: number
  batchSize: number
  resize: 'center-crop' | 'none'
  json?: boolean
}

export function tokenFormat(out: string): 'bin' | 'json' {
  const ext = extname(out).toLowerCase()
  if (ext === '.bin') return 'bin'
  if (ext === '.json') return 'json'
  throw new UsageError(`--out must name a .bin or .json file, got ${JSON.stringify(out)}`)
}

export function registerEncode(program: Command): void {
  const cmd = program
    .command('encode')
    .summary('encode images to tokens')
    .description('Encode images to tokens and write them to a .bin (compact) or .json (readable) file.')
    .argument('<images...>', 'image files, folders (their png/jpg/jpeg/webp/tiff/gif files) or globs such as "photos/*.jpg"')
    .requiredOption('-o, --out <file>', 'token file to write: tokens.bin (Tokens.toBytes) or tokens.json (Tokens.toJSON + source files)')
    .option('-d, --depth <d>', 'keep the first d depths (MARVEL; default: all the model has)', positiveInt('--depth'))
  addModelOption(cmd)
  addBatchOption(cmd)
  cmd
    .addOption(new Option('--resize <mode>', 'center-crop: shorter side to the model size, centre crop; none: inputs must be exactly that size').choices(['center-crop', 'none']).default('center-crop'))
    .option('--json', 'print a JSON summary on stdout')
    .action((images: string[], flags: EncodeFlags) => encode(images, flags))
}

async function encode(args: string[], flags: EncodeFlags): Promise<void> {
  const format = tokenFormat(flags.out)
  const files = await expandInputs(args)
  const tok = await loadModel(flags.model)
  try {
    const depth = checkDepth(flags.depth ?? tok.info.depth, tok.info.depth)
    const progress = batchProgress('encode', files.length)
    const parts: Tokens[] = []
    try {
      for (const chunk of batches(files, flags.batchSize)) {
        const tokens = await tok.encode(chunk, { resize: flags.resize, batchSize: flags.batchSize })
        parts.push(tokens.slice(depth))
        progress.tick(chunk.length)
      }
    } finally {
      progress.done()
    }
    const tokens = Tokens.concat(parts)
    await ensureDir(dirname(flags.out))
    if (format === 'bin') {
      await writeOutput(flags.out, tokens.toBytes())
    } else {
      const { ids, ...head } = tokens.toJSON()
      const json: TokenFileJSON = { ...head, files, ids }
      await writeOutput(flags.out, JSON.stringify(json) + '\n')
    }
    const summary = {
      out: flags.out,
      format,
      images: files.length,
      depth: tokens.depth,
      numTokens: tokens.numTokens,
      bitsPerToken: tokens.bitsPerToken,
      bitsPerImage: tokens.bitsPerImage,
      bytes: await fileSize(flags.out),
      files,
    }
    if (flags.json) {
      printJson(summary)
    } else {
      const s = summary.images === 1 ? '' : 's'
      console.log(
        `encoded ${summary.images} image${s} -> ${flags.out} (${summary.bytes} bytes): ` +
          `${tokens.numTokens} tokens x ${tokens.depth} depth${tokens.depth === 1 ? '' : 's'} x ${tokens.bitsPerToken} bits = ${tokens.bitsPerImage} bits per image`,
      )
    }
  } finally {
    tok.dispose()
  }
}
