// One step of bench/memory.sh, run in a process of its own (bench/memory.sh measures its peak RSS from outside
// with /usr/bin/time). Uses the built package (dist/ + the native addon), as an application would.
//
//   node bench/memory.mjs create <dir>          write an L-32-size random model (createRandomModel)
//   node bench/memory.mjs baseline              import the package and load the addon, nothing else
//   node bench/memory.mjs load <dir>            Tokenizer.fromPretrained
//   node bench/memory.mjs inspect <dir>         Tokenizer.inspect (config.json + weights header, what `marvel info` uses)
//   node bench/memory.mjs convert <src> <dst>   marvelFromTitok
//   node bench/memory.mjs reload <dir>          load, dispose, three times; prints the resident MB after each
import { readFileSync } from 'node:fs'

import { createRandomModel, marvelFromTitok, Tokenizer } from '../dist/index.js'

/** TiTok-L-32's sizes (the released `tokenizer_titok_l32_imagenet` config): ViT-L encoder and decoder, 32 tokens,
 * VQ 4096 x 12, legacy head and the released MaskGIT pixel decoder (the default when `pixel_decoder` is absent). */
const L32 = {
  model: {
    vq_model: {
      codebook_size: 4096,
      token_size: 12,
      use_l2_norm: true,
      commitment_cost: 0.25,
      vit_enc_model_size: 'large',
      vit_dec_model_size: 'large',
      vit_enc_patch_size: 16,
      vit_dec_patch_size: 16,
      num_latent_tokens: 32,
      finetune_decoder: true,
      is_legacy: true,
    },
  },
  dataset: { preprocessing: { crop_size: 256 } },
}

function residentMB() {
  const kb = /VmRSS:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1]
  return Math.round(Number(kb) / 1024)
}

const [step, a, b] = process.argv.slice(2)
switch (step) {
  case 'create':
    await createRandomModel(a, L32, 1)
    break
  case 'baseline':
    break
  case 'load': {
    const tok = await Tokenizer.fromPretrained(a)
    console.log(JSON.stringify({ parameters: tok.info.parameters }))
    tok.dispose()
    break
  }
  case 'inspect': {
    const info = await Tokenizer.inspect(a)
    console.log(JSON.stringify({ parameters: info.parameters }))
    break
  }
  case 'convert':
    await marvelFromTitok(a, b, { depth: 4 })
    break
  case 'reload': {
    const after = []
    for (let i = 0; i < 3; i++) {
      const tok = await Tokenizer.fromPretrained(a)
      const loaded = residentMB()
      tok.dispose()
      after.push({ loaded, disposed: residentMB() })
    }
    console.log(JSON.stringify(after))
    break
  }
  default:
    console.error(`unknown step ${step}`)
    process.exit(2)
}
