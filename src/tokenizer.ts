import { existsSync, statSync } from 'node:fs'
import { dirname, join } from 'node:path'

import type { Sharp } from 'sharp'

import { native, weightFiles, type NativeBinding } from './binding.js'
import { deviceParameter, requireDevice, type Device } from './device.js'
import { MarvelError, integerParameter, invalidParameter, optionsParameter } from './errors.js'
import { canonicalPath, expectKind, outputPath, pathParameter } from './files.js'
import { HUB_OPTIONS, resolveModelFiles, type HubOptions } from './hub.js'
import { encodePng, imageList, prepareImage, writePng, type PrepareOptions, type RawImage, type RgbImage } from './image.js'
import { NativeLease } from './lease.js'
import { Tokens } from './tokens.js'

type NativeTokenizer = Awaited<ReturnType<NativeBinding['loadTokenizer']>>
type ModelInfo = Awaited<ReturnType<NativeBinding['inspectModel']>>

/** One image to encode: a file path, an encoded image (PNG/JPEG/WebP/...), a sharp pipeline or raw pixels. */
export type ImageInput = string | Buffer | Uint8Array | Sharp | RawImage | RgbImage

/** A decoded image: RGB bytes plus helpers to save it. */
export interface DecodedImage extends RgbImage {
  toPNG(): Promise<Buffer>
  toFile(path: string): Promise<void>
}

export interface EncodeOptions {
  /** `'center-crop'` (default): resize the shorter side to 256 (bicubic, antialiased) and crop the centre. `'none'`: inputs must already be 256x256. */
  resize?: PrepareOptions['resize']
  /** Images per native call (memory bound for long lists). Default 16. */
  batchSize?: number
}

export interface DecodeOptions {
  /** Decode the first `depth` depths only (MARVEL's rate/quality knob). Default: every depth the tokens hold. */
  depth?: number
}

export interface FromPretrainedOptions extends HubOptions {
  /** Where encode and decode run: `'cpu'` (default), `'cuda'` or `'cuda:N'` (needs an addon built with `npm run build:cuda`). */
  device?: Device
}

/** What a loaded model is. */
export interface TokenizerInfo {
  /** `'titok'` (vector quantizer) or `'marvel'` (multi-depth lookup-free quantizer). */
  architecture: 'titok' | 'marvel'
  quantizer: 'vq' | 'lfq'
  imageSize: number
  numTokens: number
  /** Depths per token (1 for TiTok). */
  depth: number
  codebookSize: number
  bitsPerToken: number
  /** Bits per image at full depth. */
  bitsPerImage: number
  /** Bits per image when the first d depths are kept: `bitsPerImageByDepth[d - 1]`, d = 1..depth (from the core). */
  bitsPerImageByDepth: readonly number[]
  parameters: number
  encoder: { width: number; layers: number }
  decoder: { width: number; layers: number }
  /** Decodes through the MaskGIT pixel decoder (the two-stage layout of the released TiTok models). */
  twoStage: boolean
  /** Where the model was loaded from. */
  source: string
}

export function decoded(image: RgbImage): DecodedImage {
  return Object.assign(image, {
    toPNG: () => encodePng(image),
    toFile: (path: string) => writePng(image, path),
  })
}

/** The local folder behind `source` (a folder, or a hub repo id resolved into the cache), checked before any read. */
async function modelFolder(fn: string, source: string, options: FromPretrainedOptions | undefined): Promise<string> {
  options = optionsParameter(fn, options, HUB_OPTIONS)
  if (typeof source !== 'string' || source.length === 0) throw invalidParameter(fn, 'source', 'a model folder path or a repo id', source)
  pathParameter(fn, 'source', source)
  if (existsSync(source) && statSync(source).isDirectory()) {
    await checkModelFolder(source)
    return source
  }
  if (source.startsWith('.') || source.startsWith('/') || source.includes('\\') || source.split('/').length > 2) {
    throw new MarvelError('MARVEL_IO', `${fn}: model folder ${source} not found`)
  }
  return dirname((await resolveModelFiles(source, options)).config)
}

