/**
 * The on-disk cache, laid out exactly as Python's huggingface_hub lays it out so both reuse each other's files:
 *
 *   <cacheDir>/models--<org>--<name>/
 *     blobs/<etag>                      file contents, named by git sha1 or (LFS) sha256
 *     blobs/<etag>.incomplete           a download in progress or interrupted (resumable)
 *     refs/<revision>                   the commit hash a branch or tag resolved to
 *     snapshots/<commit>/<filename>     relative symlink to ../../blobs/<etag> (a copy where symlinks fail)
 *     .no_exist/<commit>/<filename>     empty marker: the hub answered 404 for this file at this commit
 */
import { randomBytes } from 'node:crypto'
import { copyFile, mkdir, readFile, realpath, rename, rm, stat, symlink, writeFile } from 'node:fs/promises'
import { dirname, join, relative } from 'node:path'

import { MarvelError } from '../errors.js'

export const COMMIT_HASH = /^[0-9a-f]{40}$/

export async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile()
  } catch {
    return false
  }
}

function ioError(what: string, path: string, e: unknown): MarvelError {
  return new MarvelError('MARVEL_IO', `cannot ${what} ${path}: ${(e as Error).message}`, { cause: e })
}

export class RepoCache {
  /** `<cacheDir>/models--<org>--<name>` */
  readonly root: string

  constructor(cacheDir: string, repoId: string) {
    this.root = join(cacheDir, ['models', ...repoId.split('/')].join('--'))
  }

  blob(etag: string): string {
    return join(this.root, 'blobs', etag)
  }

  pointer(commit: string, filename: string): string {
    return join(this.root, 'snapshots', commit, ...filename.split('/'))
  }

  private ref(revision: string): string {
    return join(this.root, 'refs', ...revision.split('/'))
  }

  private noExist(commit: string, filename: string): string {
    return join(this.root, '.no_exist', commit, ...filename.split('/'))
  }

  /** The commit `revision` last resolved to; a commit hash is its own answer. */
  async commitOf(revision: string): Promise<string | undefined> {
    if (COMMIT_HASH.test(revision)) return revision
    try {
      return (await readFile(this.ref(revision), 'utf8')).trim() || undefined
    } catch {
      return undefined
    }
  }

  async writeRef(revision: string, commit: string): Promise<void> {
    if (revision === commit || (await this.commitOf(revision)) === commit) return
    const path = this.ref(revision)
    // Written aside then renamed, so a reader never sees an empty or half-written ref.
    const tmp = join(this.root, `.ref-${randomBytes(6).toString('hex')}.tmp`)
    try {
      await mkdir(dirname(path), { recursive: true })
      await writeFile(tmp, commit)
      await rename(tmp, path)
    } catch (e) {
      await rm(tmp, { force: true })
      throw ioError('write', path, e)
    }
  }

  /** What the cache knows of `filename` at `revision`, without the network. */
  async lookup(revision: string, filename: string): Promise<{ path?: string; commit?: string; missing: boolean }> {
    const commit = await this.commitOf(revision)
    if (!commit) return { missing: false }
    const path = this.pointer(commit, filename)
    if (await isFile(path)) return { path, commit, missing: false }
    return { commit, missing: await isFile(this.noExist(commit, filename)) }
  }

  async markMissing(commit: string, filename: string): Promise<void> {
    const path = this.noExist(commit, filename)
    try {
      await mkdir(dirname(path), { recursive: true })
      await writeFile(path, '')
    } catch {
      // Only an optimisation for offline runs; a read-only cache must not turn a 404 into an I/O error.
    }
  }

  /** Points `snapshots/<commit>/<filename>` at `blobs/<etag>` with a relative symlink, or a copy where that fails. */
  async link(etag: string, commit: string, filename: string): Promise<string> {
    const blob = this.blob(etag)
    const pointer = this.pointer(commit, filename)
    try {
      await mkdir(dirname(pointer), { recursive: true })
      await rm(pointer, { force: true })
    } catch (e) {
      throw ioError('prepare', pointer, e)
    }
    try {
      await symlink(relative(dirname(pointer), blob), pointer, 'file')
      return pointer
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code
      // Another call linked the same file between our rm and symlink.
      if (code === 'EEXIST' && (await realpath(pointer).catch(() => '')) === (await realpath(blob))) return pointer
    }
    // Windows without developer mode, FAT/exFAT, some network shares: copy beside the blob, then rename into place.
    const tmp = `${blob}.${randomBytes(6).toString('hex')}.copy.incomplete`
    try {
      await copyFile(blob, tmp)
      await rename(tmp, pointer)
      return pointer
    } catch (e) {
      await rm(tmp, { force: true })
      throw ioError('place', pointer, e)
    }
  }
}
