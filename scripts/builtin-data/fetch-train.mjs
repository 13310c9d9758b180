// The built-in model's training data: the photographs of four Debian packages (scripts/builtin-data/train-photos.tsv
// decides which files are photographs), cut into seeded random multi-scale 256x256 crops and written as webdataset
// shards for `dataset.params.train_shards_path_or_url` (configs/builtin.yaml).
//
//   node scripts/builtin-data/fetch-train.mjs [--out data/builtin] [--crops-per-photo 200] [--seed 1]
//        [--min-side 256] [--max-side 1024] [--per-shard 500] [--format png|jpg]
//
// Writes, under --out (gitignored):
//   train/train-0000.tar ...  shards of `<key>.png` crops, shuffled across photos (seeded)
//   manifest.json             packages (version or why missing), every photo (package, path, licence, copyright,
//                             size, sha256, crop count), the crop parameters and the shard list
//   crops.jsonl               one line per crop: key, shard, photo, shorter side it was scaled to, box in the photo
//   licenses/<package>.copyright  each package's Debian copyright file, for attribution
// Downloads go to --out/.work (apt-get download + dpkg-deb -x: no root, nothing installed).
//
// A crop: the photo's shorter side is scaled to s, drawn log-uniformly from [min-side, min(max-side, shorter side)]
// (never upscaled beyond the photo unless the photo is smaller than min-side), and a 256x256 window is taken at a
// uniform position. It is cut from the full-resolution photo as a (256·short/s)² box resized to 256x256 (lanczos3),
// which is the same crop without resizing the whole photo for each one.

import { createHash } from 'node:crypto'
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'

import sharp from 'sharp'

import { debianPackage, globRegExp, imagesUnder, licenseOf, parseCopyright, readPhotoList, rng } from './sources.mjs'
import { writeTar } from './tar.mjs'

const PACKAGES = ['mate-backgrounds', 'plasma-workspace-wallpapers', 'lomiri-wallpapers-20.04', 'palapeli-data']
const CROP = 256
const here = import.meta.dirname

function parseArgs(argv) {
  const a = { out: 'data/builtin', cropsPerPhoto: 200, seed: 1, minSide: 256, maxSide: 1024, perShard: 500, format: 'png' }
  const numbers = { '--crops-per-photo': 'cropsPerPhoto', '--seed': 'seed', '--min-side': 'minSide', '--max-side': 'maxSide', '--per-shard': 'perShard' }
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]
    if (k === '--out') a.out = argv[++i]
    else if (k === '--format') a.format = argv[++i]
    else if (numbers[k]) a[numbers[k]] = Number(argv[++i])
    else throw new Error(`unknown argument ${k}`)
  }
  for (const key of Object.values(numbers)) {
    if (!Number.isInteger(a[key]) || a[key] < 0) throw new Error(`${key} must be a non-negative integer, got ${a[key]}`)
  }
  if (a.minSide < CROP || a.maxSide < a.minSide) throw new Error(`need ${CROP} <= --min-side <= --max-side, got ${a.minSide}, ${a.maxSide}`)
  if (!['png', 'jpg'].includes(a.format)) throw new Error(`--format must be png or jpg, got ${a.format}`)
  if (a.perShard < 1) throw new Error('--per-shard must be at least 1')
  a.out = resolve(a.out)
  return a
}

/** A stable per-photo seed, so adding a photo to the list leaves every other photo's crops unchanged. */
function photoSeed(seed, id) {
  return createHash('sha256').update(`${seed}:${id}`).digest().readUInt32LE(0)
}

/** The crop boxes of one photo, in its own pixels. */
function planCrops(width, height, count, seed, { minSide, maxSide }) {
  const random = rng(seed)
  const short = Math.min(width, height)
  const top = Math.max(minSide, Math.min(maxSide, short))
  const boxes = []
  for (let k = 0; k < count; k++) {
    const side = Math.exp(Math.log(minSide) + random() * (Math.log(top) - Math.log(minSide)))
    const box = Math.min(short, Math.max(1, Math.round((CROP * short) / side)))
    const left = Math.floor(random() * (width - box + 1))
    const topEdge = Math.floor(random() * (height - box + 1))
    boxes.push({ side: Math.round(side), left, top: topEdge, size: box })
  }
  return boxes
}

function shuffle(list, random) {
  for (let i = list.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1))
    ;[list[i], list[j]] = [list[j], list[i]]
  }
  return list
}

