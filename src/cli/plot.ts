/** `marvel plot`: a training run's curves (loss, learning rate, PSNR per depth) from its logs/metrics.jsonl as a PNG. */
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'

import type { Command } from 'commander'

import { parseMetricsLog, renderChart, trainingChart } from '../chart/index.js'
import { MarvelError } from '../errors.js'
import { expectKind, outputPath } from '../files.js'
import { positiveInt } from './common.js'

interface PlotFlags {
  out: string
  width: number
}

export function registerPlot(program: Command): void {
  program
    .command('plot')
    .summary('draw a training run\'s loss / learning rate / PSNR curves as a PNG')
    .description(
      'Read <output_dir>/logs/metrics.jsonl (one JSON object per line, as the training loop writes it) and draw loss and ' +
        'learning rate against the step, plus PSNR per depth where evaluation lines exist. Lines that are not metrics are ' +
        'skipped and counted on stderr.',
    )
    .argument('<output_dir>', 'a training output folder (holding logs/metrics.jsonl)')
    .option('-o, --out <file.png>', 'the PNG to write', 'curves.png')
    .option('--width <px>', 'image width in pixels', positiveInt('--width', 8192), 900)
    .action((dir: string, flags: PlotFlags) => plot(dir, flags))
}

async function plot(dir: string, flags: PlotFlags): Promise<void> {
  const log = join(dir, 'logs', 'metrics.jsonl')
  await expectKind(log, 'metrics log')
  let text: string
  try {
    text = await readFile(log, 'utf8')
  } catch (e) {
    const missing = (e as NodeJS.ErrnoException).code === 'ENOENT'
    throw new MarvelError('MARVEL_IO', `cannot read ${log}: ${missing ? 'file not found' : (e as Error).message}`, { cause: e })
  }
  const curves = parseMetricsLog(text)
  if (curves.lines === 0) throw new MarvelError('MARVEL_IO', `${log} holds no metrics lines (${curves.skipped} line(s) skipped)`)
  await outputPath('plot', '--out', flags.out, 'chart')
  const png = await renderChart(trainingChart(curves, { width: flags.width }))
  try {
    await writeFile(flags.out, png)
  } catch (e) {
    throw new MarvelError('MARVEL_IO', `cannot write ${flags.out}: ${(e as Error).message}`, { cause: e })
  }
  if (curves.skipped > 0) process.stderr.write(`marvel plot: skipped ${curves.skipped} line(s) of ${log} that are not metrics\n`)
  console.log(`${flags.out}: ${curves.loss.length} training and ${curves.psnr[0]?.length ?? 0} evaluation point(s) from ${log}`)
}
