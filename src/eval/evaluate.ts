/**
 * `evaluate()`: a tokenizer measured on a set of images, depth by depth — distortion (PSNR, SSIM, MS-SSIM), rate
 * (bits per image), how the codebook is spent (usage, entropy), rFID when pytorch-fid's Inception weights are at
 * hand, and WebP / JPEG at the same bytes for comparison. The metrics run in Rust; this module orchestrates.
 */
import { native } from '../binding.js'
import { integerParameter, invalidParameter, optionsParameter } from '../errors.js'
import { isImageInput, prepareImage, type RgbImage } from '../image.js'
import { compare } from '../metrics.js'
import type { ImageInput, Tokenizer } from '../tokenizer.js'
import { Tokens } from '../tokens.js'
import { CODECS, encodeAtBytes, encodeDownscaledWithin, type CodecVariant } from './codecs.js'
import { FidInception, INCEPTION_FEATURES, INCEPTION_WEIGHTS_ENV, frechetDistances } from './inception.js'

/** One image to evaluate, or a function that loads it when its batch comes (shard members, large sets). */
export type EvalInput = ImageInput | (() => Promise<ImageInput>)

export interface EvaluateOptions {
  /** One depth d, or `'all'` (default): every depth 1..D of the model. */
  depth?: number | 'all'
  /** Evaluate the first `limit` images only. */
  limit?: number
  /** Images per batch (memory bound). Default 16. */
  batchSize?: number
  /**
   * pytorch-fid's Inception weights for rFID: a file path or a loaded `FidInception`. Default:
   * `$MARVEL_INCEPTION_WEIGHTS`; without either (or with `null`) rFID is reported unavailable.
   */
  inception?: string | FidInception | null
  /** Compare with WebP and JPEG at the tokens' bytes, at full resolution and downscaled (default true). */
  codecs?: boolean
  /** Called after each batch. */
  onProgress?: (done: number, total: number) => void
}

/**
 * A classic codec at (about) the same bytes as the tokens of one depth, means over the images. `webp` / `jpeg`: full
 * resolution, the quality whose file is closest to the tokens' bytes. `webp-downscaled` / `jpeg-downscaled`: the
 * image shrunk by 2, 4, 8 or 16 and upscaled back after decoding, the best PSNR whose file fits in the tokens' bytes
 * (where no file is that small, the smallest one: `withinBudget` says for how many images it fit).
 */
export interface CodecEvaluation {
  codec: CodecVariant
  /** Mean file size; the codec cannot always get as small as the tokens. */
  bytesPerImage: number
  bitsPerImage: number
  /** Mean of the qualities chosen per image (for the downscaled rows, qualities taken at different factors). */
  quality: number
  /** Mean of the downscale factors chosen per image (1 at full resolution). */
  downscale: number
  /** Share of the images whose file is no larger than the tokens' bytes (below 1: the codec cannot get that small). */
  withinBudget: number
  psnr: number
  ssim: number
  msSsim: number | null
}

/** The scores of one depth, means over the images. */
export interface DepthEvaluation {
  depth: number
  bitsPerImage: number
  bytesPerImage: number
  psnr: number
  ssim: number
  /** `null` when the images are under 161 pixels a side. */
  msSsim: number | null
  /** Distinct ids at this depth. */
  distinctCodes: number
  /** Distinct ids / 2^bitsPerToken. */
  codebookUsage: number
  /** Entropy of the id frequencies at this depth, in bits (at most bitsPerToken). */
  entropyBits: number
  /** rFID of the reconstructions at this depth against the originals; `null` when unavailable. */
  rfid: number | null
  codecs: CodecEvaluation[]
}

export interface EvalReport {
  images: number
  imageSize: number
  numTokens: number
  bitsPerToken: number
  depths: DepthEvaluation[]
  rfid: { available: true; weights: string } | { available: false; reason: string }
}

const mean = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0) / xs.length
const meanOrNull = (xs: readonly (number | null)[]) => (xs.length > 0 && xs.every((x) => x !== null) ? mean(xs as number[]) : null)

function concatFloat(parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0))
  let at = 0
  for (const p of parts) {
    out.set(p, at)
    at += p.length
  }
  return out
}

