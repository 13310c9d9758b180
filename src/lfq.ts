/**
 * MARVEL's multi-depth residual lookup-free quantizer on its own: for each latent token z (bits channels), depth s
 * quantizes the residual r_s = z − Σ_{t<s} q_t to q_s = sign(r_s)·2^−s; the token at depth s is the sign pattern
 * read as an integer (channel k = bit k). Runs in Rust off the main thread.
 */
import { native } from './binding.js'
import { invalidArgument } from './errors.js'
import { checkShape, type Tensor } from './tensor.js'

export interface LfqOptions {
  /** Depths to quantize (1..23). */
  depths: number
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

function check(z: Tensor, o: LfqOptions): void {
  if (!(z?.data instanceof Float32Array)) throw invalidArgument('z.data must be a Float32Array')
  checkShape('z', z.data.length, z.shape)
  if (z.shape.length !== 3) throw invalidArgument(`z must be [batch, tokens, bits], got [${z.shape.join(', ')}]`)
  if (!Number.isInteger(o?.depths) || o.depths < 1 || o.depths > 23) throw invalidArgument(`depths must be an integer from 1 to 23, got ${o?.depths}`)
}

/** Tokens `[B, N, depths]` (depth fastest) and the quantized codes Σ q_s (shape of z) for latents z `[B, N, bits]`. */
export async function lfqQuantize(z: Tensor, options: LfqOptions): Promise<{ tokens: Uint32Array; codes: Tensor }> {
  check(z, options)
  return native().lfqQuantize(z.data, [...z.shape], options)
}

/** The training losses (commitment + entropy, as the MARVEL recipe) of latents z `[B, N, bits]`. */
export async function lfqLosses(z: Tensor, options: LfqOptions): Promise<LfqLosses> {
  check(z, options)
  return native().lfqLosses(z.data, [...z.shape], options)
}
