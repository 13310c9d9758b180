import { native } from './binding.js'
import { MarvelError, integerParameter, invalidParameter } from './errors.js'

/** The most ids one container may hold: a Uint32Array's length limit on 64-bit engines is far above, memory is not. */
const MAX_IDS = 2 ** 32 - 1

/** Dimensions of a token container. */
export interface TokensShape {
  /** Images. */
  batch: number
  /** Quantization depths held (1 for TiTok's VQ; up to the model's D for MARVEL). */
  depth: number
  /** Tokens per image and depth (32 for TiTok-L-32). */
  numTokens: number
}

/** The JSON form of `Tokens` (`tokens.toJSON()`): ids nested as `[depth][image][position]`. */
export interface TokensJSON {
  format: 'marvel-tokens'
  version: 1
  batch: number
  depth: number
  numTokens: number
  bitsPerToken: number
  ids: number[][][]
}

/**
 * Token ids of a batch of images, **depth-major**: `data[(d * batch + b) * numTokens + n]` is token `n` of image `b`
 * at depth `d`. Keeping the first d depths is therefore a prefix of `data` (`slice(d)` copies nothing), which is how
 * MARVEL tokens are sent progressively: coarse first, refinements after.
 */
export class Tokens {
  readonly data: Uint32Array
  readonly shape: Readonly<TokensShape>
  /** Bits needed to store one id (12 for a 4096-entry codebook). */
  readonly bitsPerToken: number

  constructor(data: Uint32Array, shape: TokensShape, bitsPerToken: number) {
    if (!(data instanceof Uint32Array)) throw invalidParameter('Tokens', 'data', 'a Uint32Array', data)
    if (shape === null || typeof shape !== 'object') throw invalidParameter('Tokens', 'shape', 'an object { batch, depth, numTokens }', shape)
    const { batch, depth, numTokens } = shape
    for (const [k, v] of Object.entries({ batch, depth, numTokens })) integerParameter('Tokens', k, v, 1, MAX_IDS)
    integerParameter('Tokens', 'bitsPerToken', bitsPerToken, 1, 32)
    if (data.length !== depth * batch * numTokens) {
      throw new MarvelError(
        'MARVEL_SHAPE_MISMATCH',
        `Tokens: depth ${depth} x batch ${batch} x ${numTokens} tokens needs ${depth * batch * numTokens} ids, got ${data.length}`,
      )
    }
    this.data = data
    this.shape = Object.freeze({ batch, depth, numTokens })
    this.bitsPerToken = bitsPerToken
  }

  get batch(): number {
    return this.shape.batch
  }

  get depth(): number {
    return this.shape.depth
  }

  get numTokens(): number {
    return this.shape.numTokens
  }

  /**
   * Bits per image at the depth held (tokens x depth x bits per token). Kept in TypeScript because it is a property
   * of this token object, not of a model (these tokens may come from a file or `lfqQuantize`): it is the per-image
   * share of the payload the byte format writes (`tokens/bytes.rs`: every id in exactly `bitsPerToken` bits, so
   * `batch * numTokens * depth * bitsPerToken` bits in all), and the formula of the core's `bits_per_image_at`.
   */
  get bitsPerImage(): number {
    return this.numTokens * this.depth * this.bitsPerToken
  }

  /** The first `depth` depths, sharing this container's memory. */
  slice(depth: number): Tokens {
    integerParameter('slice', 'depth', depth, 1, this.depth)
    const { batch, numTokens } = this.shape
    return new Tokens(this.data.subarray(0, depth * batch * numTokens), { batch, depth, numTokens }, this.bitsPerToken)
  }

  /** The tokens of image `index` alone (a copy). */
  image(index: number): Tokens {
    const { batch, depth, numTokens } = this.shape
    integerParameter('image', 'index', index, 0, batch - 1)
    const out = new Uint32Array(depth * numTokens)
    for (let d = 0; d < depth; d++) {
      const start = (d * batch + index) * numTokens
      out.set(this.data.subarray(start, start + numTokens), d * numTokens)
    }
    return new Tokens(out, { batch: 1, depth, numTokens }, this.bitsPerToken)
  }

