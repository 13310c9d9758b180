/**
 * The `device` option on a CPU-only addon (what CI builds): names are validated before anything is read, CUDA is
 * refused with MARVEL_CUDA_UNAVAILABLE naming the missing build (from TS and, behind it, from the core), the CPU
 * keeps working, and NCCL data parallelism says the same. The GPU side is checked by bench/gpu on a GPU machine.
 */
import { spawnSync } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { beforeAll, describe, expect, it } from 'vitest'

import { native } from '../src/binding.js'
import { deviceParameter } from '../src/device.js'
import { Tokenizer, Trainer } from '../src/index.js'
import { joinDevices, pinLocalGpu } from '../src/train/data-parallel.js'
import { failure } from './helpers/errors.js'
import { tinyModel } from './helpers/models.js'
import { tinyTrainingConfig } from './helpers/training.js'


const cpuOnly = !native().cudaBuilt()

let dir: string
beforeAll(async () => {
  dir = await tinyModel({ quantizeMode: 'lfq', depths: 2, tokenSize: 6 })
})

describe('device names', () => {
  it('accepts cpu, cuda and cuda:N and refuses everything else by name', () => {
    expect(deviceParameter('f', undefined)).toBe('cpu')
    for (const ok of ['cpu', 'cuda', 'cuda:0', 'cuda:7', 'cuda:1023']) expect(deviceParameter('f', ok)).toBe(ok)
    for (const bad of ['gpu', 'CPU', 'cuda:', 'cuda:-1', 'cuda:01', 'cuda:1.5', ' cuda', 'cuda:0 ', 'cuda:99999', 3, null, {}]) {
      expect(() => deviceParameter('f', bad)).toThrow(/f: expected device to be 'cpu', 'cuda' or 'cuda:N'/)
    }
  })
})

describe.runIf(cpuOnly)('on an addon built without CUDA', () => {
  it('Tokenizer.fromPretrained refuses cuda with a coded error and keeps cpu working', async () => {
    await failure(Tokenizer.fromPretrained(dir, { device: 'cuda' }), 'MARVEL_CUDA_UNAVAILABLE', /device 'cuda' requested, but this marvel binary was built without CUDA/)
    await failure(Tokenizer.fromPretrained(dir, { device: 'gpu' as never }), 'MARVEL_INVALID_ARGUMENT', /fromPretrained: expected device/)
    const tok = await Tokenizer.fromPretrained(dir, { device: 'cpu' })
    expect(tok.info.depth).toBe(2)
    tok.dispose()
  })

  it('the core refuses cuda itself, whatever the caller checked', async () => {
    await failure(native().loadTokenizer(dir, 'cuda:1'), 'MARVEL_CUDA_UNAVAILABLE', /"cuda:1" requested, but this marvel binary was built without CUDA/)
    // A malformed name is refused on the calling thread, before any task starts.
    await failure(() => native().loadTokenizer(dir, 'cuda:x'), 'MARVEL_INVALID_ARGUMENT', /device must be "cpu", "cuda" or "cuda:N", got "cuda:x"/)
  })

  it('Trainer.create takes the option or training.device, and refuses cuda', async () => {
    await failure(Trainer.create(tinyTrainingConfig(), { device: 'cuda:0' }), 'MARVEL_CUDA_UNAVAILABLE', /Trainer.create: device 'cuda:0'/)
    await failure(Trainer.create(tinyTrainingConfig({ device: 'cuda' })), 'MARVEL_CUDA_UNAVAILABLE', /built without CUDA/)
    await failure(Trainer.create(tinyTrainingConfig({ device: 'tpu' })), 'MARVEL_INVALID_ARGUMENT', /expected device/)
    const t = await Trainer.create(tinyTrainingConfig({ device: 'cpu' }), { seed: 1 })
    expect(t.device).toBe('cpu')
    t.dispose()
    const plain = await Trainer.create(tinyTrainingConfig(), { seed: 1 })
    expect(plain.device).toBe('cpu')
    // A CPU trainer never joins NCCL, even with a group: the host collective stays in charge.
    await joinDevices(plain, null)
    await failure(plain.joinNccl('zz', 0, 2), 'MARVEL_INVALID_ARGUMENT', /joinNccl: expected id/)
    await failure(plain.joinNccl('0'.repeat(256), 0, 2), 'MARVEL_CUDA_UNAVAILABLE', /built without NCCL/)
    plain.dispose()
  })

  it('names a CUDA addon that could not load (no driver) instead of blaming the CPU addon that did', () => {
    // A CUDA addon on a machine without the driver fails to load (libcuda.so.1 missing) and the CPU addon loads
    // instead; an unloadable file stands in for it here.
    const bad = join(mkdtempSync(join(tmpdir(), 'marvel-device-')), 'marvel.cuda.node')
    writeFileSync(bad, 'not an ELF file')
    const script = `import('./dist/index.js').then((m) => m.Tokenizer.fromPretrained(${JSON.stringify(dir)}, { device: 'cuda' })).catch((e) => console.log(e.code + ' ' + e.message))`
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { env: { ...process.env, MARVEL_NATIVE_PATH: bad }, encoding: 'utf8' })
    expect(r.stdout).toMatch(/^MARVEL_CUDA_UNAVAILABLE fromPretrained: device 'cuda' requested, but this marvel binary was built without CUDA; passed over: \$MARVEL_NATIVE_PATH: \S+marvel\.cuda\.node failed to load/)
  })

  it('NCCL ids need an NCCL build', () => {
    expect(native().ncclBuilt()).toBe(false)
    return failure(() => Trainer.ncclId(), 'MARVEL_CUDA_UNAVAILABLE', /built without NCCL/)
  })
})

describe('one GPU per rank', () => {
  const ranks = (rank: number, worldSize: number) => ({ rank, worldSize })
  it('maps each rank to the LOCAL_RANK-th visible GPU, and leaves CPU and single-rank runs alone', () => {
    const env: NodeJS.ProcessEnv = { LOCAL_RANK: '1', CUDA_VISIBLE_DEVICES: '4,5,6' }
    pinLocalGpu(ranks(1, 3), 'cuda', env)
    expect(env.CUDA_VISIBLE_DEVICES).toBe('5')
    const bare: NodeJS.ProcessEnv = { LOCAL_RANK: '2' }
    pinLocalGpu(ranks(2, 4), 'cuda', bare)
    expect(bare.CUDA_VISIBLE_DEVICES).toBe('2')
    const untouched: NodeJS.ProcessEnv = { LOCAL_RANK: '1' }
    pinLocalGpu(ranks(1, 2), 'cpu', untouched)
    pinLocalGpu(ranks(0, 1), 'cuda', untouched)
    expect(untouched.CUDA_VISIBLE_DEVICES).toBeUndefined()
    expect(() => pinLocalGpu(ranks(0, 2), 'cuda:3', {})).toThrow(/a run of 2 ranks takes 'cuda'/)
  })
  it('refuses a rank without a GPU of its own instead of sharing one', () =>
    failure(() => pinLocalGpu(ranks(2, 3), 'cuda', { LOCAL_RANK: '2', CUDA_VISIBLE_DEVICES: '0,1' }), 'MARVEL_CONFIG', /rank 2 has no GPU of its own: CUDA_VISIBLE_DEVICES lists 2/))
})
