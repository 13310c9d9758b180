// Child process of __test__/fuzz.spec.ts. Feeds the mutated inputs of one class through marvel's public API and
// writes one JSON line per input to stdout with writeSync, which is synchronous: when the process dies, the
// parent has every line up to the input that killed it.
import { copyFileSync, mkdtempSync, rmSync, writeFileSync, writeSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { binBytes, mutateInput, readSeeds } from './fuzz-mutate.mjs'

const job = JSON.parse(process.argv[2])
const { MarvelError, Tokenizer, Tokens } = await import(job.dist)
const seeds = await readSeeds(job.seedDir)
const probe = seeds.images[0]
const modelDir = join(job.seedDir, 'model')
const work = mkdtempSync(join(tmpdir(), `marvel-fuzz-${job.klass}-`))
const line = (o) => writeSync(1, JSON.stringify(o) + '\n')

/** Loads a model folder, encodes and decodes one image with it, frees it. */
async function loadAndRun(dir) {
  const tok = await Tokenizer.fromPretrained(dir)
  try {
    await tok.decode(await tok.encode(Buffer.from(probe)))
  } finally {
    tok.dispose()
  }
}

const shared = job.klass === 'image' || job.klass === 'tokens' ? await Tokenizer.fromPretrained(modelDir) : undefined
// The file under test goes into `work`; the rest of the model folder is the valid seed.
if (job.klass === 'config') copyFileSync(join(modelDir, 'model.safetensors'), join(work, 'model.safetensors'))
if (job.klass !== 'config') copyFileSync(join(modelDir, 'config.json'), join(work, 'config.json'))

async function feed(input) {
  switch (job.klass) {
    case 'image':
      await shared.encode(Buffer.from(input))
      return
    case 'tokens':
      await shared.decode(Tokens.fromBytes(input))
      return
    case 'config':
      writeFileSync(join(work, 'config.json'), input)
      return loadAndRun(work)
    case 'safetensors':
      writeFileSync(join(work, 'model.safetensors'), input)
      return loadAndRun(work)
    case 'bin':
      writeFileSync(join(work, 'pytorch_model.bin'), input)
      return loadAndRun(work)
  }
}

const seedInput = {
  config: seeds.config,
  safetensors: seeds.safetensors,
  bin: binBytes(seeds.bin),
  image: probe,
  tokens: seeds.tokens,
}
// Index -1 is the unmutated seed, which must pass: fuzzing starts from valid inputs. After a crash the parent
// starts a new worker at the next input (`from`).
const indices = [-1, ...(job.only ?? Array.from({ length: job.count }, (_, i) => i))].filter((i) => i >= job.from)
for (const i of indices) {
  const input = i < 0 ? seedInput[job.klass] : mutateInput(job.klass, seeds, job.seed, i)
  line({ start: i })
  const t0 = performance.now()
  let outcome = 'ok'
  let message
  try {
    await feed(input)
  } catch (e) {
    outcome = e instanceof MarvelError ? e.code : 'uncoded'
    message = String(e?.message ?? e).slice(0, 300)
    if (outcome === 'uncoded') message = `${e?.constructor?.name}: ${message}`
  }
  line({ i, outcome, ms: Math.round(performance.now() - t0), message })
}
shared?.dispose()
rmSync(work, { recursive: true, force: true })
