/** Small random-weight models written by the tests themselves (config.json + model.safetensors). */
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { createRandomModel } from '../../src/index.js'

export interface TinyOptions {
  quantizeMode?: 'vq' | 'lfq'
  depths?: number
  tokenSize?: number
  numTokens?: number
  imageSize?: number
  twoStage?: boolean
}

export function tinyConfig(o: TinyOptions = {}): object {
  const lfq = (o.quantizeMode ?? 'lfq') === 'lfq'
  const vit = (prefix: string) => ({
    [`${prefix}_model_size`]: 'custom',
    [`${prefix}_width`]: 32,
    [`${prefix}_num_layers`]: 1,
    [`${prefix}_num_heads`]: 2,
    [`${prefix}_patch_size`]: 16,
  })
  return {
    model: {
      vq_model: {
        quantize_mode: lfq ? 'lfq' : 'vq',
        token_size: o.tokenSize ?? 6,
        ...(lfq ? { num_depths: o.depths ?? 3 } : { codebook_size: 256, use_l2_norm: false }),
        num_latent_tokens: o.numTokens ?? 4,
        ...vit('vit_enc'),
        ...vit('vit_dec'),
        is_legacy: !!o.twoStage,
        finetune_decoder: !!o.twoStage,
        ...(o.twoStage
          ? { pixel_decoder: { hidden_channels: 8, channel_mult: [1, 1, 2, 2, 4], num_res_blocks: 1, z_channels: 16, codebook_size: 1024, norm_num_groups: 8 } }
          : {}),
      },
    },
    dataset: { preprocessing: { crop_size: o.imageSize ?? 256 } },
  }
}

export async function tinyModel(o: TinyOptions = {}, seed = 1): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'marvel-model-'))
  await createRandomModel(dir, tinyConfig(o), seed)
  return dir
}
