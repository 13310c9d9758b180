/** `marvel pretokenize`: MaskGIT-VQGAN codes stored beside each sample, split by rank, read by stage-1 training. */
import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { SampleStream } from '../src/data/stream.js'
import { TarReader } from '../src/data/tar.js'
import { MaskgitVqgan, prepareImage } from '../src/index.js'
import { hasParity, parityDir } from './helpers/fixtures.js'
import { cli, ensureBuilt, writeShards } from './helpers/shards.js'

const maskgit = join(parityDir, 'maskgit_vqgan')
let work: string

beforeAll(async () => {
  ensureBuilt()
  work = mkdtempSync(join(tmpdir(), 'marvel-pretok-'))
  await writeShards(join(work, 'shards'), 3, 2)
})

afterAll(() => rmSync(work, { recursive: true, force: true }))

function marvel(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [cli, ...args], { cwd: work, encoding: 'utf8', timeout: 120_000, env: { ...process.env, ...env } })
  return { code: r.status, stdout: r.stdout, stderr: r.stderr }
}

async function members(path: string): Promise<Map<string, Buffer>> {
  const tar = await TarReader.open(path)
  const out = new Map<string, Buffer>()
  for (let m = await tar.member(0); m !== null; m = await tar.member(m.next)) out.set(m.name, await tar.data(m))
  await tar.close()
  return out
}

const skip = hasParity ? '' : ' (skipped: no parity fixtures for the MaskGIT-VQGAN model)'

describe('marvel pretokenize', () => {
  it.skipIf(!hasParity)(`adds each image's centre-crop codes and keeps every member; ranks split the shards; reruns keep finished shards${skip}`, async () => {
    const pattern = join(work, 'shards', 'train-{0000..0002}.tar')
    const out = join(work, 'codes')
    const r1 = marvel(['pretokenize', '--maskgit', maskgit, pattern, '--out', out], { RANK: '1', WORLD_SIZE: '2' })
    expect([r1.code, r1.stdout], r1.stderr).toEqual([0, '1 shards, 2 samples given codes\n'])
    expect(readdirSync(out)).toEqual(['train-0001.tar'])
    const r0 = marvel(['pretokenize', '--maskgit', maskgit, pattern, '--out', out, '--rank', '0', '--world-size', '2'])
    expect(r0.stdout).toBe('2 shards, 4 samples given codes\n')
    expect(marvel(['pretokenize', '--maskgit', maskgit, pattern, '--out', out]).stdout).toBe('3 shards (3 already there), 0 samples given codes\n')

    const before = await members(join(work, 'shards', 'train-0001.tar'))
    const after = await members(join(out, 'train-0001.tar'))
    expect([...after.keys()]).toEqual(['s00002.png', 's00002.cls', 's00002.codes', 's00003.png', 's00003.cls', 's00003.codes'])
    for (const [name, data] of before) expect(after.get(name)!.equals(data), name).toBe(true)
    const vq = await MaskgitVqgan.fromPretrained(maskgit)
    const expected = await vq.encode(await prepareImage(before.get('s00002.png')!, { size: 256 }), { resize: 'none' })
    vq.dispose()
    const stored = after.get('s00002.codes')!
    expect(Array.from(new Int32Array(stored.buffer, stored.byteOffset, stored.length / 4))).toEqual(Array.from(expected))

    // The stream hands them on with the sample.
    const stream = await SampleStream.open({ kind: 'shards', units: [join(out, 'train-0001.tar')] }, { seed: 0, bufferSize: 0, ordered: true })
    expect(Array.from((await stream.next()).codes!)).toEqual(Array.from(expected))
    await stream.close()
  })

  it.skipIf(!hasParity)(`stage 1 trains on pretokenized shards without the MaskGIT-VQGAN; with random crops it asks for it${skip}`, () => {
    const config = {
      experiment: { output_dir: join(work, 'stage1'), eval_every: 0, log_every: 1 },
      model: {
        vq_model: {
          quantize_mode: 'lfq', token_size: 6, num_depths: 2, num_latent_tokens: 4, is_legacy: true, finetune_decoder: false,
          vit_enc_model_size: 'custom', vit_enc_width: 32, vit_enc_num_layers: 1, vit_enc_num_heads: 2,
          vit_dec_model_size: 'custom', vit_dec_width: 32, vit_dec_num_layers: 1, vit_dec_num_heads: 2,
          vit_enc_patch_size: 16, vit_dec_patch_size: 16,
        },
      },
      losses: { quantizer_weight: 1.0 },
      dataset: {
        params: { train_shards_path_or_url: join(work, 'codes'), shuffle_buffer_size: 0 },
        preprocessing: { resize_shorter_edge: 256, crop_size: 256, random_crop: false, random_flip: false },
      },
      optimizer: { name: 'adamw', params: { learning_rate: 1e-3 } },
      lr_scheduler: { scheduler: 'cosine', params: { learning_rate: 1e-3, warmup_steps: 1 } },
      training: { per_gpu_batch_size: 2, max_train_steps: 2 },
    }
    // JSON is YAML.
    writeFileSync(join(work, 'stage1.yaml'), JSON.stringify(config))
    const r = marvel(['train', `config=${join(work, 'stage1.yaml')}`])
    expect(r.code, r.stderr).toBe(0)
    const lines = readFileSync(join(work, 'stage1', 'logs', 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l))
    expect(lines.map((l) => l.step)).toEqual([1, 2])
    // Cross-entropy over the 1024 MaskGIT codes.
    expect(lines[0].components.reconstruction_loss).toBeGreaterThan(5)
    const random = marvel(['train', `config=${join(work, 'stage1.yaml')}`, 'dataset.preprocessing.random_crop=true', `experiment.output_dir=${join(work, 'stage1-random')}`])
    expect(random.code).toBe(1)
    expect(random.stderr).toContain('the stage-1 recipe needs model.vq_model.pretrained_tokenizer_weight')
  })
})
