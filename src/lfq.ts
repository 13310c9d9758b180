/**
 * MARVEL's multi-depth residual lookup-free quantizer on its own: for each latent token z (bits channels), depth s
 * quantizes the residual r_s = z − Σ_{t<s} q_t to q_s = sign(r_s)·2^−s; the token at depth s is the sign pattern
 * read as an integer (channel k = bit k). Runs in Rust off the main thread.
 */
import { native } from './binding.js'
import { integerParameter, invalidParameter, optionsParameter } from './errors.js'
import { checkTensor, type Tensor } from './tensor.js'
import { Tokens } from './tokens.js'

export interface LfqOptions {
  /** Depths to quantize (1..23). */
  depth: number
  /** β of the commitment loss. Default 0.25. */
  commitmentCost?: number
  /** w of the entropy loss. Default 0.02. */
  entropyLossWeight?: number
  /** τ of the entropy logits 2 r·Cᵀ/τ. Default 0.01. */
  entropyLossTemperature?: number
  /** γ weighting the entropy of the mean distribution. Default 1. */
  entropyGamma?: number
  /** Factorise the entropy estimate over this many bit groups (memory 2^(bits/groups) per row instead of 2^bits). */
  entropyGroups?: number
}

export interface LfqLosses {
  commitment: number
  entropy: number
  perSampleEntropy: number
  avgEntropy: number
  total: number
}

/** What `lfqQuantize` returns: the tokens and the quantized latents. */
export interface LfqQuantized {
  /** One token per latent and depth, depth-major like every `Tokens` (`bitsPerToken` = the latent's channels). */
  tokens: Tokens
  /** Σ_s q_s over the depths quantized, the decoder's input: the shape of z. */
  codes: Tensor
}

const LFQ_OPTIONS = ['depth', 'commitmentCost', 'entropyLossWeight', 'entropyLossTemperature', 'entropyGamma', 'entropyGroups']

/** Checks z and the options up front and returns the options the binding takes. */
function check(where: string, z: Tensor, options: LfqOptions): LfqOptions {
  checkTensor(where, 'z', z)
  if (z.shape.length !== 3 || z.shape.some((d) => d < 1)) {
    throw invalidParameter(where, 'z.shape', '[batch, tokens, bits] of positive sizes', z.shape)
  }
  if (z.shape[2] < 1 || z.shape[2] > 32) throw invalidParameter(where, 'z.shape[2] (bits)', 'an integer from 1 to 32', z.shape[2])
  if (options === undefined) throw invalidParameter(where, 'options', 'an object with a depth', options)
  const { depth, commitmentCost, entropyLossWeight, entropyLossTemperature, entropyGamma, entropyGroups } = optionsParameter(where, options, LFQ_OPTIONS)
  integerParameter(where, 'options.depth', depth, 1, 23)
  for (const [name, value] of Object.entries({ commitmentCost, entropyLossWeight, entropyGamma })) {
    if (value !== undefined && !Number.isFinite(value)) throw invalidParameter(where, `options.${name}`, 'a finite number', value)
  }
  if (entropyLossTemperature !== undefined && !(Number.isFinite(entropyLossTemperature) && entropyLossTemperature > 0)) {
    throw invalidParameter(where, 'options.entropyLossTemperature', 'a positive number', entropyLossTemperature)
  }
  if (entropyGroups !== undefined) integerParameter(where, 'options.entropyGroups', entropyGroups, 1, z.shape[2])
  return { depth, commitmentCost, entropyLossWeight, entropyLossTemperature, entropyGamma, entropyGroups }
}

/** Tokens (depth-major, as `Tokens`) and the quantized codes Σ q_s (shape of z) for latents z `[B, N, bits]`. */
export async function lfqQuantize(z: Tensor, options: LfqOptions): Promise<LfqQuantized> {
  const o = check('lfqQuantize', z, options)
  const { tokens, codes } = await native().lfqQuantize(z.data, [...z.shape], o)
  const [depth, batch, numTokens] = tokens.shape
  return { tokens: new Tokens(tokens.data, { batch, depth, numTokens }, z.shape[2]), codes }
}

/** The training losses (commitment + entropy, as the MARVEL recipe) of latents z `[B, N, bits]`. */
export async function lfqLosses(z: Tensor, options: LfqOptions): Promise<LfqLosses> {
  // Checked before z.data and z.shape are read: a null z would otherwise raise a bare TypeError here.
  const o = check('lfqLosses', z, options)
  return native().lfqLosses(z.data, [...z.shape], o)
}
