/**
 * Downloads from the Hugging Face hub into the same cache Python's huggingface_hub uses (`$HF_HUB_CACHE`, by
 * default `~/.cache/huggingface/hub`), so checkpoints fetched by either are reused by the other. The cache layout
 * is described in `hub/cache.ts`; resumable, verified downloads in `hub/download.ts`.
 */
import { homedir } from 'node:os'
import { join } from 'node:path'

import { weightFiles } from './binding.js'
import { MarvelError, invalidArgument, invalidParameter, optionsParameter } from './errors.js'
import { COMMIT_HASH, RepoCache, isFile } from './hub/cache.js'
import { fetchBlob } from './hub/download.js'
import { HubError, HubUnreachableError } from './hub/errors.js'
import { drop, header, request, type RequestOptions } from './hub/http.js'
import type { ProgressCallback } from './hub/progress.js'

export { HubError, type HubErrorReason } from './hub/errors.js'
export { createProgressPrinter, formatProgress, type HubProgress, type ProgressStream } from './hub/progress.js'

export interface HubOptions {
  /** Branch, tag or commit hash. Default `"main"`. */
  revision?: string
  /** Cache folder. Default `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`. */
  cacheDir?: string
  /** Hub URL. Default `$HF_ENDPOINT`, else `https://huggingface.co`. */
  endpoint?: string
  /** Access token for private and gated repositories, sent as `Authorization: Bearer`. Default `$HF_TOKEN`. */
  token?: string
  /** Use only the cache, never the network. Default true when `HF_HUB_OFFLINE` is `1`/`true`/`yes`/`on`. */
  offline?: boolean
  /** Milliseconds without any byte from the server before a request is abandoned. Default 10000. */
  timeout?: number
  /** Called as bytes arrive (at most every 100 ms, and once at the end of each file). */
  onProgress?: ProgressCallback
}

export interface HubSnapshot {
  /** The commit every file was resolved at. */
  commit: string
  /** `snapshots/<commit>` in the cache. */
  dir: string
  /** Local path of each requested file, in the order asked. */
  paths: string[]
}

export interface ResolveModelOptions extends HubOptions {
  /** Weight files to try in order; the first the hub has wins. Default `["model.safetensors", "pytorch_model.bin"]`. */
  weights?: readonly string[]
}

export interface ModelFiles {
  commit: string
  /** Local path of `config.json`. */
  config: string
  /** Local path of the first weights file the repository has. */
  weights: string
}

interface Settings {
  revision: string
  cacheDir: string
  endpoint: URL
  token: string | undefined
  offline: boolean
  timeoutMs: number
  onProgress: ProgressCallback | undefined
}

// As huggingface_hub's validate_repo_id: optional namespace, name up to 96 word characters, '-' or '.'.
const REPO_ID = /^(?:[\w.-]+\/)?[\w.-]{1,96}$/
const TRUE = new Set(['1', 'true', 'yes', 'on'])

function checkRepoId(fn: string, repoId: unknown): asserts repoId is string {
  const ok =
    typeof repoId === 'string' &&
    REPO_ID.test(repoId) &&
    !repoId.includes('--') &&
    !repoId.includes('..') &&
    repoId.split('/').every((part) => !/^[-.]|[-.]$/.test(part))
  if (!ok) {
    throw invalidArgument(
      `${fn}: repoId must be "org/name" or "name" (letters, digits, '_', '-', '.'; no '--' or '..'; ` +
        `not starting or ending with '-' or '.'), got ${JSON.stringify(repoId)}`,
    )
  }
}

/** A relative, forward-slash path inside the repository; also used for revisions, which become `refs/<revision>`. */
function checkRepoPath(fn: string, what: string, value: unknown): asserts value is string {
  const bad =
    typeof value !== 'string' ||
    value === '' ||
    value.startsWith('/') ||
    value.includes('\\') ||
    value.includes('\0') ||
    /^[a-zA-Z]:/.test(value) ||
    value.split('/').some((part) => part === '' || part === '.' || part === '..')
  if (bad) {
    throw invalidArgument(
      `${fn}: ${what} must be a relative path inside the repository (no '..', '.', empty parts, leading '/' or '\\'), ` +
        `got ${JSON.stringify(value)}`,
    )
  }
}

