/** Generated image folders, webdataset shards and tiny training configs for the training-loop specs. */
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

import sharp from 'sharp'

import { TarWriter } from '../../src/data/tar-writer.js'

const root = join(import.meta.dirname, '..', '..')
export const cli = join(root, 'dist', 'cli.js')
export const tinyYaml = join(root, 'configs', 'tiny.yaml')

function newestMtime(path: string): number {
  const s = statSync(path)
  if (!s.isDirectory()) return s.mtimeMs
  return Math.max(0, ...readdirSync(path).map((f) => newestMtime(join(path, f))))
}

/** Child processes run the built package: rebuild dist/ when src/ is newer. */
export function ensureBuilt(): void {
  const dist = join(root, 'dist', 'index.js')
  if (!existsSync(dist) || !existsSync(cli) || statSync(dist).mtimeMs < newestMtime(join(root, 'src'))) {
    execFileSync('npx', ['tsup'], { cwd: root, stdio: 'pipe' })
  }
}

/** A smooth coloured w x h picture, different for each `i`: something a tiny tokenizer can learn. */
export function picture(i: number, w = 40, h = 36): Buffer {
  const data = Buffer.alloc(w * h * 3)
  for (let p = 0; p < w * h; p++) {
    const x = p % w
    const y = (p / w) | 0
    data[3 * p] = Math.round(127 + 100 * Math.sin(x * 0.15 + i))
    data[3 * p + 1] = Math.round(127 + 100 * Math.sin(y * 0.2 + i * 0.7))
    data[3 * p + 2] = Math.round(127 + 100 * Math.cos((x + y) * 0.1 + i * 1.3))
  }
  return data
}

/** `picture(i)` encoded as `format`. */
export async function encoded(i: number, format: 'png' | 'jpg' | 'webp', w = 40, h = 36): Promise<Buffer> {
  const img = sharp(picture(i, w, h), { raw: { width: w, height: h, channels: 3 } })
  return format === 'png' ? img.png().toBuffer() : format === 'jpg' ? img.jpeg({ quality: 95 }).toBuffer() : img.webp({ lossless: true }).toBuffer()
}

/** `count` images in `dir/<class>/` sub-folders (two classes), PNG, JPEG and WebP in turn, of a few sizes. */
export async function imageFolder(dir: string, count: number): Promise<void> {
  const formats = ['png', 'jpg', 'webp'] as const
  for (let i = 0; i < count; i++) {
    const cls = join(dir, i % 2 ? 'cats' : 'dogs')
    mkdirSync(cls, { recursive: true })
    const f = formats[i % 3]
    writeFileSync(join(cls, `img${String(i).padStart(3, '0')}.${f}`), await encoded(i, f, 36 + (i % 4) * 4, 34 + (i % 3) * 5))
  }
}

/** A shard of the given members, written by marvel's writer. */
export async function writeShard(path: string, members: Array<[string, Uint8Array]>): Promise<void> {
  const tar = await TarWriter.create(path)
  for (const [name, data] of members) await tar.add(name, data)
  await tar.close()
}

/** `shards` shards of `perShard` PNG samples each (`<key>.png` + `<key>.cls`), keys numbered from 0. */
export async function writeShards(dir: string, shards: number, perShard: number): Promise<string[]> {
  mkdirSync(dir, { recursive: true })
  const paths: string[] = []
  for (let s = 0; s < shards; s++) {
    const members: Array<[string, Uint8Array]> = []
    for (let j = 0; j < perShard; j++) {
      const i = s * perShard + j
      const key = `s${String(i).padStart(5, '0')}`
      members.push([`${key}.png`, await encoded(i, 'png')], [`${key}.cls`, Buffer.from(String(i % 2))])
    }
    const path = join(dir, `train-${String(s).padStart(4, '0')}.tar`)
    await writeShard(path, members)
    paths.push(path)
  }
  return paths
}