/** The Inception network to use, or why there is none. A file that was asked for but fails to load is an error. */
async function inceptionFor(option: EvaluateOptions['inception']): Promise<{ net?: FidInception; owned: boolean; reason?: string }> {
  if (option === null) return { owned: false, reason: 'disabled' }
  if (option instanceof FidInception) return { net: option, owned: false }
  const path = option ?? process.env[INCEPTION_WEIGHTS_ENV]
  if (path === undefined || path === '') {
    return { owned: false, reason: `no Inception weights: pass --inception <file> (pytorch-fid's pt_inception-2015-12-05) or set ${INCEPTION_WEIGHTS_ENV}` }
  }
  return { net: await FidInception.load(path), owned: true }
}

interface DepthAccumulator {
  psnr: number[]
  ssim: number[]
  msSsim: (number | null)[]
  features: Float32Array[]
  codecs: Map<CodecVariant, { bytes: number[]; quality: number[]; downscale: number[]; within: number[]; psnr: number[]; ssim: number[]; msSsim: (number | null)[] }>
}

/**
 * Evaluate `tokenizer` on `images` (evaluation geometry: shorter side resized to the model's size, centre crop).
 *
 * ```ts
 * const report = await evaluate(await Tokenizer.fromPretrained('models/marvel'), files, { limit: 100 })
 * for (const d of report.depths) console.log(d.depth, d.bitsPerImage, d.psnr.toFixed(2), d.rfid)
 * ```
 */
