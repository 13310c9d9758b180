/**
 * `marvel reconstruct`: encode then decode, writing each reconstruction, a side-by-side grid per image
 * (original | depth 1 | ... | depth D), and PSNR / SSIM per depth (mean over the images) with the bits spent.
 */
import { join } from 'node:path'

import { InvalidArgumentError, Option, type Command } from 'commander'
import sharp from 'sharp'

import { MarvelError } from '../errors.js'
import { outputPath } from '../files.js'
import { prepareImage, writePng, type RgbImage } from '../image.js'
import { compare } from '../metrics.js'
import {
  addBatchOption,
  addModelOption,
  batches,
  checkDepth,
  ensureDir,
  loadModel,
  outputNames,
  printJson,
} from './common.js'
import { expandInputs } from './inputs.js'
import { batchProgress } from './progress.js'

interface ReconstructFlags {
  model: string
  out: string
  depth: number | 'all'
  batchSize: number
  resize: 'center-crop' | 'none'
  json?: boolean
}

function depthOrAll(value: string): number | 'all' {
  if (value === 'all') return 'all'
  if (!/^\d+$/.test(value) || Number(value) < 1) throw new InvalidArgumentError(`--depth must be a positive integer or "all", got ${JSON.stringify(value)}`)
  return Number(value)
}

export function registerReconstruct(program: Command): void {
  const cmd = program
    .command('reconstruct')
    .summary('encode + decode images, write the results and report PSNR / SSIM')
    .description(
      'Reconstruct images through the tokenizer. Writes <name>.d<k>.png per depth k and <name>.grid.png ' +
        '(original | depth 1 | ... | depth D; with --depth d: original | depth d) into --out, then prints PSNR (dB) and ' +
        'SSIM per depth, averaged over the images, against the model-size input (after --resize), with the bits per image.',
    )
    .argument('<images...>', 'image files, folders or globs')
    .requiredOption('-o, --out <dir>', 'folder for the PNG files (created if needed)')
    .option('-d, --depth <d|all>', 'one depth d, or all depths 1..D', depthOrAll, 'all')
  addModelOption(cmd)
  addBatchOption(cmd)
  cmd
    .addOption(new Option('--resize <mode>', 'center-crop or none (inputs must be the model size)').choices(['center-crop', 'none']).default('center-crop'))
    .option('--json', 'print the table (and per-image scores) as JSON on stdout; PSNR is null where lossless')
    .action((images: string[], flags: ReconstructFlags) => reconstruct(images, flags))
}

function rawInput(image: RgbImage) {
  return { input: Buffer.from(image.data.buffer, image.data.byteOffset, image.data.byteLength), raw: { width: image.width, height: image.height, channels: 3 as const } }
}

/** Images side by side, left to right, as one PNG. */
async function writeGrid(images: RgbImage[], path: string): Promise<void> {
  await outputPath('reconstruct', 'grid path', path, 'grid')
  try {
    await renderGrid(images, path)
  } catch (e) {
    throw new MarvelError('MARVEL_IO', `cannot write ${path}: ${(e as Error).message}`, { cause: e })
  }
}

async function renderGrid(images: RgbImage[], path: string): Promise<void> {
  const { width, height } = images[0]
  // composite() always yields RGBA; render it, then drop the (opaque) alpha so the grid is RGB like the other PNGs.
  const { data, info } = await sharp({ create: { width: width * images.length, height, channels: 3, background: { r: 0, g: 0, b: 0 } } })
    .composite(images.map((img, i) => ({ ...rawInput(img), left: i * width, top: 0 })))
    .raw()
    .toBuffer({ resolveWithObject: true })
  await sharp(data, { raw: { width: info.width, height: info.height, channels: info.channels } })
    .removeAlpha()
    .png()
    .toFile(path)
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length

async function reconstruct(args: string[], flags: ReconstructFlags): Promise<void> {
  const files = await expandInputs(args)
  const names = outputNames(files)
  const tok = await loadModel(flags.model)
  try {
    const { imageSize: size, depth: modelDepth } = tok.info
    const depths = flags.depth === 'all' ? Array.from({ length: modelDepth }, (_, i) => i + 1) : [checkDepth(flags.depth, modelDepth)]
    await ensureDir(flags.out)
    const psnr = depths.map(() => [] as number[])
    const ssim = depths.map(() => [] as number[])
    const perImage: Array<{ file: string; outputs: string[]; grid: string; psnr: number[]; ssim: number[] }> = []
    const progress = batchProgress('reconstruct', files.length)
    try {
      for (const chunk of batches(Array.from({ length: files.length }, (_, i) => i), flags.batchSize)) {
        const originals = await Promise.all(chunk.map((i) => prepareImage(files[i], { size, resize: flags.resize })))
        const tokens = await tok.encode(originals, { batchSize: flags.batchSize })
        const recon: RgbImage[][] = []
        for (const [j, depth] of depths.entries()) {
          const images = await tok.decode(tokens, { depth })
          const scores = await compare(originals, images)
          scores.forEach((s) => (psnr[j].push(s.psnr), ssim[j].push(s.ssim)))
          recon.push(images)
        }
        for (const [k, i] of chunk.entries()) {
          const outputs = depths.map((d) => join(flags.out, `${names[i]}.d${d}.png`))
          await Promise.all(outputs.map((path, j) => writePng(recon[j][k], path)))
          const grid = join(flags.out, `${names[i]}.grid.png`)
          await writeGrid([originals[k], ...recon.map((r) => r[k])], grid)
          const at = perImage.length
          perImage.push({ file: files[i], outputs, grid, psnr: depths.map((_, j) => psnr[j][at]), ssim: depths.map((_, j) => ssim[j][at]) })
        }
        progress.tick(chunk.length)
      }
    } finally {
      progress.done()
    }
    const rows = depths.map((depth, j) => ({ depth, bitsPerImage: tok.info.bitsPerImageByDepth[depth - 1], psnr: mean(psnr[j]), ssim: mean(ssim[j]) }))
    if (flags.json) {
      printJson({ model: flags.model, images: files.length, imageSize: size, depths: rows, perImage })
      return
    }
    const header = ['depth', 'bits/image', 'PSNR (dB)', 'SSIM']
    const cells = rows.map((r) => [String(r.depth), String(r.bitsPerImage), Number.isFinite(r.psnr) ? r.psnr.toFixed(2) : 'inf', r.ssim.toFixed(4)])
    const widths = header.map((h, c) => Math.max(h.length, ...cells.map((row) => row[c].length)))
    const line = (row: string[]) => row.map((v, c) => v.padStart(widths[c])).join('  ')
    console.log(`${files.length} image${files.length === 1 ? '' : 's'} at ${size}x${size} -> ${flags.out}  (mean over images)`)
    console.log(line(header))
    for (const row of cells) console.log(line(row))
  } finally {
    tok.dispose()
  }
}