/** Every key of `HubOptions`: an options object holding any other is refused (see `optionsParameter`). */
export const HUB_OPTIONS: readonly string[] = ['revision', 'cacheDir', 'endpoint', 'token', 'offline', 'timeout', 'onProgress']

function settings(fn: string, options: HubOptions | undefined, accepted: readonly string[] = HUB_OPTIONS): Settings {
  const o = optionsParameter(fn, options, accepted)
  const env = process.env
  const revision = o.revision ?? 'main'
  checkRepoPath(fn, 'revision', revision)

  const home = env.HF_HOME || join(env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'huggingface')
  let cacheDir = o.cacheDir ?? (env.HF_HUB_CACHE || env.HUGGINGFACE_HUB_CACHE || join(home, 'hub'))
  if (typeof cacheDir !== 'string' || cacheDir === '' || cacheDir.includes('\0')) throw invalidParameter(fn, 'cacheDir', 'a non-empty path without NUL bytes', cacheDir)
  if (cacheDir === '~' || cacheDir.startsWith('~/')) cacheDir = join(homedir(), cacheDir.slice(1))

  const rawEndpoint = o.endpoint ?? (env.HF_ENDPOINT || 'https://huggingface.co')
  let endpoint: URL | undefined
  try {
    endpoint = new URL(String(rawEndpoint).replace(/\/+$/, ''))
  } catch {
    endpoint = undefined
  }
  if (!endpoint || (endpoint.protocol !== 'http:' && endpoint.protocol !== 'https:')) {
    throw invalidParameter(fn, 'endpoint', 'an http(s) URL', rawEndpoint)
  }

  const token = o.token ?? (env.HF_TOKEN || undefined)
  if (token !== undefined && typeof token !== 'string') throw invalidParameter(fn, 'token', 'a string', token)
  const offline = o.offline ?? TRUE.has((env.HF_HUB_OFFLINE ?? '').trim().toLowerCase())
  if (typeof offline !== 'boolean') throw invalidParameter(fn, 'offline', 'a boolean', offline)
  const timeoutMs = o.timeout ?? 10_000
  // Node's timers hold at most 2^31 - 1 ms (about 24.8 days) and fire at once beyond it.
  if (typeof timeoutMs !== 'number' || !(timeoutMs >= 1 && timeoutMs <= 2 ** 31 - 1)) {
    throw invalidParameter(fn, 'timeout', 'a number of milliseconds from 1 to 2147483647', o.timeout)
  }
  if (o.onProgress !== undefined && typeof o.onProgress !== 'function') {
    throw invalidParameter(fn, 'onProgress', 'a function', o.onProgress)
  }
  return { revision, cacheDir, endpoint, token: token || undefined, offline, timeoutMs, onProgress: o.onProgress }
}

