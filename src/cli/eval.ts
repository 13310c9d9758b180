/**
 * `marvel eval`: a model measured on an image folder or webdataset shards — PSNR, SSIM, MS-SSIM, codebook usage,
 * token entropy, bits per image and rFID per depth, with WebP and JPEG at the same bytes (full size, and downscaled
 * within the bytes). A table on the terminal,
 * `--json`, and `--plot rd.png` for the rate–distortion chart.
 */
import { writeFile } from 'node:fs/promises'
import { extname } from 'node:path'

import { InvalidArgumentError, type Command } from 'commander'

import { rateDistortionChart, renderChart } from '../chart/index.js'
import { MarvelError } from '../errors.js'
import { evaluate, type CodecEvaluation, type EvalInput, type EvalReport } from '../eval/evaluate.js'
import { INCEPTION_WEIGHTS_ENV } from '../eval/inception.js'
import { readTarMember, tarMembers } from '../data/tar.js'
import { outputPath } from '../files.js'
import { addBatchOption, addModelOption, checkDepth, loadModel, positiveInt, printJson } from './common.js'
import { IMAGE_EXTENSIONS, expandInputs } from './inputs.js'
import { batchProgress } from './progress.js'

interface EvalFlags {
  model: string
  depth: number | 'all'
  limit?: number
  batchSize: number
  inception?: string
  codecs: boolean
  json?: boolean
  plot?: string
}

function depthOrAll(value: string): number | 'all' {
  if (value === 'all') return 'all'
  if (!/^\d+$/.test(value) || Number(value) < 1) throw new InvalidArgumentError(`--depth must be a positive integer or "all", got ${JSON.stringify(value)}`)
  return Number(value)
}

export function registerEval(program: Command): void {
  const cmd = program
    .command('eval')
    .summary('measure a model: PSNR / SSIM / MS-SSIM / rFID per depth, codebook usage, WebP and JPEG at equal bytes')
    .description(
      'Evaluate a model on images (files, folders, globs) or webdataset shards (.tar): each image resized so its shorter ' +
        'side is the model size, centre-cropped, encoded and decoded at each depth. Reports PSNR, SSIM, MS-SSIM, codebook ' +
        'usage (distinct ids / 2^bits) and token entropy per depth, bits per image, rFID (pytorch-fid InceptionV3; needs ' +
        `its weights: --inception or $${INCEPTION_WEIGHTS_ENV}, otherwise reported unavailable) and WebP / JPEG at the ` +
        'quality whose file size is closest to the tokens\' bytes, then again on a copy downscaled by 2, 4, 8 or 16 at ' +
        'the best PSNR whose file fits in those bytes (--no-codecs skips both).',
    )
    .argument('<inputs...>', 'image files, folders, globs or .tar shards')
    .option('-d, --depth <d|all>', 'one depth d, or all depths 1..D', depthOrAll, 'all')
    .option('-n, --limit <n>', 'evaluate the first n images only', positiveInt('--limit'))
    .option('--inception <file>', `pytorch-fid Inception weights for rFID (default: $${INCEPTION_WEIGHTS_ENV})`)
    .option('--no-codecs', 'skip the WebP / JPEG comparison')
    .option('--json', 'print the report as JSON on stdout')
    .option('--plot <file.png>', 'write the rate–distortion chart (PSNR and rFID against bits per image)')
  addModelOption(cmd)
  addBatchOption(cmd)
  cmd.action((inputs: string[], flags: EvalFlags) => runEval(inputs, flags))
}

/** Image files and shard members, in argument order. */
async function evalInputs(args: string[]): Promise<EvalInput[]> {
  const inputs: EvalInput[] = []
  const plain: string[] = []
  const flush = async () => {
    if (plain.length > 0) inputs.push(...(await expandInputs(plain.splice(0))))
  }
  for (const arg of args) {
    if (extname(arg).toLowerCase() !== '.tar') {
      plain.push(arg)
      continue
    }
    await flush()
    const members = (await tarMembers(arg)).filter((e) => IMAGE_EXTENSIONS.includes(extname(e.name).toLowerCase()))
    if (members.length === 0) throw new MarvelError('MARVEL_IO', `shard ${arg} holds no image members (${IMAGE_EXTENSIONS.join(' ')})`)
    inputs.push(...members.map((m) => () => readTarMember(arg, m)))
  }
  await flush()
  return inputs
}

const fixed = (v: number | null, digits: number) => (v === null ? '-' : Number.isFinite(v) ? v.toFixed(digits) : v > 0 ? 'inf' : '-')

