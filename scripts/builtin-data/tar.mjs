// Webdataset shards for the built-in model's data, written by the library's own tar writer (dist/tar-writer.js,
// built by `npm run build:ts`): fixed mode and mtime, so the same crops give byte-identical shards.

import { renameSync } from 'node:fs'

import { TarWriter } from '../../dist/tar-writer.js'

/** Writes `path` (via `path.partial`, renamed when complete) from `[name, Buffer]` members. */
export async function writeTar(path, members) {
  const partial = `${path}.partial`
  const tar = await TarWriter.create(partial)
  try {
    for (const [name, data] of members) await tar.add(name, data)
  } catch (e) {
    await tar.abandon()
    throw e
  }
  await tar.close()
  renameSync(partial, path)
}