async function main() {
  const args = parseArgs(process.argv.slice(2))
  sharp.concurrency(1) // the machine is shared: one libvips thread
  sharp.cache(false)
  const work = join(args.out, '.work')
  mkdirSync(join(args.out, 'licenses'), { recursive: true })
  const rows = readPhotoList(join(here, 'train-photos.tsv'))

  const packages = []
  const photos = []
  for (const name of PACKAGES) {
    const pkg = debianPackage(name, work)
    if (pkg.missing) {
      console.warn(`${name}: not in this machine's Debian mirror (${pkg.missing}); going on with the others`)
      packages.push({ name, missing: pkg.missing })
      continue
    }
    packages.push({ name, version: pkg.version })
    const copyrightFile = join(pkg.root, 'usr/share/doc', name, 'copyright')
    copyFileSync(copyrightFile, join(args.out, 'licenses', `${name}.copyright`))
    const paragraphs = parseCopyright(readFileSync(copyrightFile, 'utf8'))
    const mine = rows.filter((r) => r.origin === name)
    const undecided = imagesUnder(pkg.root).filter((f) => !mine.some((r) => globRegExp(r.path).test(f)))
    if (undecided.length) {
      throw new Error(`${name} ${pkg.version}: images that train-photos.tsv does not decide (look at them and add keep/drop rows):\n  ${undecided.join('\n  ')}`)
    }
    for (const row of mine.filter((r) => r.decision === 'keep')) {
      const file = join(pkg.root, row.path)
      if (!existsSync(file)) throw new Error(`train-photos.tsv:${row.line}: ${name} ${pkg.version} has no ${row.path}`)
      if (!row.licence.startsWith('dep5:')) throw new Error(`train-photos.tsv:${row.line}: a Debian photo's licence must be dep5:<source path>`)
      const licence = licenseOf(paragraphs, row.licence.slice(5))
      const bytes = readFileSync(file)
      const meta = await sharp(bytes).metadata()
      const photo = {
        id: `${name}:${row.path}`,
        package: name, version: pkg.version, path: row.path, why: row.reason,
        license: licence.license, copyright: licence.copyright, copyright_files: licence.files,
        width: meta.width, height: meta.height, sha256: createHash('sha256').update(bytes).digest('hex'),
      }
      // plasma-workspace-wallpapers states each wallpaper's own licence beside it; Debian's file covers them all.
      const upstream = join(pkg.root, row.path.replace(/\/contents\/.*$/, ''), 'metadata.json')
      if (name === 'plasma-workspace-wallpapers' && existsSync(upstream)) {
        const plugin = JSON.parse(readFileSync(upstream, 'utf8')).KPlugin ?? {}
        photo.upstream_license = plugin.License
        photo.upstream_authors = (plugin.Authors ?? []).map((a) => a.Name)
      }
      photos.push({ ...photo, file })
    }
    console.log(`${name} ${pkg.version}: ${mine.filter((r) => r.decision === 'keep').length} photographs`)
  }
  if (!photos.length) throw new Error('no photographs: none of the packages could be fetched')

  // Plan every crop, shuffle them across photos, then cut photo by photo into a staging folder and pack the shards
  // in the shuffled order (a shard then mixes photos, as the loader's shuffle buffer expects).
  const plan = []
  for (const [index, photo] of photos.entries()) {
    const boxes = planCrops(photo.width, photo.height, args.cropsPerPhoto, photoSeed(args.seed, photo.id), args)
    boxes.forEach((box, k) => plan.push({ key: `p${String(index).padStart(3, '0')}-c${String(k).padStart(5, '0')}`, photo: photo.id, index, ...box }))
    photo.crops = boxes.length
  }
  shuffle(plan, rng(args.seed))
  plan.forEach((crop, i) => (crop.shard = `train-${String(Math.floor(i / args.perShard)).padStart(4, '0')}.tar`))

  const staging = join(work, 'crops')
  rmSync(staging, { recursive: true, force: true })
  mkdirSync(staging, { recursive: true })
  for (const [index, photo] of photos.entries()) {
    const { data, info } = await sharp(photo.file).removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true })
    const raw = { raw: { width: info.width, height: info.height, channels: info.channels } }
    for (const crop of plan.filter((c) => c.index === index)) {
      let img = sharp(data, raw).extract({ left: crop.left, top: crop.top, width: crop.size, height: crop.size }).resize(CROP, CROP, { kernel: 'lanczos3' })
      img = args.format === 'png' ? img.png({ compressionLevel: 6 }) : img.jpeg({ quality: 95, chromaSubsampling: '4:4:4' })
      writeFileSync(join(staging, `${crop.key}.${args.format}`), await img.toBuffer())
    }
    console.log(`cropped ${index + 1}/${photos.length}: ${photo.id} (${photo.width}x${photo.height})`)
  }

  const shardDir = join(args.out, 'train')
  rmSync(shardDir, { recursive: true, force: true })
  mkdirSync(shardDir, { recursive: true })
  const shards = [...new Set(plan.map((c) => c.shard))]
  for (const shard of shards) {
    const members = plan.filter((c) => c.shard === shard).map((c) => [`${c.key}.${args.format}`, readFileSync(join(staging, `${c.key}.${args.format}`))])
    await writeTar(join(shardDir, shard), members)
  }
  rmSync(staging, { recursive: true, force: true })

  writeFileSync(join(args.out, 'crops.jsonl'), plan.map(({ key, shard, photo, side, left, top, size }) => JSON.stringify({ key, shard, photo, side, box: [left, top, size, size] })).join('\n') + '\n')
  const last = String(shards.length - 1).padStart(4, '0')
  const manifest = {
    description: 'Training data of the built-in marvel model: photographs of Debian packages, cut into random multi-scale 256x256 crops',
    generated_by: 'scripts/builtin-data/fetch-train.mjs',
    packages,
    photos: photos.map(({ file, ...p }) => p),
    crops: {
      seed: args.seed, per_photo: args.cropsPerPhoto, size: CROP, shorter_side_range: [args.minSide, args.maxSide], format: args.format,
      count: plan.length, per_shard: args.perShard, shards: shards.length, train_shards_path_or_url: join(shardDir, `train-{0000..${last}}.tar`),
    },
  }
  writeFileSync(join(args.out, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n')
  const byPackage = Object.fromEntries(packages.map((p) => [p.name, photos.filter((f) => f.package === p.name).length]))
  console.log(JSON.stringify({ photos: byPackage, crops: plan.length, shards: shards.length, out: args.out }))
}

main().catch((e) => {
  console.error(e.message)
  process.exit(1)
})
