/**
 * An image folder as webdataset shards: `<prefix>-000000.tar`, ... of `perShard` samples each, every sample the
 * image file's bytes as they are (`<key>.jpg` / `.png` / `.webp` ...) and, when the images sit in sub-folders, a
 * `<key>.cls` member holding the class index (sub-folder names sorted, torchvision ImageFolder's rule). One file is
 * in memory at a time. Shards are written aside and renamed when complete, and `make-shards.json` records the
 * image list they came from, so a run stopped half-way resumes by writing only the missing shards.
 */
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { readFile, rm } from 'node:fs/promises'
import { extname, join, relative, sep } from 'node:path'

import { MarvelError, integerParameter, invalidParameter, optionsParameter } from '../errors.js'
import { expectKind, pathParameter } from '../files.js'
import { classesOf, listImages } from './shards.js'
import { TarWriter } from './tar-writer.js'

export interface MakeShardsOptions {
  /** Folder for the shards (created). */
  out: string
  /** Samples per shard. */
  perShard: number
  /** Shard file name prefix. Default `shard`. */
  prefix?: string
  /** Called after each shard is complete (or found complete from an earlier run). */
  onShard?: (shard: { index: number; path: string; samples: number; existed: boolean; total: number }) => void
}

export interface MadeShards {
  shards: string[]
  /** The brace pattern naming all shards, for `dataset.params.train_shards_path_or_url`. */
  pattern: string
  images: number
  classes: string[]
  /** Shards an earlier run had already written. */
  reused: number
}

const MANIFEST = 'make-shards.json'

export async function makeShards(folder: string, options: MakeShardsOptions): Promise<MadeShards> {
  pathParameter('makeShards', 'folder', folder)
  options = optionsParameter('makeShards', options, ['out', 'perShard', 'prefix', 'onShard'])
  const out = pathParameter('makeShards', 'out', options.out)
  const perShard = integerParameter('makeShards', 'perShard', options.perShard, 1, 10_000_000)
  const prefix = options.prefix ?? 'shard'
  if (typeof prefix !== 'string' || !/^[\w-]+$/.test(prefix)) throw invalidParameter('makeShards', 'prefix', 'letters, digits, - and _', prefix)
  await expectKind(folder, 'image folder', 'directory')

  const files = listImages(folder)
  if (files.length === 0) throw new MarvelError('MARVEL_IO', `image folder ${folder} holds no images (.jpg, .png, .webp, ...)`)
  const rel = files.map((f) => relative(folder, f).split(sep).join('/'))
  const classes = classesOf(folder, files)
  const count = Math.ceil(files.length / perShard)
  const manifest = {
    format: 'marvel-make-shards',
    version: 1,
    perShard,
    prefix,
    images: files.length,
    shards: count,
    list: createHash('sha256').update(rel.join('\n')).digest('hex'),
  }
  try {
    mkdirSync(out, { recursive: true })
  } catch (e) {
    throw new MarvelError('MARVEL_IO', `cannot create ${out}: ${(e as Error).message}`, { cause: e })
  }
  const manifestPath = join(out, MANIFEST)
  if (existsSync(manifestPath)) {
    let earlier: unknown
    try {
      earlier = JSON.parse(readFileSync(manifestPath, 'utf8'))
    } catch {
      earlier = null
    }
    if (JSON.stringify(earlier) !== JSON.stringify(manifest)) {
      throw new MarvelError('MARVEL_INVALID_ARGUMENT', `${out} holds shards made from another image list or with other settings (${manifestPath}); use an empty folder`)
    }
  } else {
    writeFileSync(manifestPath, `${JSON.stringify(manifest, null, 2)}\n`)
  }

  const width = Math.max(6, String(count - 1).length)
  const keyWidth = Math.max(8, String(files.length - 1).length)
  const name = (i: number) => `${prefix}-${String(i).padStart(width, '0')}.tar`
  const shards: string[] = []
  let reused = 0
  for (let s = 0; s < count; s++) {
    const path = join(out, name(s))
    const first = s * perShard
    const last = Math.min(files.length, first + perShard)
    shards.push(path)
    if (existsSync(path)) {
      reused++
      options.onShard?.({ index: s, path, samples: last - first, existed: true, total: count })
      continue
    }
    const partial = `${path}.partial`
    const tar = await TarWriter.create(partial)
    try {
      for (let i = first; i < last; i++) {
        const key = String(i).padStart(keyWidth, '0')
        let ext = extname(files[i]).slice(1).toLowerCase()
        if (ext === 'jpeg') ext = 'jpg'
        let bytes: Buffer
        try {
          bytes = await readFile(files[i])
        } catch (e) {
          throw new MarvelError('MARVEL_IO', `cannot read ${files[i]}: ${(e as Error).message}`, { cause: e })
        }
        await tar.add(`${key}.${ext}`, bytes)
        const parts = rel[i].split('/')
        if (classes.length > 0 && parts.length > 1) await tar.add(`${key}.cls`, Buffer.from(String(classes.indexOf(parts[0]))))
      }
      await tar.close()
    } catch (e) {
      await tar.abandon()
      await rm(partial, { force: true })
      throw e
    }
    renameSync(partial, path)
    options.onShard?.({ index: s, path, samples: last - first, existed: false, total: count })
  }
  const pattern = join(out, count === 1 ? name(0) : `${prefix}-{${String(0).padStart(width, '0')}..${String(count - 1).padStart(width, '0')}}.tar`)
  return { shards, pattern, images: files.length, classes, reused }
}