function normalizeEtag(etag: string | undefined): string | undefined {
  return etag?.trim().replace(/^W\//i, '').replace(/^"(.*)"$/, '$1') || undefined
}

function toInt(value: string | undefined): number | undefined {
  return value !== undefined && /^\d+$/.test(value.trim()) ? Number(value) : undefined
}

// In-process downloads by blob path, so concurrent calls for one file share a single transfer.
const inFlight = new Map<string, Promise<void>>()

interface Fetched {
  path: string
  commit: string
}

/** Looks up, and if needed downloads, one file; the work behind every exported function. */
async function fetchFile(repoId: string, filename: string, s: Settings): Promise<Fetched> {
  const cache = new RepoCache(s.cacheDir, repoId)
  const at = `${repoId}/${filename} (revision ${s.revision})`

  const cached = async (): Promise<Fetched | undefined> => {
    const hit = await cache.lookup(s.revision, filename)
    if (hit.path && hit.commit) return { path: hit.path, commit: hit.commit }
    if (hit.missing) throw new HubError('not-found', `${at} was not found on the hub (remembered in ${cache.root})`)
    return undefined
  }

  if (COMMIT_HASH.test(s.revision) && (await isFile(cache.pointer(s.revision, filename)))) {
    return { path: cache.pointer(s.revision, filename), commit: s.revision }
  }
  if (s.offline) {
    const hit = await cached()
    if (hit) return hit
    throw new HubError(
      'not-cached',
      `${at} is not in the cache ${cache.root} and offline mode is on (HF_HUB_OFFLINE or options.offline); ` +
        'run once online to download it',
    )
  }

  const url = new URL(
    `${s.endpoint.pathname.replace(/\/$/, '')}/${repoId}/resolve/${encodeURIComponent(s.revision)}/` +
      filename.split('/').map(encodeURIComponent).join('/'),
    s.endpoint,
  )
  const headers: Record<string, string> = { 'user-agent': `marvel-tokenizer; node/${process.versions.node}`, 'accept-encoding': 'identity' }
  if (s.token) headers.authorization = `Bearer ${s.token}`
  const http: RequestOptions = { headers, timeoutMs: s.timeoutMs, authOrigin: s.endpoint.origin }

  const refusal = (status: number, where: URL): Error => {
    if (status === 404) return new HubError('not-found', `${at} was not found on the hub: ${where.href} answered 404`)
    if (status === 401 || status === 403) {
      const hint = s.token
        ? 'the token given (options.token or HF_TOKEN) has no access to it'
        : 'set HF_TOKEN (or options.token) to an access token that can read it'
      return new HubError(
        'unauthorized',
        `${at}: ${where.href} answered ${status}; the repository is private, gated or does not exist — ${hint}`,
      )
    }
    if (status >= 500) return new HubUnreachableError(`${where.href} answered HTTP ${status} (server error)`)
    return new MarvelError('MARVEL_IO', `${where.href} answered an unexpected HTTP ${status}`)
  }

  // Metadata first (HEAD): the commit, the etag naming the blob, the size; a cached blob ends the work here.
  let meta: { commit: string; etag: string; size: number | undefined; location: URL }
  try {
    // The hub puts the metadata on its redirect to the CDN; other redirects (renamed repositories) are followed.
    const answer = await request('HEAD', url, http, (_, h) => header(h, 'x-repo-commit') !== undefined)
    drop(answer.res)
    const h = answer.headers
    const commit = header(h, 'x-repo-commit')
    if (answer.status === 404 && commit && /^[\w.-]+$/.test(commit)) {
      await cache.markMissing(commit, filename)
      await cache.writeRef(s.revision, commit)
    }
    if (answer.status >= 400 || answer.status < 200) throw refusal(answer.status, answer.url)
    const etag = normalizeEtag(header(h, 'x-linked-etag') ?? header(h, 'etag'))
    // Both become file names in the cache: refuse anything that could leave it.
    const safe = (v: string | undefined) => v !== undefined && /^[\w.-]{1,256}$/.test(v) && !/^\.+$/.test(v)
    if (!safe(commit) || !safe(etag)) {
      throw new MarvelError(
        'MARVEL_IO',
        `${answer.url.href} does not look like a Hugging Face hub: X-Repo-Commit ${JSON.stringify(commit)}, ` +
          `ETag ${JSON.stringify(etag)} (both are needed to cache the file)`,
      )
    }
    const location = answer.status >= 300 ? new URL(header(h, 'location')!, answer.url) : answer.url
    meta = { commit: commit!, etag: etag!, size: toInt(header(h, 'x-linked-size') ?? header(h, 'content-length')), location }
  } catch (e) {
    // As huggingface_hub: when the hub cannot be reached, a cached copy of the revision still serves.
    if (!(e instanceof HubUnreachableError)) throw e
    const hit = await cached()
    if (hit) return hit
    throw new HubUnreachableError(`${e.detail}; ${at} is not in the cache ${cache.root} either`, { cause: e })
  }

  await cache.writeRef(s.revision, meta.commit)
  const pointer = cache.pointer(meta.commit, filename)
  if (await isFile(pointer)) return { path: pointer, commit: meta.commit }

  const blobPath = cache.blob(meta.etag)
  if (!(await isFile(blobPath))) {
    let pending = inFlight.get(blobPath)
    if (!pending) {
      pending = fetchBlob({ url: meta.location, blobPath, etag: meta.etag, size: meta.size, file: filename, http, refusal, onProgress: s.onProgress })
      inFlight.set(blobPath, pending)
      pending.then(
        () => inFlight.delete(blobPath),
        () => inFlight.delete(blobPath),
      )
    }
    await pending
  }
  return { path: await cache.link(meta.etag, meta.commit, filename), commit: meta.commit }
}

/**
 * The local path of `filename` from the hub repository `repoId`, downloading it into the cache if needed.
 * Cached files cost at most one metadata request (none offline, none for a cached commit hash).
 */
export async function hubDownload(repoId: string, filename: string, options?: HubOptions): Promise<string> {
  checkRepoId('hubDownload', repoId)
  checkRepoPath('hubDownload', 'filename', filename)
  return (await fetchFile(repoId, filename, settings('hubDownload', options))).path
}

/**
 * Downloads several files of one repository at one commit: the first file resolves `revision`, the others are
 * fetched at that commit, so a push in between cannot mix two versions.
 */
export async function snapshotDownload(repoId: string, filenames: readonly string[], options?: HubOptions): Promise<HubSnapshot> {
  checkRepoId('snapshotDownload', repoId)
  if (!Array.isArray(filenames) || filenames.length === 0) {
    throw invalidArgument(`snapshotDownload: filenames must be a non-empty array, got ${JSON.stringify(filenames)}`)
  }
  for (const f of filenames) checkRepoPath('snapshotDownload', 'filename', f)
  const s = settings('snapshotDownload', options)
  const first = await fetchFile(repoId, filenames[0], s)
  const pinned = { ...s, revision: first.commit }
  const paths = [first.path]
  for (const f of filenames.slice(1)) paths.push((await fetchFile(repoId, f, pinned)).path)
  return { commit: first.commit, dir: join(new RepoCache(s.cacheDir, repoId).root, 'snapshots', first.commit), paths }
}

/**
 * `config.json` and the first weights file the repository has (by default `model.safetensors`, falling back to
 * `pytorch_model.bin` when the hub answers 404, or, offline, when only the latter is cached).
 */
export async function resolveModelFiles(repoId: string, options?: ResolveModelOptions): Promise<ModelFiles> {
  checkRepoId('resolveModelFiles', repoId)
  const s = settings('resolveModelFiles', options, [...HUB_OPTIONS, 'weights'])
  const candidates = options?.weights ?? weightFiles()
  if (!Array.isArray(candidates) || candidates.length === 0) {
    throw invalidArgument(`resolveModelFiles: weights must be a non-empty array of file names, got ${JSON.stringify(candidates)}`)
  }
  for (const f of candidates) checkRepoPath('resolveModelFiles', 'weights entry', f)
  const config = await fetchFile(repoId, 'config.json', s)
  const pinned = { ...s, revision: config.commit }
  const misses: HubError[] = []
  for (const name of candidates) {
    try {
      const weights = await fetchFile(repoId, name, pinned)
      return { commit: config.commit, config: config.path, weights: weights.path }
    } catch (e) {
      if (!(e instanceof HubError) || (e.reason !== 'not-found' && e.reason !== 'not-cached')) throw e
      misses.push(e)
    }
  }
  const offline = misses.some((e) => e.reason === 'not-cached')
  throw new HubError(
    offline ? 'not-cached' : 'not-found',
    `${repoId} (commit ${config.commit}) has none of the weight files ${candidates.join(', ')}` +
      `${offline ? ' in the cache (offline mode is on)' : ' on the hub'}: ${misses.map((e) => e.message).join('; ')}`,
  )
}