function toInfo(i: ModelInfo, source: string): Readonly<TokenizerInfo> {
  return Object.freeze({
    architecture: i.architecture as TokenizerInfo['architecture'],
    quantizer: i.quantizer as TokenizerInfo['quantizer'],
    imageSize: i.imageSize,
    numTokens: i.numTokens,
    depth: i.depth,
    codebookSize: i.codebookSize,
    bitsPerToken: i.bitsPerToken,
    bitsPerImage: i.bitsPerImage,
    bitsPerImageByDepth: Object.freeze([...i.bitsPerImageByDepth]),
    parameters: i.parameters,
    encoder: Object.freeze({ width: i.encoderWidth, layers: i.encoderLayers }),
    decoder: Object.freeze({ width: i.decoderWidth, layers: i.decoderLayers }),
    twoStage: i.twoStage,
    source,
  })
}

/**
 * A TiTok or MARVEL image tokenizer: images to a handful of discrete tokens and back.
 *
 * ```ts
 * const tok = await Tokenizer.fromPretrained('yucornetto/tokenizer_titok_l32_imagenet')
 * const tokens = await tok.encode('cat.jpg')          // 32 tokens
 * const [image] = await tok.decode(tokens)
 * await image.toFile('cat.recon.png')
 * ```
 */
export class Tokenizer {
  readonly #lease: NativeLease<NativeTokenizer>
  readonly info: Readonly<TokenizerInfo>

  private constructor(nativeTokenizer: NativeTokenizer, source: string) {
    this.#lease = new NativeLease(nativeTokenizer, 'tokenizer')
    this.info = toInfo(nativeTokenizer.info, source)
  }

  /**
   * Load a model from a local folder (`config.json` + `model.safetensors` or `pytorch_model.bin`) or a Hugging
   * Face repo id such as `yucornetto/tokenizer_titok_l32_imagenet` (downloaded into the hub cache; `HF_ENDPOINT`,
   * `HF_HOME`, `HF_TOKEN` and `HF_HUB_OFFLINE` are honoured).
   */
  static async fromPretrained(source: string, options?: FromPretrainedOptions): Promise<Tokenizer> {
    const { device, ...hub } = optionsParameter('fromPretrained', options, [...HUB_OPTIONS, 'device'])
    const where = requireDevice('fromPretrained', deviceParameter('fromPretrained', device))
    return new Tokenizer(await native().loadTokenizer(await modelFolder('fromPretrained', source, hub), where), source)
  }

  /**
   * What `fromPretrained(source)` would give as `info`, read from `config.json` and the weights file's header only:
   * no weight is read, so it costs megabytes where a load costs the model's size. The folder is checked as a load
   * checks it (every tensor present with its shape), so a folder that inspects cleanly has a loadable layout.
   */
  static async inspect(source: string, options?: FromPretrainedOptions): Promise<Readonly<TokenizerInfo>> {
    return toInfo(await native().inspectModel(await modelFolder('inspect', source, options)), source)
  }

  /** Encode one image or a list of images (batched internally) to tokens. */
  async encode(images: ImageInput | ImageInput[], options?: EncodeOptions): Promise<Tokens> {
    const o = optionsParameter('encode', options, ENCODE_OPTIONS)
    const { list, batchSize } = this.#encodeArgs('encode', images, o)
    return this.#lease.use((model) => this.#encodeWith(model, list, batchSize, o.resize))
  }