function table(header: string[], rows: string[][]): string[] {
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c].length)))
  const line = (r: string[]) => r.map((v, c) => v.padStart(widths[c])).join('  ')
  return [line(header), ...rows.map(line)]
}

/** The report as terminal lines. */
export function formatReport(report: EvalReport, model: string): string[] {
  const out = [`${report.images} image${report.images === 1 ? '' : 's'} at ${report.imageSize}x${report.imageSize}, model ${model}  (means over images)`]
  out.push(
    ...table(
      ['depth', 'bits/image', 'PSNR (dB)', 'SSIM', 'MS-SSIM', 'codes used', 'usage', 'entropy (bits)', 'rFID'],
      report.depths.map((d) => [
        String(d.depth),
        String(d.bitsPerImage),
        fixed(d.psnr, 2),
        fixed(d.ssim, 4),
        fixed(d.msSsim, 4),
        String(d.distinctCodes),
        `${(100 * d.codebookUsage).toFixed(1)}%`,
        fixed(d.entropyBits, 2),
        fixed(d.rfid, 2),
      ]),
    ),
  )
  if (!report.rfid.available) out.push(`rFID unavailable: ${report.rfid.reason}`)
  const codecs = [...new Set(report.depths.flatMap((d) => d.codecs.map((c) => c.codec)))]
  const sections = [
    {
      title: 'At the same bytes, full resolution (codec quality chosen per image for the closest file size):',
      names: codecs.filter((c) => !c.endsWith('-downscaled')),
      setting: { header: 'q', cell: (c: CodecEvaluation) => fixed(c.quality, 0) },
    },
    {
      title: "Within the same bytes, downscaled (side / 2, 4, 8 or 16, upscaled back; per image the best PSNR whose file fits the tokens' bytes):",
      names: codecs.filter((c) => c.endsWith('-downscaled')),
      setting: { header: 'scale', cell: (c: CodecEvaluation) => `1/${Number.isInteger(c.downscale) ? c.downscale : fixed(c.downscale, 1)}` },
    },
  ]
  for (const { title, names, setting } of sections) {
    if (names.length === 0) continue
    out.push('', title)
    const header = ['depth', 'bytes', 'marvel PSNR', 'SSIM']
    for (const c of names) {
      const short = c.replace('-downscaled', '')
      header.push(`${short} bytes`, `${short} ${setting.header}`, `${short} PSNR`, 'SSIM')
    }
    const rows = report.depths.map((d) => {
      const row = [String(d.depth), fixed(d.bytesPerImage, 0), fixed(d.psnr, 2), fixed(d.ssim, 4)]
      for (const name of names) {
        const c = d.codecs.find((x) => x.codec === name)
        row.push(c ? `${fixed(c.bytesPerImage, 0)}${c.withinBudget < 1 ? '*' : ''}` : '-', c ? setting.cell(c) : '-', c ? fixed(c.psnr, 2) : '-', c ? fixed(c.ssim, 4) : '-')
      }
      return row
    })
    out.push(...table(header, rows))
  }
  if (report.depths.some((d) => d.codecs.some((c) => c.withinBudget < 1))) {
    out.push("* over the tokens' bytes for some images: no file of that codec is so small, its smallest is counted")
  }
  return out
}

async function runEval(args: string[], flags: EvalFlags): Promise<void> {
  if (flags.plot) await outputPath('eval', '--plot', flags.plot, 'chart')
  const inputs = await evalInputs(args)
  const tok = await loadModel(flags.model)
  try {
    if (flags.depth !== 'all') checkDepth(flags.depth, tok.info.depth)
    const total = Math.min(inputs.length, flags.limit ?? inputs.length)
    const progress = batchProgress('eval', total)
    let report: EvalReport
    let last = 0
    try {
      report = await evaluate(tok, inputs, {
        depth: flags.depth,
        limit: flags.limit,
        batchSize: flags.batchSize,
        inception: flags.inception,
        codecs: flags.codecs,
        onProgress: (done) => {
          progress.tick(done - last)
          last = done
        },
      })
    } finally {
      progress.done()
    }
    if (flags.plot) {
      try {
        await writeFile(flags.plot, await renderChart(rateDistortionChart(report)))
      } catch (e) {
        if (e instanceof MarvelError) throw e
        throw new MarvelError('MARVEL_IO', `cannot write ${flags.plot}: ${(e as Error).message}`, { cause: e })
      }
    }
    if (flags.json) printJson({ model: flags.model, ...report, plot: flags.plot ?? null })
    else for (const line of formatReport(report, flags.model)) console.log(line)
  } finally {
    tok.dispose()
  }
}
