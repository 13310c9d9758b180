/** `marvel encode`: images to a token file (`.bin`, compact; `.json`, readable, with the source file list). */
import { dirname, extname } from 'node:path'

import { Option, type Command } from 'commander'

import { MarvelError } from '../errors.js'
import { prepareImage, type RgbImage } from '../image.js'
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
  skipErrors?: boolean
}

/** An input left out by --skip-errors, and why. */
interface Skipped {
  file: string
  code: string
  message: string
}

/** Failures that belong to one input file; anything else (a bug, a model error) stops the run even with --skip-errors. */
const PER_FILE = new Set(['MARVEL_IO', 'MARVEL_IMAGE', 'MARVEL_SHAPE_MISMATCH'])

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
    .option(
      '--skip-errors',
      'leave out inputs that cannot be read or decoded (each named on stderr), encode the rest, and exit with code 1 if any was left out',
    )
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
    const encoded: string[] = []
    const skipped: Skipped[] = []
    try {
      for (const chunk of batches(files, flags.batchSize)) {
        // Each file is decoded on its own, so one bad file costs only itself (with --skip-errors) and is named.
        const prepared = await Promise.all(
          chunk.map((file) =>
            prepareImage(file, { size: tok.info.imageSize, resize: flags.resize }).then(
              (image): [string, RgbImage | MarvelError] => [file, image],
              (e): [string, RgbImage | MarvelError] => {
                if (flags.skipErrors && e instanceof MarvelError && PER_FILE.has(e.code)) return [file, e]
                throw e
              },
            ),
          ),
        )
        const good: RgbImage[] = []
        for (const [file, result] of prepared) {
          if (result instanceof MarvelError) {
            skipped.push({ file, code: result.code, message: result.message })
            process.stderr.write(`marvel: skipped ${file}: ${result.message} (${result.code})\n`)
          } else {
            good.push(result)
            encoded.push(file)
          }
        }
        if (good.length > 0) parts.push((await tok.encode(good, { batchSize: flags.batchSize })).slice(depth))
        progress.tick(chunk.length)
      }
    } finally {
      progress.done()
    }
    if (parts.length === 0) {
      throw new MarvelError(skipped[0].code as MarvelError['code'], `every input was skipped (${skipped.length}); nothing written to ${flags.out}`)
    }
    const tokens = Tokens.concat(parts)
    await ensureDir(dirname(flags.out))
    if (format === 'bin') {
      await writeOutput(flags.out, tokens.toBytes())
    } else {
      const { ids, ...head } = tokens.toJSON()
      const json: TokenFileJSON = { ...head, files: encoded, ids }
      await writeOutput(flags.out, JSON.stringify(json) + '\n')
    }
    const summary = {
      out: flags.out,
      format,
      images: encoded.length,
      depth: tokens.depth,
      numTokens: tokens.numTokens,
      bitsPerToken: tokens.bitsPerToken,
      bitsPerImage: tokens.bitsPerImage,
      bytes: await fileSize(flags.out),
      files: encoded,
      skipped,
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
    if (skipped.length > 0) {
      // The output holds the others; the exit code still tells a script that the set is incomplete.
      const codes = [...new Set(skipped.map((s) => s.code))]
      throw new MarvelError(
        (codes.length === 1 ? codes[0] : 'MARVEL_IO') as MarvelError['code'],
        `${skipped.length} of ${files.length} inputs skipped (named above); the other ${encoded.length} are in ${flags.out}`,
      )
    }
  } finally {
    tok.dispose()
  }
}