  #encodeArgs(where: string, images: ImageInput | ImageInput[], options: EncodeOptions): { list: ImageInput[]; batchSize: number } {
    const list = imageList(where, images)
    // 2^16 images of 256x256 RGB is a 12 GiB batch: beyond any memory the bound is meant to protect.
    const batchSize = integerParameter(where, 'batchSize', options.batchSize ?? 16, 1, 65536)
    const resize = options.resize ?? 'center-crop'
    if (resize !== 'center-crop' && resize !== 'none') throw invalidParameter(where, 'resize', "'center-crop' or 'none'", resize)
    return { list, batchSize }
  }

  async #encodeWith(model: NativeTokenizer, list: ImageInput[], batchSize: number, resize: EncodeOptions['resize']): Promise<Tokens> {
    const size = this.info.imageSize
    const frame = size * size * 3
    const parts: Tokens[] = []
    for (let start = 0; start < list.length; start += batchSize) {
      const chunk = list.slice(start, start + batchSize)
      const prepared = await Promise.all(chunk.map((img) => prepareImage(img, { size, resize })))
      const rgb = new Uint8Array(prepared.length * frame)
      prepared.forEach((p, i) => rgb.set(p.data, i * frame))
      const ids = await this.#lease.queue.run(() => model.encode(rgb, prepared.length, size, size))
      const [depth, batch, numTokens] = ids.shape
      parts.push(new Tokens(ids.data, { batch, depth, numTokens }, this.info.bitsPerToken))
    }
    return Tokens.concat(parts)
  }

  /** Decode tokens to RGB images, at every depth they hold or the first `options.depth`. */
  async decode(tokens: Tokens, options?: DecodeOptions): Promise<DecodedImage[]> {
    const used = this.#decodeArgs('decode', tokens, options)
    return this.#lease.use((model) => this.#decodeWith(model, used))
  }

  /** The first `options.depth` depths of `tokens`, after checking both against the model. */
  #decodeArgs(where: string, tokens: Tokens, options: DecodeOptions | undefined): Tokens {
    options = optionsParameter(where, options, DECODE_OPTIONS)
    if (!(tokens instanceof Tokens)) throw invalidParameter(where, 'tokens', 'a Tokens object (see Tokens.fromBytes / Tokens.fromJSON)', tokens)
    const used = tokens.slice(this.#depthArg(where, options.depth, tokens.depth))
    this.#checkTokens(where, used)
    return used
  }

  #depthArg(where: string, depth: number | undefined, held: number): number {
    if (depth === undefined) return held
    integerParameter(where, 'depth', depth, 1, this.info.depth)
    if (depth > held) throw invalidParameter(where, 'depth', `at most the ${held} depth(s) the tokens hold`, depth)
    return depth
  }

  #checkTokens(where: string, tokens: Tokens): void {
    if (tokens.numTokens !== this.info.numTokens) {
      throw new MarvelError('MARVEL_SHAPE_MISMATCH', `${where}: the model takes ${this.info.numTokens} tokens per image, got ${tokens.numTokens}`)
    }
    if (tokens.depth > this.info.depth) {
      throw new MarvelError('MARVEL_SHAPE_MISMATCH', `${where}: the model has ${this.info.depth} depth(s) but the tokens hold ${tokens.depth}; pass { depth }`)
    }
  }

  async #decodeWith(model: NativeTokenizer, used: Tokens): Promise<DecodedImage[]> {
    const { batch, depth, numTokens } = used.shape
    const rgb = await this.#lease.queue.run(() => model.decode(used.data, [depth, batch, numTokens], depth))
    const size = this.info.imageSize
    const frame = size * size * 3
    return Array.from({ length: batch }, (_, i) => decoded({ data: rgb.subarray(i * frame, (i + 1) * frame), width: size, height: size }))
  }

  /**
   * Encode then decode: the model's reconstruction of each image. The model is held through both halves, so a
   * reconstruct() started before dispose() finishes like an encode() or decode() would.
   */
  async reconstruct(images: ImageInput | ImageInput[], options?: EncodeOptions & DecodeOptions): Promise<DecodedImage[]> {
    const o = optionsParameter('reconstruct', options, [...ENCODE_OPTIONS, ...DECODE_OPTIONS])
    const { list, batchSize } = this.#encodeArgs('reconstruct', images, o)
    const depth = this.#depthArg('reconstruct', o.depth, this.info.depth)
    return this.#lease.use(async (model) => {
      const tokens = await this.#encodeWith(model, list, batchSize, o.resize)
      return this.#decodeWith(model, tokens.slice(depth))
    })
  }

  /** Unclamped float reconstruction `[batch, 3, H, W]` (full precision, for comparisons with reference outputs). */
  async decodeFloat(tokens: Tokens, options?: DecodeOptions): Promise<{ data: Float32Array; shape: number[] }> {
    const used = this.#decodeArgs('decodeFloat', tokens, options)
    const { depth, batch, numTokens } = used.shape
    return this.#lease.step((model) => model.decodeFloat(used.data, [depth, batch, numTokens], depth))
  }

  /** Free the model's memory (once calls in flight finish). Any later call throws. */
  dispose(): void {
    this.#lease.dispose()
  }

  get disposed(): boolean {
    return this.#lease.disposed
  }
}

