#!/usr/bin/env node
// Packs what `npm install` needs on this machine without a registry: the root package (dist/, README) and this
// platform's binary package (npm/<platform>/ plus the built marvel.<platform>.node), as two tarballs.
//
//   npm run pack:local                      # builds, then packs into ./packed/
//   node scripts/pack.mjs --out <dir> [--json]
//
// Install both in another project with `npm install <dir>/marvel-tokenizer-<v>.tgz <dir>/marvel-tokenizer-<platform>-<v>.tgz`.
// The platform package is chosen by the os / cpu / libc fields of npm/*/package.json, the same fields npm uses to
// pick the optional dependency on install, so this script and npm agree on what "this platform" is.
import { execFileSync } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm'

function fail(message) {
  console.error(`pack: ${message}`)
  process.exit(1)
}

function libc() {
  if (process.platform !== 'linux') return undefined
  return process.report?.getReport()?.header?.glibcVersionRuntime ? 'glibc' : 'musl'
}

/** The npm/<name> folder whose package.json accepts this os, cpu and libc. */
function hostPackage() {
  const dirs = readdirSync(join(root, 'npm'), { withFileTypes: true }).filter((d) => d.isDirectory())
  for (const d of dirs) {
    const pkg = JSON.parse(readFileSync(join(root, 'npm', d.name, 'package.json'), 'utf8'))
    const fits = (list, value) => !list || list.includes(value)
    if (fits(pkg.os, process.platform) && fits(pkg.cpu, process.arch) && fits(pkg.libc, libc())) return { dir: join(root, 'npm', d.name), pkg }
  }
  fail(`no folder in npm/ is for ${process.platform}-${process.arch}${libc() ? ` (${libc()})` : ''}; there is no prebuilt package for this platform`)
}

function pack(dir, dest) {
  // --ignore-scripts: `prepare` would rebuild; the caller builds first (npm run pack:local does).
  const out = execFileSync(npm, ['pack', '--ignore-scripts', '--json', '--pack-destination', dest], { cwd: dir, encoding: 'utf8' })
  return join(dest, JSON.parse(out)[0].filename)
}

const args = process.argv.slice(2)
const at = args.indexOf('--out')
if (at >= 0 && !args[at + 1]) fail('--out needs a folder')
const dest = resolve(at >= 0 ? args[at + 1] : join(root, 'packed'))
const json = args.includes('--json')

const host = hostPackage()
const binary = join(root, host.pkg.main)
if (!existsSync(join(root, 'dist', 'index.js'))) fail('dist/ is not built: run `npm run build` first (or `npm run pack:local`)')
if (!existsSync(binary)) fail(`${host.pkg.main} is not built: run \`npm run build\` first (or \`npm run pack:local\`)`)
const rootPkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
if (host.pkg.version !== rootPkg.version) fail(`npm/${host.pkg.name} is version ${host.pkg.version} but the root package is ${rootPkg.version}`)

mkdirSync(dest, { recursive: true })
const stage = mkdtempSync(join(tmpdir(), 'marvel-pack-'))
try {
  cpSync(host.dir, stage, { recursive: true })
  cpSync(binary, join(stage, host.pkg.main))
  const tarballs = { root: pack(root, dest), platform: pack(stage, dest), platformPackage: host.pkg.name }
  if (json) {
    console.log(JSON.stringify(tarballs))
  } else {
    console.log(`packed ${tarballs.root}\npacked ${tarballs.platform}\n\ninstall both in a project with:\n  npm install ${tarballs.root} ${tarballs.platform}`)
  }
} finally {
  rmSync(stage, { recursive: true, force: true })
}
