/** Training configs: YAML as OmegaConf reads it, references, typed overrides, the loop's checks, the shipped configs. */
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { Trainer } from '../src/index.js'
import { checkNetworks, expectedRecipe, isLoopKey, loopSettings } from '../src/train/settings.js'
import { applyOverrides, loadTrainingConfig, readConfigFile, resolveReferences } from '../src/train/yaml-config.js'

const configs = join(import.meta.dirname, '..', 'configs')
let work: string

const REFERENCE_STYLE = `
experiment:
    name: "run1"
    output_dir: "out/\${experiment.name}"
    max_train_examples: 1_281_167
    save_every: 50_000
    resume: True
optimizer:
    params:
        learning_rate: 1e-4
lr_scheduler:
    params:
        learning_rate: \${optimizer.params.learning_rate}
        end_lr: 1e-5
training:
    per_gpu_batch_size: 32
    enable_tf32: yes
`

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'marvel-config-'))
  writeFileSync(join(work, 'ref.yaml'), REFERENCE_STYLE)
})

afterAll(() => rmSync(work, { recursive: true, force: true }))

const configError = (message: RegExp | string) => expect.objectContaining({ code: 'MARVEL_CONFIG', message: typeof message === 'string' ? expect.stringContaining(message) : expect.stringMatching(message) })

describe('YAML and references', () => {
  it('reads numbers, booleans and references as OmegaConf does', () => {
    const c = loadTrainingConfig(join(work, 'ref.yaml')) as any
    expect(c.experiment).toEqual({ name: 'run1', output_dir: 'out/run1', max_train_examples: 1281167, save_every: 50000, resume: true })
    expect(c.lr_scheduler.params).toEqual({ learning_rate: 1e-4, end_lr: 1e-5 })
    expect(c.training.enable_tf32).toBe(true)
  })

  it('resolves references after the overrides, keeping the referenced type', () => {
    const c = loadTrainingConfig(join(work, 'ref.yaml'), ['optimizer.params.learning_rate=3e-4', 'experiment.name=b7'], isLoopKey) as any
    expect(c.lr_scheduler.params.learning_rate).toBe(3e-4)
    expect(c.experiment.output_dir).toBe('out/b7')
  })

  it('refuses cycles, missing keys and resolvers, naming the key that holds the reference', () => {
    expect(() => resolveReferences({ a: { x: '${b.y}' }, b: { y: '${a.x}' } })).toThrow(configError(/cycle/))
    expect(() => resolveReferences({ a: { x: '${b.z}' } })).toThrow(configError('a.x: ${b.z} names no key of the config'))
    expect(() => resolveReferences({ a: '${oc.env:HOME}' })).toThrow(configError(/resolver/))
  })

  it('names the file in YAML syntax errors and missing files', () => {
    writeFileSync(join(work, 'bad.yaml'), 'a: [1, 2\nb: 3\n')
    expect(() => readConfigFile(join(work, 'bad.yaml'))).toThrow(configError(/bad\.yaml is not valid YAML/))
    expect(() => readConfigFile(join(work, 'none.yaml'))).toThrow(expect.objectContaining({ code: 'MARVEL_IO', message: expect.stringContaining('none.yaml: file not found') }))
  })
})

describe('overrides', () => {
  const base = () => readConfigFile(join(work, 'ref.yaml'))

  it('parse by the type of the value they replace', () => {
    const c = applyOverrides(base(), ['training.per_gpu_batch_size=8', 'experiment.resume=false', 'experiment.name=123', 'optimizer.params.learning_rate=2e-4'], isLoopKey) as any
    expect([c.training.per_gpu_batch_size, c.experiment.resume, c.experiment.name, c.optimizer.params.learning_rate]).toEqual([8, false, '123', 2e-4])
    // A key the config lacks but the loop or the core knows may be added.
    expect((applyOverrides(base(), ['experiment.keep=5', 'training.max_train_steps=9'], isLoopKey) as any).experiment.keep).toBe(5)
  })

  it('loadTrainingConfig adds loop and core keys the file lacks, and nothing else', () => {
    const c = loadTrainingConfig(join(configs, 'tiny.yaml'), ['experiment.generate_every=5', 'training.recipe=single']) as any
    expect([c.experiment.generate_every, c.training.recipe]).toEqual([5, 'single'])
    expect(() => loadTrainingConfig(join(configs, 'tiny.yaml'), ['experiment.generate_evry=5'])).toThrow(configError('unknown key experiment.generate_evry'))
  })

  it('refuse unknown keys and wrong types, naming the key', () => {
    expect(() => applyOverrides(base(), ['training.per_gpu_batch_size=eight'], isLoopKey)).toThrow(configError('training.per_gpu_batch_size is a number, got "eight"'))
    expect(() => applyOverrides(base(), ['experiment.resume=maybe'], isLoopKey)).toThrow(configError('experiment.resume is a boolean'))
    expect(() => applyOverrides(base(), ['experiment.save_evry=5'], isLoopKey)).toThrow(configError('unknown key experiment.save_evry'))
    expect(() => applyOverrides(base(), ['trainig.seed=1'], isLoopKey)).toThrow(configError('unknown key trainig.seed in override trainig.seed=1: the config has no section trainig'))
    expect(() => applyOverrides(base(), ['seed'], isLoopKey)).toThrow(configError('is not key=value'))
  })

  it('over a reference take the type their own text has in YAML', () => {
    const c = loadTrainingConfig(join(work, 'ref.yaml'), ['lr_scheduler.params.learning_rate=3e-4', 'experiment.output_dir=runs/x'], isLoopKey) as any
    expect(c.lr_scheduler.params.learning_rate).toBe(3e-4)
    expect(c.experiment.output_dir).toBe('runs/x')
    // A reference given on the command line is still one.
    expect((loadTrainingConfig(join(work, 'ref.yaml'), ['lr_scheduler.params.learning_rate=${lr_scheduler.params.end_lr}'], isLoopKey) as any).lr_scheduler.params.learning_rate).toBe(1e-5)
  })

  it('cannot reach Object.prototype: __proto__, constructor and prototype are refused', () => {
    for (const key of ['training.__proto__.polluted', '__proto__.polluted', 'training.constructor.prototype.polluted', 'training.constructor']) {
      expect(() => applyOverrides(base(), [`${key}=1`], () => true), key).toThrow(configError(/contains (__proto__|constructor), which no config key may be named/))
    }
    expect(({} as any).polluted).toBe(undefined)
    // Inherited names are not keys: `toString` is unknown, not Object.prototype's.
    expect(() => applyOverrides(base(), ['training.toString.x=1'], () => true)).toThrow(configError('the config has no section training.toString'))
  })
})