/** Write a model folder with fresh random weights for a TiTok/MARVEL `config.json` object (tests, training from scratch). */
export async function createRandomModel(dir: string, config: object, seed = 0): Promise<void> {
  // An empty path would write into the current directory.
  pathParameter('createRandomModel', 'dir', dir)
  if (config === null || typeof config !== 'object' || Array.isArray(config)) throw invalidParameter('createRandomModel', 'config', 'a config.json object', config)
  integerParameter('createRandomModel', 'seed', seed, 0, 0xffffffff)
  await checkOutputFolder('createRandomModel', dir)
  await native().createRandomModel(dir, JSON.stringify(config, null, 2), seed)
}

/**
 * Make a MARVEL model from a TiTok one (the MARVEL recipe starts from TiTok-L-32): encoder, decoder and pixel decoder
 * are copied unchanged and the vector quantizer becomes a `depth`-depth lookup-free quantizer. Writes
 * `config.json` + `model.safetensors` into `outDir`; fine-tune it with the trainer to get a useful MARVEL model.
 */
export async function marvelFromTitok(titokDir: string, outDir: string, options?: { depth?: number }): Promise<void> {
  pathParameter('marvelFromTitok', 'titokDir', titokDir)
  pathParameter('marvelFromTitok', 'outDir', outDir)
  const depth = integerParameter('marvelFromTitok', 'depth', optionsParameter('marvelFromTitok', options, ['depth']).depth ?? 4, 1, 23)
  // Writing into the source folder would replace the checkpoint being read.
  if (canonicalPath(titokDir) === canonicalPath(outDir)) {
    throw invalidParameter('marvelFromTitok', 'outDir', `a folder other than titokDir (${titokDir})`, outDir)
  }
  await checkModelFolder(titokDir)
  await checkOutputFolder('marvelFromTitok', outDir)
  await native().marvelFromTitok(titokDir, outDir, depth)
}

const ENCODE_OPTIONS = ['resize', 'batchSize'] as const
const DECODE_OPTIONS = ['depth'] as const

/**
 * The model files a folder holds are regular files: a FIFO named `config.json` or `model.safetensors` would block
 * the native reader forever. Missing files are left to the native loader, which names what it looked for.
 */
async function checkModelFolder(dir: string): Promise<void> {
  await expectKind(dir, 'model folder', 'directory')
  for (const name of ['config.json', ...weightFiles()]) {
    const path = join(dir, name)
    if (existsSync(path)) await expectKind(path, 'model file')
  }
}

/** The files a model writer creates in `dir` are absent or regular files: a FIFO there would block the writer forever. */
async function checkOutputFolder(where: string, dir: string): Promise<void> {
  // The writers write the preferred weights format, the first of the core's list.
  for (const name of ['config.json', weightFiles()[0]]) await outputPath(where, 'dir', join(dir, name), 'model file')
}