export async function evaluate(tokenizer: Tokenizer, images: readonly EvalInput[], options?: EvaluateOptions): Promise<EvalReport> {
  const o = optionsParameter('evaluate', options, ['depth', 'limit', 'batchSize', 'inception', 'codecs', 'onProgress'])
  if (!tokenizer || typeof tokenizer.encode !== 'function' || typeof tokenizer.info !== 'object') {
    throw invalidParameter('evaluate', 'tokenizer', 'a Tokenizer', tokenizer)
  }
  if (!Array.isArray(images) || images.length === 0) throw invalidParameter('evaluate', 'images', 'a non-empty array of images', images)
  // An index loop: forEach skips the holes of a sparse array.
  for (let i = 0; i < images.length; i++) {
    const x = images[i]
    if (typeof x !== 'function' && !isImageInput(x)) {
      throw invalidParameter('evaluate', `images[${i}]`, 'an image (path, encoded bytes, sharp instance, raw pixels) or a function that loads one', x)
    }
  }
  const { imageSize: size, depth: modelDepth, bitsPerToken, numTokens, bitsPerImageByDepth } = tokenizer.info
  const depths =
    o.depth === undefined || o.depth === 'all'
      ? Array.from({ length: modelDepth }, (_, i) => i + 1)
      : [integerParameter('evaluate', 'depth', o.depth, 1, modelDepth)]
  const limit = o.limit === undefined ? images.length : integerParameter('evaluate', 'limit', o.limit, 1, Number.MAX_SAFE_INTEGER)
  const batchSize = integerParameter('evaluate', 'batchSize', o.batchSize ?? 16, 1, 65536)
  if (o.codecs !== undefined && typeof o.codecs !== 'boolean') throw invalidParameter('evaluate', 'codecs', 'a boolean', o.codecs)
  if (o.onProgress !== undefined && typeof o.onProgress !== 'function') throw invalidParameter('evaluate', 'onProgress', 'a function', o.onProgress)
  if (o.inception !== undefined && o.inception !== null && typeof o.inception !== 'string' && !(o.inception instanceof FidInception)) {
    throw invalidParameter('evaluate', 'inception', 'a weights file path, a FidInception or null', o.inception)
  }
  const list = images.slice(0, limit)
  const withCodecs = o.codecs ?? true

  const inception = await inceptionFor(o.inception)
  try {
    const acc: DepthAccumulator[] = depths.map(() => ({ psnr: [], ssim: [], msSsim: [], features: [], codecs: new Map() }))
    const realFeatures: Float32Array[] = []
    const tokenParts: Tokens[] = []
    for (let start = 0; start < list.length; start += batchSize) {
      const chunk = list.slice(start, start + batchSize)
      const originals = await Promise.all(chunk.map(async (x) => prepareImage(typeof x === 'function' ? await x() : x, { size })))
      const tokens = await tokenizer.encode(originals, { resize: 'none', batchSize })
      tokenParts.push(tokens)
      if (inception.net) realFeatures.push(await inception.net.features(originals))
      for (const [j, depth] of depths.entries()) {
        const recon = await tokenizer.decode(tokens, { depth })
        for (const s of await compare(originals, recon)) {
          acc[j].psnr.push(s.psnr)
          acc[j].ssim.push(s.ssim)
          acc[j].msSsim.push(s.msSsim)
        }
        if (inception.net) acc[j].features.push(await inception.net.features(recon))
        if (withCodecs) await codecScores(originals, bitsPerImageByDepth[depth - 1] / 8, acc[j])
      }
      o.onProgress?.(Math.min(start + batchSize, list.length), list.length)
    }

    const all = Tokens.concat(tokenParts)
    const usage = await native().codebookUsageByDepth(all.data, all.depth, bitsPerToken)
    const rfidPossible = inception.net !== undefined && list.length >= 2
    const rfids = rfidPossible
      ? await frechetDistances(concatFloat(realFeatures), acc.map((a) => concatFloat(a.features)), INCEPTION_FEATURES)
      : depths.map(() => null)
    const report: DepthEvaluation[] = []
    for (const [j, depth] of depths.entries()) {
      const a = acc[j]
      const bits = bitsPerImageByDepth[depth - 1]
      report.push({
        depth,
        bitsPerImage: bits,
        bytesPerImage: bits / 8,
        psnr: mean(a.psnr),
        ssim: mean(a.ssim),
        msSsim: meanOrNull(a.msSsim),
        distinctCodes: usage.distinct[depth - 1],
        codebookUsage: usage.distinct[depth - 1] / 2 ** bitsPerToken,
        entropyBits: usage.entropy[depth - 1],
        rfid: rfids[j],
        codecs: [...a.codecs.entries()].map(([codec, c]) => ({
          codec,
          bytesPerImage: mean(c.bytes),
          bitsPerImage: 8 * mean(c.bytes),
          quality: mean(c.quality),
          downscale: mean(c.downscale),
          withinBudget: mean(c.within),
          psnr: mean(c.psnr),
          ssim: mean(c.ssim),
          msSsim: meanOrNull(c.msSsim),
        })),
      })
    }
    const rfid: EvalReport['rfid'] = inception.net
      ? rfidPossible
        ? { available: true, weights: inception.net.source }
        : { available: false, reason: 'rFID needs at least 2 images (a covariance)' }
      : { available: false, reason: inception.reason ?? 'unavailable' }
    return { images: list.length, imageSize: size, numTokens, bitsPerToken, depths: report, rfid }
  } finally {
    if (inception.owned) inception.net?.dispose()
  }
}

/** Each original through each codec at `bytes` (full resolution, then downscaled), scored against the original. */
async function codecScores(originals: RgbImage[], bytes: number, acc: DepthAccumulator): Promise<void> {
  const runs = [
    ...CODECS.map((codec) => (img: RgbImage) => encodeAtBytes(img, codec, bytes)),
    ...CODECS.map((codec) => (img: RgbImage) => encodeDownscaledWithin(img, codec, bytes)),
  ]
  for (const run of runs) {
    const coded = await Promise.all(originals.map(run))
    const scores = await compare(originals, coded.map((c) => c.image))
    let c = acc.codecs.get(coded[0].codec)
    if (!c) acc.codecs.set(coded[0].codec, (c = { bytes: [], quality: [], downscale: [], within: [], psnr: [], ssim: [], msSsim: [] }))
    coded.forEach((x, i) => {
      c.bytes.push(x.bytes)
      c.quality.push(x.quality)
      c.downscale.push(x.downscale)
      c.within.push(x.withinBudget ? 1 : 0)
      c.psnr.push(scores[i].psnr)
      c.ssim.push(scores[i].ssim)
      c.msSsim.push(scores[i].msSsim)
    })
  }
}
