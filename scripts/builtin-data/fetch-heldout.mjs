// The built-in model's held-out evaluation set, never trained on: the colour photographs shipped by scikit-image
// and scikit-learn (PyPI wheels, downloaded with `pip download --no-deps` and unzipped; nothing installed) and by
// the Debian package opencv-doc (apt-get download + dpkg-deb -x). scripts/builtin-data/heldout-photos.tsv decides
// file by file, with the reason and the licence.
//
//   node scripts/builtin-data/fetch-heldout.mjs [--out data/heldout]
//
// Writes, under --out (gitignored): images/<origin>-<name>.png (the whole photograph as RGB PNG, lossless: the
// evaluator applies the evaluation geometry, shorter side 256 and a centre crop), manifest.json (origin, version,
// path, licence, size, sha256 of the original file) and licenses/ (the packages' licence files).

import { createHash } from 'node:crypto'
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { basename, join, resolve } from 'node:path'

import sharp from 'sharp'

import { debianPackage, globRegExp, imagesUnder, licenseOf, parseCopyright, pypiWheel, readPhotoList } from './sources.mjs'

const WHEELS = [
  { name: 'scikit-image', version: '0.25.2', licenseFiles: ['scikit_image-0.25.2.dist-info/LICENSE.txt', 'skimage/data/_fetchers.py'] },
  { name: 'scikit-learn', version: '1.7.2', licenseFiles: ['scikit_learn-1.7.2.dist-info/licenses/COPYING', 'sklearn/datasets/images/README.txt'] },
]
const DEBIAN = ['opencv-doc']
const MIN_SIDE = 256
/**
 * Mean |R-G| + |G-B| (0..510) of a 64x64 thumbnail below which an RGB file is a greyscale picture in three channels:
 * those measure 0 (opencv's left01.jpg, scikit-image's camera.png), while the least colourful kept photograph, the
 * mostly black Hubble deep field, measures 5.
 */
const MIN_CHROMA = 2
const here = import.meta.dirname

function parseArgs(argv) {
  const a = { out: 'data/heldout' }
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--out') a.out = argv[++i]
    else throw new Error(`unknown argument ${argv[i]}`)
  }
  a.out = resolve(a.out)
  return a
}

/** Colour content of an image: the mean channel difference of a 64x64 thumbnail. */
async function chroma(file) {
  const { data } = await sharp(file).removeAlpha().toColourspace('srgb').resize(64, 64, { fit: 'fill' }).raw().toBuffer({ resolveWithObject: true })
  let sum = 0
  for (let i = 0; i < data.length; i += 3) sum += Math.abs(data[i] - data[i + 1]) + Math.abs(data[i + 1] - data[i + 2])
  return sum / (data.length / 3)
}

async function main() {
  const args = parseArgs(process.argv.slice(2))
  sharp.concurrency(1)
  const work = join(args.out, '.work')
  const images = join(args.out, 'images')
  rmSync(images, { recursive: true, force: true })
  mkdirSync(images, { recursive: true })
  mkdirSync(join(args.out, 'licenses'), { recursive: true })
  const rows = readPhotoList(join(here, 'heldout-photos.tsv'))

  const sources = []
  for (const w of WHEELS) {
    const wheel = pypiWheel(w.name, w.version, work)
    for (const f of w.licenseFiles) copyFileSync(join(wheel.root, f), join(args.out, 'licenses', `${w.name}-${basename(f)}`))
    sources.push({ origin: `${w.name}==${w.version}`, short: w.name, version: w.version, root: wheel.root, paragraphs: null })
  }
  for (const name of DEBIAN) {
    const pkg = debianPackage(name, work)
    if (pkg.missing) {
      console.warn(`${name}: not in this machine's Debian mirror (${pkg.missing}); going on with the others`)
      continue
    }
    const copyright = join(pkg.root, 'usr/share/doc', name, 'copyright')
    copyFileSync(copyright, join(args.out, 'licenses', `${name}.copyright`))
    sources.push({ origin: name, short: name, version: pkg.version, root: pkg.root, paragraphs: parseCopyright(readFileSync(copyright, 'utf8')) })
  }

  const kept = []
  const problems = []
  for (const src of sources) {
    const mine = rows.filter((r) => r.origin === src.origin)
    const undecided = imagesUnder(src.root).filter((f) => !mine.some((r) => globRegExp(r.path).test(f)))
    if (undecided.length) problems.push(`${src.origin}: images heldout-photos.tsv does not decide:\n  ${undecided.join('\n  ')}`)
    for (const row of mine.filter((r) => r.decision === 'keep')) {
      const file = join(src.root, row.path)
      if (!existsSync(file)) {
        problems.push(`heldout-photos.tsv:${row.line}: ${src.origin} has no ${row.path}`)
        continue
      }
      const meta = await sharp(file).metadata()
      const c = await chroma(file)
      if (Math.min(meta.width, meta.height) < MIN_SIDE) problems.push(`heldout-photos.tsv:${row.line}: ${row.path} is ${meta.width}x${meta.height}, under ${MIN_SIDE} on the shorter side`)
      if (c < MIN_CHROMA) problems.push(`heldout-photos.tsv:${row.line}: ${row.path} is greyscale (chroma ${c.toFixed(1)} < ${MIN_CHROMA})`)
      const licence = row.licence.startsWith('dep5:') ? licenseOf(src.paragraphs, row.licence.slice(5)) : { license: row.licence }
      const name = `${src.short}-${row.path.split('/').slice(-2).join('-').replace(/\.[^.]+$/, '')}.png`
      await sharp(file).removeAlpha().toColourspace('srgb').png().toFile(join(images, name))
      kept.push({
        file: `images/${name}`, origin: src.short, version: src.version, path: row.path, what: row.reason,
        license: licence.license, ...(licence.copyright ? { copyright: licence.copyright } : {}),
        width: meta.width, height: meta.height, chroma: Number(c.toFixed(1)),
        sha256: createHash('sha256').update(readFileSync(file)).digest('hex'),
      })
    }
  }
  if (problems.length) throw new Error(problems.join('\n'))
  writeFileSync(join(args.out, 'manifest.json'), JSON.stringify({
    description: 'Held-out evaluation set of the built-in marvel model (never trained on): colour photographs of scikit-image, scikit-learn and opencv-doc',
    generated_by: 'scripts/builtin-data/fetch-heldout.mjs',
    sources: sources.map(({ origin, version }) => ({ origin, version })),
    images: kept,
  }, null, 2) + '\n')
  const counts = Object.fromEntries(sources.map((s) => [s.short, kept.filter((k) => k.origin === s.short).length]))
  console.log(JSON.stringify({ images: counts, total: kept.length, out: args.out }))
}

main().catch((e) => {
  console.error(e.message)
  process.exit(1)
})
