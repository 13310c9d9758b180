/** `marvel info`: what a model is and what its tokens cost. */
import type { Command } from 'commander'

import { createProgressPrinter } from '../hub.js'
import { Tokenizer } from '../tokenizer.js'
import { DEFAULT_MODEL, fileSize, formatBytes, formatCount, printJson, weightsFile, withModelOption } from './common.js'

export function registerInfo(program: Command): void {
  program
    .command('info')
    .summary('describe a model')
    .description('Print a model\'s architecture, quantizer, token budget (bits per token and per image at each depth), parameters and sizes.')
    .argument('[model]', 'model folder or Hugging Face repo id', DEFAULT_MODEL)
    .option('--json', 'print as JSON on stdout')
    .action((model: string, flags: { json?: boolean }) => info(model, flags))
}

async function info(source: string, flags: { json?: boolean }): Promise<void> {
  // The config and the weights header say all that info prints: no weight is read (megabytes, not the model's size).
  const i = await withModelOption(() => Tokenizer.inspect(source, { onProgress: createProgressPrinter(process.stderr) }))
  const weights = await weightsFile(source)
  const weightsBytes = weights ? await fileSize(weights).catch(() => undefined) : undefined
  // The core's figures; bytes are the token file's payload per image (whole bytes, as Tokens.toBytes pads).
  const byDepth = i.bitsPerImageByDepth.map((bits, d) => ({ depth: d + 1, bitsPerImage: bits, bytesPerImage: Math.ceil(bits / 8) }))
  // The library's info as it is (byDepth carries bitsPerImageByDepth with the bytes beside it), plus the file.
  const { bitsPerImageByDepth: _perDepth, ...model } = i
  const out = {
    ...model,
    bytesPerImage: Math.ceil(i.bitsPerImage / 8),
    byDepth,
    weightsFile: weights ?? null,
    weightsBytes: weightsBytes ?? null,
  }
  if (flags.json) {
    printJson(out)
    return
  }
  const lines: Array<[string, string]> = [
    ['model', source],
    ['architecture', `${i.architecture} (${i.twoStage ? 'two-stage, MaskGIT pixel decoder' : 'single-stage'})`],
    ['quantizer', `${i.quantizer}, codebook ${i.codebookSize} (${i.bitsPerToken} bits per token)`],
    ['image size', `${i.imageSize}x${i.imageSize}`],
    ['tokens', `${i.numTokens} per image`],
    ['depth', String(i.depth)],
    ['bits per image', byDepth.map((d) => `${d.bitsPerImage} (depth ${d.depth}, ${d.bytesPerImage} bytes)`).join(', ')],
    ['parameters', `${formatCount(i.parameters)} (${i.parameters})`],
    ['encoder', `width ${i.encoder.width}, ${i.encoder.layers} layers`],
    ['decoder', `width ${i.decoder.width}, ${i.decoder.layers} layers`],
    ['weights', weights ? `${weights}${weightsBytes === undefined ? '' : ` (${formatBytes(weightsBytes)})`}` : 'unknown'],
  ]
  const width = Math.max(...lines.map(([k]) => k.length))
  for (const [k, v] of lines) console.log(`${k.padEnd(width)}  ${v}`)
}
