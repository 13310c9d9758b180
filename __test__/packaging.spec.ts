/**
 * "npm install of a prebuilt binary needs no Rust toolchain", shown without a registry: pack the root package and
 * this platform's package (holding the built .node) with scripts/pack.mjs (what `npm run pack:local` runs and the
 * README's install-from-tarballs steps use), install both tarballs into an empty project with no cargo or rustc
 * on PATH, and call into the addon from there.
 */
import { execFileSync, spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { delimiter, join, resolve } from 'node:path'

import { beforeAll, describe, expect, it } from 'vitest'

import { platformName } from '../src/binding.js'

const root = resolve(__dirname, '..')
const platform = platformName()
const binary = join(root, `marvel.${platform}.node`)
const platformDir = join(root, 'npm', platform)
const ready = existsSync(binary) && existsSync(platformDir) && existsSync(join(root, 'dist', 'index.js'))
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm'

/** PATH without any folder that holds cargo or rustc. */
function pathWithoutRust(): string {
  return (process.env.PATH ?? '')
    .split(delimiter)
    .filter((d) => d && !existsSync(join(d, 'cargo')) && !existsSync(join(d, 'rustc')))
    .join(delimiter)
}


function install(app: string, tarballs: string[]): void {
  mkdirSync(app, { recursive: true })
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }))
  execFileSync(npm, ['install', '--no-audit', '--no-fund', '--prefer-offline', ...tarballs], {
    cwd: app,
    env: { ...process.env, PATH: pathWithoutRust() },
    stdio: 'pipe',
  })
}

// Two latents of 2 channels, 2 depths: depth 0 takes the signs (+, -) = token 1 and codes (1, -1); the residual
// (-1/2, +1/2) gives token 2 and codes (-1/2, 1/2) at depth 1, so the sum is z again.
const PROGRAM = `
import { lfqQuantize } from 'marvel-tokenizer'
const q = await lfqQuantize({ data: new Float32Array([0.5, -0.5, 0.5, -0.5]), shape: [1, 2, 2] }, { depth: 2 })
console.log(JSON.stringify({ shape: q.tokens.shape, tokens: Array.from(q.tokens.data), codes: Array.from(q.codes.data) }))
`
const PROGRAM_CJS = `
const { lfqQuantize } = require('marvel-tokenizer')
lfqQuantize({ data: new Float32Array([1, 1, -1, 1, -1, 1]), shape: [1, 1, 6] }, { depth: 1 }).then((q) => console.log(q.tokens.data[0]))
`

describe.skipIf(!ready)(`packaging (skipped when the addon for ${platform} or dist/ is not built)`, () => {
  let work: string
  let rootTgz: string
  let platformTgz: string

  beforeAll(() => {
    work = mkdtempSync(join(tmpdir(), 'marvel-pack-'))
    const out = execFileSync(process.execPath, [join(root, 'scripts', 'pack.mjs'), '--out', work, '--json'], { encoding: 'utf8' })
    const packed = JSON.parse(out)
    expect(packed.platformPackage).toBe(`marvel-tokenizer-${platform}`)
    rootTgz = packed.root
    platformTgz = packed.platform
  })

  it('the packed root package is what the README promises: no optionalDependencies pointing at unpublished packages', () => {
    const manifest = JSON.parse(execFileSync('tar', ['-xzOf', rootTgz, 'package/package.json'], { encoding: 'utf8' }))
    // Set at publish time by `napi pre-publish` (prepublishOnly); a local tarball installs its platform package beside it.
    expect(manifest.optionalDependencies).toBeUndefined()
    expect(manifest.scripts.prepublishOnly).toBe('napi pre-publish -t npm')
    expect(manifest.engines.node).toBe(JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).engines.node)
    const platformManifest = JSON.parse(execFileSync('tar', ['-xzOf', platformTgz, 'package/package.json'], { encoding: 'utf8' }))
    expect(platformManifest.version).toBe(JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version)
  })

  it('the tarballs hold the built code and the binary, and nothing from the source tree', () => {
    const list = (tgz: string) => execFileSync('tar', ['-tzf', tgz], { encoding: 'utf8' }).split('\n').filter(Boolean)
    const rootFiles = list(rootTgz)
    expect(rootFiles).toContain('package/dist/index.js')
    expect(rootFiles).toContain('package/dist/index.cjs')
    expect(rootFiles).toContain('package/dist/index.d.ts')
    expect(rootFiles.some((f) => f.endsWith('.node') || f.startsWith('package/crates/') || f.startsWith('package/src/'))).toBe(false)
    expect(list(platformTgz)).toEqual(expect.arrayContaining([`package/marvel.${platform}.node`, 'package/package.json']))
  })

  it('installs into an empty project without a Rust toolchain and computes the right answer (ESM and CJS)', () => {
    const app = join(work, 'app')
    install(app, [rootTgz, platformTgz])
    expect(readdirSync(join(app, 'node_modules'))).toEqual(expect.arrayContaining(['marvel-tokenizer', `marvel-tokenizer-${platform}`]))
    writeFileSync(join(app, 'main.mjs'), PROGRAM)
    writeFileSync(join(app, 'main.cjs'), PROGRAM_CJS)
    const env = { ...process.env, PATH: pathWithoutRust() }
    const esm = spawnSync(process.execPath, ['main.mjs'], { cwd: app, env, encoding: 'utf8' })
    expect(esm.stderr).toBe('')
    const out = JSON.parse(esm.stdout)
    expect(out.shape).toEqual({ batch: 1, depth: 2, numTokens: 2 })
    expect(out.tokens).toEqual([1, 1, 2, 2])
    expect(out.codes).toEqual([0.5, -0.5, 0.5, -0.5])
    const cjs = spawnSync(process.execPath, ['main.cjs'], { cwd: app, env, encoding: 'utf8' })
    expect(cjs.stderr).toBe('')
    // Positive channels 0, 1, 3, 5: bits 1 + 2 + 8 + 32.
    expect(cjs.stdout.trim()).toBe('43')
  })

  it('without the platform package the loader fails with a message naming the platform', () => {
    const app = join(work, 'app-no-binary')
    install(app, [rootTgz])
    writeFileSync(join(app, 'main.mjs'), PROGRAM)
    const run = spawnSync(process.execPath, ['main.mjs'], { cwd: app, env: { ...process.env, PATH: pathWithoutRust() }, encoding: 'utf8' })
    expect(run.status).not.toBe(0)
    expect(run.stderr).toContain(`marvel has no native binary for platform ${platform}`)
    expect(run.stderr).toContain(`marvel-tokenizer-${platform}`)
    expect(run.stderr).toContain('MARVEL_NATIVE_BINDING')
  })
})

