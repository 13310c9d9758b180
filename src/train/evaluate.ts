/**
 * The evaluation a researcher watches during training: a fixed validation batch (the first images of the eval
 * shards, or of the training data, centre-cropped as the reference evaluates) reconstructed from each depth prefix,
 * drawn as one PNG grid (a row per image: original | depth 1 | ... | depth D) and scored by PSNR per depth.
 */
import sharp from 'sharp'

import { BatchStream } from '../data/batches.js'
import type { DataSource } from '../data/shards.js'
import { SampleStream } from '../data/stream.js'
import { MarvelError } from '../errors.js'
import { compare } from '../metrics.js'
import type { Trainer } from '../trainer.js'

export interface Evaluation {
  /** Mean PSNR (dB) over the batch, index 0 = depth 1. */
  psnr: number[]
  png: Buffer
}

/**
 * `count` images of `source` in order as the reference's eval transform makes them: the shorter side resized to
 * `cropSize`, then the centre `cropSize` square (`[count, S, S, 3]`), whatever the training's `resize_shorter_edge`;
 * undecodable ones are passed over.
 */
export async function validationBatch(source: DataSource, count: number, cropSize: number): Promise<Uint8Array> {
  const stream = await SampleStream.open(source, { seed: 0, bufferSize: 0, ordered: true })
  const batches = new BatchStream(stream, {
    augmentation: { resizeShorterEdge: cropSize, cropSize, randomCrop: false, randomFlip: false },
    batchSize: count,
    lookahead: count,
  })
  try {
    return (await batches.next()).images
  } finally {
    await batches.close()
  }
}

/** Reconstructs `images` at every depth through the trainer's current weights (`ema`: their EMA); the grid and the PSNRs. */
export async function evaluate(trainer: Trainer, images: Uint8Array, options: { ema?: boolean } = {}): Promise<Evaluation> {
  const size = trainer.imageSize
  const frame = size * size * 3
  const count = images.length / frame
  const columns: Uint8Array[] = [images]
  const psnr: number[] = []
  const originals = Array.from({ length: count }, (_, i) => ({ data: images.subarray(i * frame, (i + 1) * frame), width: size, height: size }))
  for (let depth = 1; depth <= trainer.depth; depth++) {
    const recon = await trainer.reconstruct(images, { depth, ema: options.ema ?? false })
    columns.push(recon)
    const scores = await compare(
      originals,
      originals.map((_, i) => ({ data: recon.subarray(i * frame, (i + 1) * frame), width: size, height: size })),
    )
    psnr.push(scores.reduce((sum, s) => sum + s.psnr, 0) / count)
  }
  const composite = columns.flatMap((col, c) =>
    Array.from({ length: count }, (_, r) => ({
      input: Buffer.from(col.buffer, col.byteOffset + r * frame, frame),
      raw: { width: size, height: size, channels: 3 as const },
      left: c * size,
      top: r * size,
    })),
  )
  try {
    const png = await sharp({ create: { width: columns.length * size, height: count * size, channels: 3, background: { r: 0, g: 0, b: 0 } } })
      .composite(composite)
      .png()
      .toBuffer()
    return { psnr, png }
  } catch (e) {
    throw new MarvelError('MARVEL_IMAGE', `cannot draw the reconstruction grid: ${(e as Error).message}`, { cause: e })
  }
}