describe('the loop\'s settings', () => {
  const tiny = () => readConfigFile(join(configs, 'tiny.yaml'))

  it('reads the reference keys with defaults', () => {
    const s = loopSettings(resolveReferences(tiny()))
    expect(s).toMatchObject({ outputDir: 'runs/tiny', saveEvery: 100, evalEvery: 100, logEvery: 10, keep: 2, resume: false, initWeight: null, seed: 42, batchSize: 4, cropSize: 32, resizeShorterEdge: 32, numGeneratedImages: 4 })
  })

  it('refuses unknown loop keys with the nearest known one, and inconsistent sizes', () => {
    const c = tiny() as any
    c.experiment.eval_evry = 10
    expect(() => loopSettings(c)).toThrow(configError('unknown key experiment.eval_evry; did you mean eval_every?'))
    const d = tiny() as any
    d.dataset.preprocessing.resize_shorter_edge = 16
    expect(() => loopSettings(d)).toThrow(configError('resize_shorter_edge (16) is smaller than crop_size (32)'))
    const e = tiny() as any
    delete e.training.per_gpu_batch_size
    expect(() => loopSettings(e)).toThrow(configError('training.per_gpu_batch_size is required'))
  })

  it('checks the recipe\'s networks before a trainer is built', () => {
    const c = loadTrainingConfig(join(configs, 'marvel_l32_x2_stage1.yaml')) as any
    expect(() => checkNetworks(c)).toThrow(expect.objectContaining({ code: 'MARVEL_IO', message: expect.stringContaining('model.vq_model.pretrained_tokenizer_weight names pretrained/maskgit-vqgan-imagenet-f16-256.bin, which does not exist') }))
    delete c.model.vq_model.pretrained_tokenizer_weight
    expect(() => checkNetworks(c)).toThrow(configError('the stage-1 recipe needs model.vq_model.pretrained_tokenizer_weight'))
  })
})

describe('shipped configs', () => {
  const files = readdirSync(configs).filter((f) => f.endsWith('.yaml')).sort()

  it('are the built-in model, the MARVEL-L-32 x1/x2/x4 stages, single S-128 and tiny', () => {
    expect(files).toEqual([
      'builtin.yaml', 'marvel_l32_x1_stage1.yaml', 'marvel_l32_x1_stage2.yaml', 'marvel_l32_x2_stage1.yaml', 'marvel_l32_x2_stage2.yaml',
      'marvel_l32_x4_stage1.yaml', 'marvel_l32_x4_stage2.yaml', 'marvel_s128_single.yaml', 'tiny.yaml',
    ])
  })

  it.each(files)('%s: loads, passes the loop\'s checks, and every key is one the core knows', async (file) => {
    const c = loadTrainingConfig(join(configs, file)) as any
    loopSettings(c)
    const depth = /_x(\d)_/.exec(file)?.[1]
    if (depth) expect(c.model.vq_model.num_depths).toBe(Number(depth))
    expect(expectedRecipe(c)).toBe(file.includes('stage1') ? 'stage1' : file.includes('stage2') ? 'stage2' : 'single')
    // Tiny ViTs in place of the real ones: the core checks every key while building in milliseconds, then stops at
    // the first pretrained network file (which a checkout does not have) — or, needing none, builds the trainer.
    const small = applyOverrides(
      c,
      ['vit_enc_model_size=custom', 'vit_dec_model_size=custom', 'vit_enc_width=32', 'vit_dec_width=32', 'vit_enc_num_layers=1',
        'vit_dec_num_layers=1', 'vit_enc_num_heads=2', 'vit_dec_num_heads=2'].map((o) => `model.vq_model.${o}`),
      isLoopKey,
    )
    const created = Trainer.create(small, { seed: 1 })
    if (file.includes('stage')) {
      await expect(created).rejects.toMatchObject({ code: 'MARVEL_IO', message: expect.stringContaining('pretrained_tokenizer_weight names a file that does not exist') })
    } else {
      ;(await created).dispose()
    }
  })
})