describe('engines.node is what the lockfile installs on, without EBADENGINE', () => {
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { engines: { node: string }; napi: { targets: string[] } }
  const semver = createRequire(join(root, 'node_modules', '@napi-rs', 'cli', 'package.json'))('semver') as {
    satisfies(version: string, range: string): boolean
    minVersion(range: string): { version: string } | null
    Range: new (range: string) => { set: Array<Array<{ value: string }>> }
  }
  const lock = JSON.parse(readFileSync(join(root, 'package-lock.json'), 'utf8')) as {
    packages: Record<string, { version?: string; engines?: { node?: string } | string[]; os?: string[]; cpu?: string[] }>
  }
  // The (os, cpu) pairs marvel ships for: a locked package limited to other platforms (sharp's win32-ia32 build, the
  // wasm32 fallbacks) is never installed with marvel, so its engines range does not bind.
  const platforms = pkg.napi.targets.map((t) => {
    const [arch, , os] = t.split('-')
    return { os: os === 'windows' ? 'win32' : os, cpu: arch === 'x86_64' ? 'x64' : arch === 'aarch64' ? 'arm64' : arch }
  })
  const installable = (p: { os?: string[]; cpu?: string[] }) =>
    platforms.some(({ os, cpu }) => (!p.os || p.os.includes(os)) && (!p.cpu || p.cpu.includes(cpu)))
  const locked = Object.entries(lock.packages)
    .filter(([path, p]) => path !== '' && p.engines && !Array.isArray(p.engines) && p.engines.node && installable(p))
    .map(([path, p]) => ({ name: `${path.replace(/^.*node_modules\//, '')}@${p.version}`, range: (p.engines as { node: string }).node }))
  // The lowest release of each line the field allows (for "^20.19.0 || ^22.13.0 || >=24.0.0": 20.19.0, 22.13.0, 24.0.0).
  const lowest = new semver.Range(pkg.engines.node).set.map((comparators) => semver.minVersion(comparators.map((c) => c.value).join(' '))!.version)

  it(`the lowest Node of each line engines.node allows (${lowest.join(', ')}) satisfies every locked engines range`, () => {
    expect(locked.length).toBeGreaterThan(50)
    expect(lowest.length).toBeGreaterThan(0)
    const refused = lowest.flatMap((version) => locked.filter((p) => !semver.satisfies(version, p.range)).map((p) => `Node ${version}: ${p.name} (${p.range})`))
    expect(refused).toEqual([])
  })

  it('the platform packages, the README and .ci/run promise the same Node', () => {
    for (const dir of readdirSync(join(root, 'npm'))) {
      expect(JSON.parse(readFileSync(join(root, 'npm', dir, 'package.json'), 'utf8')).engines.node, dir).toBe(pkg.engines.node)
    }
    const readme = readFileSync(join(root, 'README.md'), 'utf8')
    expect(readme).toContain(`Node ${pkg.engines.node}`)
    expect(readme).not.toMatch(/Node ≥ 20\b|Node >= ?20\b/)
    const ci = readFileSync(join(root, '.ci', 'run'), 'utf8')
    // .ci/run reads the range from package.json rather than repeating it.
    expect(ci).toContain('require("./package.json").engines.node')
    expect(ci).not.toMatch(/maj < 20/)
  })
})
