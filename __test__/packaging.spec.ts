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

const PROGRAM = `
import { matmul, nativeVersion } from 'marvel-tokenizer'
const c = await matmul({ data: new Float32Array([1, 2, 3, 4]), shape: [2, 2] }, { data: new Float32Array([5, 6, 7, 8]), shape: [2, 2] })
console.log(JSON.stringify({ version: nativeVersion(), shape: c.shape, data: Array.from(c.data) }))
`
const PROGRAM_CJS = `
const { matmul } = require('marvel-tokenizer')
matmul({ data: new Float32Array([2]), shape: [1, 1] }, { data: new Float32Array([21]), shape: [1, 1] }).then((c) => console.log(c.data[0]))
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
    expect(manifest.engines.node).toBe('>=20')
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
    expect(out.shape).toEqual([2, 2])
    expect(out.data).toEqual([19, 22, 43, 50])
    const cjs = spawnSync(process.execPath, ['main.cjs'], { cwd: app, env, encoding: 'utf8' })
    expect(cjs.stderr).toBe('')
    expect(cjs.stdout.trim()).toBe('42')
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

describe('the lockfile installs on the Node the README promises (>= 20) without EBADENGINE', () => {
  // The oldest line the README promises, at its current release (engines ranges such as ^20.17.0 accept it).
  const NODE_20 = '20.20.2'

  it(`every locked package's engines.node accepts Node ${NODE_20}`, () => {
    const semver = createRequire(join(root, 'node_modules', '@napi-rs', 'cli', 'package.json'))('semver') as {
      satisfies(version: string, range: string): boolean
    }
    const lock = JSON.parse(readFileSync(join(root, 'package-lock.json'), 'utf8')) as {
      packages: Record<string, { version?: string; engines?: { node?: string } | string[] }>
    }
    const refused = Object.entries(lock.packages)
      .filter(([path, p]) => path !== '' && p.engines && !Array.isArray(p.engines) && p.engines.node)
      .filter(([, p]) => !semver.satisfies(NODE_20, (p.engines as { node: string }).node))
      .map(([path, p]) => `${path.replace(/^.*node_modules\//, '')}@${p.version} (${(p.engines as { node: string }).node})`)
    expect(refused).toEqual([])
  })
})
