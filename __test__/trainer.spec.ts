import { execFileSync } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'

import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { MarvelError, Tokenizer, Trainer } from '../src/index.js'
import { images, tinyTrainingConfig } from './helpers/training.js'

const root = join(import.meta.dirname, '..')
const dist = join(root, 'dist', 'index.js')
const child = join(root, '__test__', 'helpers', 'trainer-resume.mjs')
let work: string

/** A 32x32 MARVEL model (8x8 patches, 4 tokens of 6 bits, 3 depths) under the `single` recipe. */
function newestMtime(path: string): number {
  const s = statSync(path)
  if (!s.isDirectory()) return s.mtimeMs
  return Math.max(0, ...readdirSync(path).map((f) => newestMtime(join(path, f))))
}

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'marvel-trainer-'))
  // The child process imports the built package.
  const stale = !existsSync(dist) || statSync(dist).mtimeMs < newestMtime(join(root, 'src'))
  if (stale) execFileSync('npx', ['tsup'], { cwd: root, stdio: 'pipe' })
})

afterAll(() => rmSync(work, { recursive: true, force: true }))

describe('Trainer', () => {
  it('steps, reports the loss and its parts, and the loss falls', async () => {
    const t = await Trainer.create(tinyTrainingConfig(), { seed: 1 })
    expect([t.recipe, t.imageSize, t.depth, t.startStep]).toEqual(['single', 32, 3, 0])
    const batch = images(2)
    const first = await t.step(batch)
    expect(first.step).toBe(1)
    expect(first.lr).toBe(0) // the reference's warm-up: the first update runs at lr(0) = 0
    expect(Object.keys(first.components)).toEqual(['reconstruction_loss', 'quantizer_loss', 'commitment_loss', 'entropy_loss', 'train_depths'])
    expect(first.loss).toBeCloseTo(first.components.reconstruction_loss + first.components.quantizer_loss, 5)
    expect(first.gradNorm).toBeGreaterThan(0)
    let last = first
    for (let i = 0; i < 40; i++) last = await t.step(batch)
    expect(last.step).toBe(41)
    expect(last.loss).toBeLessThan(first.loss / 2)
    t.dispose()
    await expect(t.step(batch)).rejects.toMatchObject({ code: 'MARVEL_INVALID_ARGUMENT', message: /disposed/ })
  })

  it('resumes in a fresh process bit for bit: 20 steps straight = 10 + save + resume + 10', async () => {
    const batch = images(2)
    const imagesPath = join(work, 'images.bin')
    writeFileSync(imagesPath, batch)
    const straight = await Trainer.create(tinyTrainingConfig(), { seed: 7 })
    const losses: number[] = []
    for (let i = 0; i < 20; i++) losses.push((await straight.step(batch)).loss)
    await straight.save(join(work, 'straight'), null)

    const first = await Trainer.create(tinyTrainingConfig(), { seed: 7 })
    for (let i = 0; i < 10; i++) expect((await first.step(batch)).loss).toBe(losses[i])
    const position = { epoch: 1, shard: 'train-00003.tar', index: 10 }
    await first.save(join(work, 'half'), position)
    first.dispose()

    const out = execFileSync(process.execPath, [child, pathToFileURL(dist).href, join(work, 'half'), '10', imagesPath, join(work, 'resumed')], { encoding: 'utf8' })
    const resumed = JSON.parse(out)
    expect(resumed.startStep).toBe(10)
    expect(resumed.dataPosition).toEqual(position)
    expect(resumed.losses).toEqual(losses.slice(10))
    for (const file of ['model.safetensors', 'ema.safetensors', 'optimizer.safetensors']) {
      const a = readFileSync(join(work, 'straight', file))
      const b = readFileSync(join(work, 'resumed', file))
      expect(a.equals(b), file).toBe(true)
    }
  })

  it('exports a model that Tokenizer.fromPretrained loads, encodes and decodes', async () => {
    const t = await Trainer.create(tinyTrainingConfig(), { seed: 2 })
    for (let i = 0; i < 3; i++) await t.step(images(2))
    for (const ema of [false, true]) {
      const dir = join(work, `export-${ema}`)
      await t.exportModel(dir, { ema })
      const tok = await Tokenizer.fromPretrained(dir)
      expect([tok.info.architecture, tok.info.depth, tok.info.imageSize]).toEqual(['marvel', 3, 32])
      const tokens = await tok.encode({ data: images(1), width: 32, height: 32 }, { resize: 'none' })
      const [img] = await tok.decode(tokens, { depth: 2 })
      expect(img.data.length).toBe(32 * 32 * 3)
      tok.dispose()
    }
    const recon = await t.reconstruct(images(2), { depth: 1 })
    expect(recon.length).toBe(2 * 32 * 32 * 3)
  })

  it('reconstructs through the EMA of the weights with { ema: true }, as the exported EMA model does, the weights untouched', async () => {
    const t = await Trainer.create(tinyTrainingConfig(), { seed: 2 })
    for (let i = 0; i < 3; i++) await t.step(images(2))
    const live = Buffer.from(await t.reconstruct(images(2)))
    const ema = Buffer.from(await t.reconstruct(images(2), { ema: true }))
    expect(ema.equals(live)).toBe(false)
    expect(Buffer.from(await t.reconstruct(images(2))).equals(live)).toBe(true)
    const dir = join(work, 'recon-ema')
    await t.exportModel(dir, { ema: true })
    const fromEma = await Trainer.create(tinyTrainingConfig(), { init: dir, seed: 2 })
    expect(Buffer.from(await fromEma.reconstruct(images(2))).equals(ema)).toBe(true)
    await expect(t.reconstruct(images(1), { ema: 1 as never })).rejects.toThrow(/expected ema to be a boolean/)
    const plain = await Trainer.create(tinyTrainingConfig({ use_ema: false }), { seed: 2 })
    await expect(plain.reconstruct(images(1), { ema: true })).rejects.toThrow(/training.use_ema is false/)
    for (const x of [t, fromEma, plain]) x.dispose()
  })

  it('keeps the event loop free during steps', async () => {
    const t = await Trainer.create(tinyTrainingConfig(), { seed: 3 })
    const batch = images(8)
    let ticks = 0
    const timer = setInterval(() => ticks++, 1)
    const started = performance.now()
    let calls = 0
    while (performance.now() - started < 400 || calls < 3) {
      await t.step(batch)
      calls++
    }
    const elapsed = performance.now() - started
    clearInterval(timer)
    expect(ticks).toBeGreaterThan(Math.min(20, elapsed / 10))
  })

  it('trains the stage-1 recipe on proxy codes given with the batch, and refuses a step without them', async () => {
    const config = tinyTrainingConfig()
    config.model.vq_model.is_legacy = true // the legacy 1024-logit head: stage 1
    const t = await Trainer.create(config, { seed: 2 })
    expect(t.recipe).toBe('stage1')
    // 32x32 images and 8x8 patches: a 4x4 grid, 16 MaskGIT codes per image.
    const codes = Int32Array.from({ length: 2 * 16 }, (_, i) => (i * 37) % 1024)
    const first = await t.step(images(2), { proxyCodes: codes })
    expect(first.step).toBe(1)
    expect(first.loss).toBeCloseTo(first.components.reconstruction_loss + first.components.quantizer_loss, 4)
    expect(first.components.reconstruction_loss).toBeGreaterThan(6) // cross-entropy over 1024 classes, ~ln 1024
    await expect(t.step(images(2))).rejects.toMatchObject({
      code: 'MARVEL_INVALID_ARGUMENT',
      message: expect.stringContaining('model.vq_model.pretrained_tokenizer_weight'),
    })
    t.dispose()
    const missing = join(work, 'maskgit-vqgan.bin')
    const withFile = { ...config, model: { vq_model: { ...config.model.vq_model, pretrained_tokenizer_weight: missing } } }
    await expect(Trainer.create(withFile, { seed: 2 })).rejects.toMatchObject({
      code: 'MARVEL_IO',
      message: expect.stringContaining(missing),
    })
  })

  it('refuses bad arguments and configs with coded errors', async () => {
    await expect(Trainer.create(null as unknown as object)).rejects.toMatchObject({ code: 'MARVEL_INVALID_ARGUMENT' })
    await expect(Trainer.create(tinyTrainingConfig(), { seed: -1 })).rejects.toThrow(/expected seed to be an integer/)
    await expect(Trainer.create(tinyTrainingConfig({ max_grad_nrom: 1 }))).rejects.toMatchObject({
      code: 'MARVEL_CONFIG',
      message: expect.stringContaining('unknown key training.max_grad_nrom; did you mean max_grad_norm?'),
    })
    await expect(Trainer.create(tinyTrainingConfig(), { init: join(work, 'missing') })).rejects.toMatchObject({ code: 'MARVEL_IO' })
    await expect(Trainer.resume(join(work, 'missing'))).rejects.toMatchObject({ code: 'MARVEL_IO' })
    const t = await Trainer.create(tinyTrainingConfig(), { seed: 0 })
    await expect(t.step(new Uint8Array(100))).rejects.toThrow(/expected images to be a Uint8Array of \[batch, 32, 32, 3\]/)
    await expect(t.step(images(1), { proxyCodes: new Int32Array(256) })).rejects.toMatchObject({ code: 'MARVEL_INVALID_ARGUMENT', message: /no proxy codes/ })
    await expect(t.reconstruct(images(1), { depth: 4 })).rejects.toThrow(/expected depth to be an integer from 1 to 3/)
    await expect(t.save(join(work, 'bad'), { f: () => 1, big: 10n })).rejects.toBeInstanceOf(MarvelError)
    await expect(t.exportModel(join(work, 'no-ema'), { ema: 'yes' as unknown as boolean })).rejects.toThrow(/expected ema to be a boolean/)
    t.dispose()
  })
})