  /** Join batches of tokens (same depth, token count and bits) into one batch, in order. */
  static concat(parts: readonly Tokens[]): Tokens {
    if (!Array.isArray(parts) || parts.length === 0) throw invalidParameter('Tokens.concat', 'parts', 'a non-empty array of Tokens', parts)
    // An index loop: every() skips the holes of a sparse array.
    for (let i = 0; i < parts.length; i++) {
      if (!(parts[i] instanceof Tokens)) throw invalidParameter('Tokens.concat', `parts[${i}]`, 'a Tokens object', parts[i])
    }
    if (parts.length === 1) return parts[0]
    const { depth, numTokens } = parts[0].shape
    const bits = parts[0].bitsPerToken
    for (const p of parts) {
      if (p.depth !== depth || p.numTokens !== numTokens || p.bitsPerToken !== bits) {
        throw new MarvelError('MARVEL_SHAPE_MISMATCH', 'Tokens.concat: every part needs the same depth, token count and bits')
      }
    }
    const batch = parts.reduce((n, p) => n + p.batch, 0)
    const data = new Uint32Array(depth * batch * numTokens)
    let offset = 0
    // Depth-major: each part's block for depth d lands after the earlier parts' images at that depth.
    for (const part of parts) {
      for (let d = 0; d < depth; d++) {
        data.set(part.data.subarray(d * part.batch * numTokens, (d + 1) * part.batch * numTokens), (d * batch + offset) * numTokens)
      }
      offset += part.batch
    }
    return new Tokens(data, { batch, depth, numTokens }, bits)
  }

  /** Compact bytes: a 20-byte header then each id in `bitsPerToken` bits (32 tokens x 4 depths x 12 bits = 192 bytes). */
  toBytes(): Buffer {
    const { depth, batch, numTokens } = this.shape
    return native().tokensToBytes(this.data, [depth, batch, numTokens], this.bitsPerToken)
  }

  /** Reads `toBytes()` output back. A truncated or corrupt buffer throws `MARVEL_INVALID_ARGUMENT`. */
  static fromBytes(bytes: Uint8Array): Tokens {
    if (!(bytes instanceof Uint8Array)) throw invalidParameter('Tokens.fromBytes', 'bytes', 'a Buffer or Uint8Array', bytes)
    const { ids, bits } = native().tokensFromBytes(bytes)
    const [depth, batch, numTokens] = ids.shape
    return new Tokens(ids.data, { batch, depth, numTokens }, bits)
  }

  toJSON(): TokensJSON {
    const { batch, depth, numTokens } = this.shape
    const ids = Array.from({ length: depth }, (_, d) =>
      Array.from({ length: batch }, (_, b) => Array.from(this.data.subarray((d * batch + b) * numTokens, (d * batch + b + 1) * numTokens))),
    )
    return { format: 'marvel-tokens', version: 1, batch, depth, numTokens, bitsPerToken: this.bitsPerToken, ids }
  }

  /** Reads `toJSON()` output back (after `JSON.parse`), checking every id fits `bitsPerToken`. */
  static fromJSON(json: TokensJSON): Tokens {
    if (!json || json.format !== 'marvel-tokens' || json.version !== 1) {
      throw invalidParameter('Tokens.fromJSON', 'json', 'a marvel-tokens version 1 object (from tokens.toJSON())', json)
    }
    const { ids } = json
    // Checked before they size an array: a negative or fractional count would otherwise raise a bare RangeError.
    const [batch, depth, numTokens] = (['batch', 'depth', 'numTokens'] as const).map((k) => integerParameter('Tokens.fromJSON', k, json[k], 1, MAX_IDS))
    const bitsPerToken = integerParameter('Tokens.fromJSON', 'bitsPerToken', json.bitsPerToken, 1, 32)
    if (depth * batch * numTokens > MAX_IDS) {
      throw invalidParameter('Tokens.fromJSON', 'depth x batch x numTokens', `at most ${MAX_IDS}`, depth * batch * numTokens)
    }
    const flat = new Uint32Array(depth * batch * numTokens)
    const limit = 2 ** bitsPerToken
    if (!Array.isArray(ids) || ids.length !== depth) throw new MarvelError('MARVEL_SHAPE_MISMATCH', `Tokens.fromJSON: ids must hold ${depth} depths`)
    let i = 0
    for (const perDepth of ids) {
      if (!Array.isArray(perDepth) || perDepth.length !== batch) throw new MarvelError('MARVEL_SHAPE_MISMATCH', `Tokens.fromJSON: each depth must hold ${batch} images`)
      for (const row of perDepth) {
        if (!Array.isArray(row) || row.length !== numTokens) throw new MarvelError('MARVEL_SHAPE_MISMATCH', `Tokens.fromJSON: each image must hold ${numTokens} ids`)
        for (const id of row) {
          if (!Number.isInteger(id) || id < 0 || id >= limit) throw invalidParameter('Tokens.fromJSON', 'every id', `an integer that fits ${bitsPerToken} bits`, id)
          flat[i++] = id
        }
      }
    }
    return new Tokens(flat, { batch, depth, numTokens }, bitsPerToken)
  }
}
