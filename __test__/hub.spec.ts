import { createHash } from 'node:crypto'
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, statSync, writeFileSync } from 'node:fs'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest'

import { MarvelError } from '../src/errors.js'
import {
  HubError,
  createProgressPrinter,
  formatProgress,
  hubDownload,
  resolveModelFiles,
  snapshotDownload,
  type HubProgress,
} from '../src/hub.js'

const COMMIT = '0123456789abcdef0123456789abcdef01234567'
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex')
// The hub names git-stored files by their git blob id.
const gitSha1 = (b: Buffer) => createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex')

/** Deterministic bytes that differ at every offset, so a misplaced resume shows up as a content mismatch. */
function bytes(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n)
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 7 + (i >> 8)) & 0xff
  return b
}

interface Seen {
  method: string
  path: string
  range?: string
  auth?: string
  port: number
}

/** Imitates huggingface.co: resolve URLs with hub headers, LFS files redirected to a CDN path, Range support. */
class FakeHub {
  readonly files = new Map<string, { content: Buffer; lfs: boolean }>() // key: "<repo>/<file>"
  readonly privateRepos = new Map<string, string>() // repo -> accepted token
  readonly cutAfter = new Map<string, number>() // served path -> bytes sent before the socket is destroyed (once)
  readonly corrupt = new Set<string>() // served path -> flip the bytes
  readonly sizeLie = new Set<string>() // repo/file -> announce 10 extra bytes
  readonly hang = new Set<string>() // repo/file -> never answer
  ranges = true
  cdnOrigin = '' // '' = same origin (relative redirect); else another server's origin
  seen: Seen[] = []
  private servers: Server[] = []

  add(repo: string, file: string, content: Buffer, lfs = false): void {
    this.files.set(`${repo}/${file}`, { content, lfs })
  }

  async listen(): Promise<string> {
    const server = createServer((req, res) => this.handle(req, res))
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    this.servers.push(server)
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  }

  async close(): Promise<void> {
    for (const s of this.servers.splice(0)) {
      s.closeAllConnections()
      await new Promise<void>((resolve) => s.close(() => resolve()))
    }
  }

  count(method: string, pathPart: string): number {
    return this.seen.filter((r) => r.method === method && r.path.includes(pathPart)).length
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const path = decodeURIComponent(new URL(req.url!, 'http://x').pathname)
    const seen = { method: req.method!, path, range: req.headers.range, auth: req.headers.authorization, port: req.socket.localPort! }
    this.seen.push(seen)
    const cdn = /^\/cdn\/([0-9a-f]{64})$/.exec(path)
    if (cdn) {
      const file = [...this.files.values()].find((f) => sha256(f.content) === cdn[1])
      if (!file) return void res.writeHead(404).end()
      return this.serve(req, res, path, file.content, {})
    }
    const m = /^\/(.+)\/resolve\/([^/]+)\/(.+)$/.exec(path)
    if (!m) return void res.writeHead(404).end()
    const [, repo, , name] = m
    const key = `${repo}/${name}`
    if (this.hang.has(key)) return
    const token = this.privateRepos.get(repo)
    if (token !== undefined && req.headers.authorization !== `Bearer ${token}`) {
      return void res.writeHead(401, { 'x-error-code': 'GatedRepo' }).end()
    }
    const file = this.files.get(key)
    const hub = { 'x-repo-commit': COMMIT }
    if (!file) return void res.writeHead(404, { ...hub, 'x-error-code': 'EntryNotFound' }).end()
    const size = file.content.length + (this.sizeLie.has(key) ? 10 : 0)
    if (file.lfs) {
      const sha = sha256(file.content)
      return void res
        .writeHead(302, {
          ...hub,
          location: `${this.cdnOrigin}/cdn/${sha}`,
          etag: `"${gitSha1(Buffer.from('lfs pointer'))}"`,
          'x-linked-etag': `"${sha}"`,
          'x-linked-size': String(size),
        })
        .end()
    }
    this.serve(req, res, key, file.content, { ...hub, etag: `W/"${gitSha1(file.content)}"`, 'x-linked-size': String(size) })
  }

  private serve(req: IncomingMessage, res: ServerResponse, key: string, content: Buffer, headers: Record<string, string>): void {
    let body = this.corrupt.has(key) ? Buffer.from(content.map((b) => b ^ 0xff)) : content
    const range = this.ranges ? /^bytes=(\d+)-$/.exec(req.headers.range ?? '') : null
    let status = 200
    if (range && Number(range[1]) < body.length) {
      status = 206
      headers['content-range'] = `bytes ${range[1]}-${body.length - 1}/${body.length}`
      body = body.subarray(Number(range[1]))
    }
    res.writeHead(status, { ...headers, 'content-length': String(body.length) })
    if (req.method === 'HEAD') return void res.end()
    const cut = req.method === 'GET' ? this.cutAfter.get(key) : undefined
    if (cut !== undefined) {
      this.cutAfter.delete(key)
      return void res.write(body.subarray(0, cut), () => setTimeout(() => res.socket?.destroy(), 20))
    }
    res.end(body)
  }
}

const hub = new FakeHub()
let endpoint: string
let cdnEndpoint: string
const savedEnv: Record<string, string | undefined> = {}
const ENV = ['HF_TOKEN', 'HF_HUB_OFFLINE', 'HF_ENDPOINT', 'HF_HOME', 'HF_HUB_CACHE', 'HUGGINGFACE_HUB_CACHE']

const config = Buffer.from(JSON.stringify({ hidden_size: 8, model_type: 'titok' }))
const weights = bytes(300_000, 1)
const oldWeights = bytes(120_000, 2)

beforeAll(async () => {
  for (const k of ENV) {
    savedEnv[k] = process.env[k]
    delete process.env[k]
  }
  endpoint = await hub.listen()
  cdnEndpoint = await hub.listen()
  hub.add('org/tiny', 'config.json', config)
  hub.add('org/tiny', 'model.safetensors', weights, true)
  hub.add('org/tiny', 'nested/dir/vocab.txt', Buffer.from('a\nb\n'))
  hub.add('org/old', 'config.json', config)
  hub.add('org/old', 'pytorch_model.bin', oldWeights, true)
  hub.add('solo', 'config.json', Buffer.from('{}'))
  hub.add('org/private', 'model.safetensors', bytes(5000, 3), true)
  hub.privateRepos.set('org/private', 'hf_secret')
})

afterAll(async () => {
  await hub.close()
  for (const k of ENV) if (savedEnv[k] === undefined) delete process.env[k]
  else process.env[k] = savedEnv[k]
})

beforeEach(() => {
  hub.seen = []
})

afterEach(() => {
  for (const k of ['HF_TOKEN', 'HF_HUB_OFFLINE', 'HF_HUB_CACHE']) delete process.env[k]
  hub.ranges = true
  hub.cdnOrigin = ''
})

const freshCache = () => mkdtempSync(join(tmpdir(), 'marvel-hub-'))
const repoDir = (cache: string, repo: string) => join(cache, `models--${repo.replace('/', '--')}`)
// Compared by digest: vitest's deep equality walks a Buffer byte by byte, seconds for a few hundred KB.
const sameBytes = (path: string, expected: Buffer) => expect(sha256(readFileSync(path))).toBe(sha256(expected))
const listDir = (p: string) => (existsSync(p) ? readdirSync(p) : [])

async function rejection(p: Promise<unknown>): Promise<MarvelError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  )
  expect(e, 'expected a rejection').toBeInstanceOf(MarvelError)
  return e as MarvelError
}

describe('hubDownload', () => {
  it('downloads into the huggingface_hub cache layout: blobs/<etag>, snapshots/<commit>/<file> symlink, refs/main', async () => {
    const cacheDir = freshCache()
    const progress: HubProgress[] = []
    const opts = { endpoint, cacheDir, onProgress: (p: HubProgress) => progress.push(p) }
    const cfg = await hubDownload('org/tiny', 'config.json', opts)
    const model = await hubDownload('org/tiny', 'model.safetensors', opts)
    const nested = await hubDownload('org/tiny', 'nested/dir/vocab.txt', opts)
    const root = repoDir(cacheDir, 'org/tiny')

    expect(cfg).toBe(join(root, 'snapshots', COMMIT, 'config.json'))
    sameBytes(cfg, config)
    sameBytes(model, weights)
    expect(readFileSync(nested, 'utf8')).toBe('a\nb\n')
    expect(readFileSync(join(root, 'refs', 'main'), 'utf8')).toBe(COMMIT)
    // Non-LFS files are named by git sha1 (W/ and quotes stripped), LFS files by sha256.
    expect(lstatSync(cfg).isSymbolicLink()).toBe(true)
    expect(readlinkSync(cfg)).toBe(`../../blobs/${gitSha1(config)}`)
    expect(readlinkSync(model)).toBe(`../../blobs/${sha256(weights)}`)
    expect(readlinkSync(nested)).toBe(`../../../../blobs/${gitSha1(Buffer.from('a\nb\n'))}`)
    expect(listDir(join(root, 'blobs')).sort()).toEqual([gitSha1(config), sha256(weights), gitSha1(Buffer.from('a\nb\n'))].sort())

    const last = progress.filter((p) => p.file === 'model.safetensors').at(-1)
    expect(last).toEqual({ file: 'model.safetensors', downloaded: weights.length, total: weights.length })
    // The LFS bytes came from the CDN path the hub redirected to, and the metadata from one HEAD.
    expect(hub.count('GET', `/cdn/${sha256(weights)}`)).toBe(1)
    expect(hub.count('HEAD', 'org/tiny/resolve/main/model.safetensors')).toBe(1)
  })

  it('serves a cached file with no request offline, and with one HEAD and no GET online', async () => {
    const cacheDir = freshCache()
    const first = await hubDownload('org/tiny', 'model.safetensors', { endpoint, cacheDir })
    hub.seen = []
    expect(await hubDownload('org/tiny', 'model.safetensors', { endpoint, cacheDir, offline: true })).toBe(first)
    process.env.HF_HUB_OFFLINE = '1'
    expect(await hubDownload('org/tiny', 'model.safetensors', { endpoint, cacheDir })).toBe(first)
    expect(hub.seen).toEqual([])
    delete process.env.HF_HUB_OFFLINE

    expect(await hubDownload('org/tiny', 'model.safetensors', { endpoint, cacheDir })).toBe(first)
    expect(hub.seen.map((r) => r.method)).toEqual(['HEAD'])
    // A commit hash that is already cached needs no request at all.
    hub.seen = []
    expect(await hubDownload('org/tiny', 'model.safetensors', { endpoint, cacheDir, revision: COMMIT })).toBe(first)
    expect(hub.seen).toEqual([])
  })

  it('resumes an interrupted download with a Range request', async () => {
    const cacheDir = freshCache()
    const cdnPath = `/cdn/${sha256(weights)}`
    hub.cutAfter.set(cdnPath, 100_000)
    const e = await rejection(hubDownload('org/tiny', 'model.safetensors', { endpoint, cacheDir }))
    expect(e.code).toBe('MARVEL_HUB')
    expect((e as HubError).reason).toBe('unreachable')
    expect(e.message).toMatch(/interrupted/)
    const blobs = join(repoDir(cacheDir, 'org/tiny'), 'blobs')
    expect(listDir(blobs)).toEqual([`${sha256(weights)}.incomplete`])
    expect(listDir(join(repoDir(cacheDir, 'org/tiny'), 'snapshots', COMMIT))).toEqual([])
    const kept = statSync(join(blobs, `${sha256(weights)}.incomplete`)).size
    expect(kept).toBeGreaterThan(0)
    expect(kept).toBeLessThanOrEqual(100_000)

    hub.seen = []
    const path = await hubDownload('org/tiny', 'model.safetensors', { endpoint, cacheDir })
    sameBytes(path, weights)
    expect(hub.seen.find((r) => r.method === 'GET')?.range).toBe(`bytes=${kept}-`)
    expect(listDir(blobs)).toEqual([sha256(weights)])
  })

  it('throws away a kept partial file whose bytes are wrong and downloads again from zero', async () => {
    const cacheDir = freshCache()
    const blobs = join(repoDir(cacheDir, 'org/tiny'), 'blobs')
    mkdirSync(blobs, { recursive: true })
    writeFileSync(join(blobs, `${sha256(weights)}.incomplete`), Buffer.alloc(1000, 7))
    const path = await hubDownload('org/tiny', 'model.safetensors', { endpoint, cacheDir })
    sameBytes(path, weights)
    expect(hub.seen.filter((r) => r.method === 'GET' && r.path.startsWith('/cdn/')).map((r) => r.range)).toEqual([
      'bytes=1000-',
      undefined,
    ])
    expect(listDir(blobs)).toEqual([sha256(weights)])
  })

  it('restarts cleanly when the server ignores Range', async () => {
    const cacheDir = freshCache()
    hub.ranges = false
    hub.cutAfter.set(`/cdn/${sha256(weights)}`, 70_000)
    await rejection(hubDownload('org/tiny', 'model.safetensors', { endpoint, cacheDir }))
    hub.seen = []
    const path = await hubDownload('org/tiny', 'model.safetensors', { endpoint, cacheDir })
    expect(hub.seen.find((r) => r.method === 'GET')?.range).toMatch(/^bytes=\d+-$/)
    sameBytes(path, weights)
  })

  it('reports a 404 naming repo, file and revision, and remembers it for offline runs', async () => {
    const cacheDir = freshCache()
    const e = await rejection(hubDownload('org/tiny', 'missing.bin', { endpoint, cacheDir, revision: 'v1' }))
    expect(e).toBeInstanceOf(HubError)
    expect((e as HubError).reason).toBe('not-found')
    expect(e.code).toBe('MARVEL_HUB')
    expect(e.message).toContain('org/tiny/missing.bin (revision v1)')
    expect(e.message).toMatch(/not found on the hub/)
    expect(existsSync(join(repoDir(cacheDir, 'org/tiny'), '.no_exist', COMMIT, 'missing.bin'))).toBe(true)
    const offline = await rejection(hubDownload('org/tiny', 'missing.bin', { endpoint, cacheDir, revision: 'v1', offline: true }))
    expect((offline as HubError).reason).toBe('not-found')
  })

  it('reports 401 with a hint about HF_TOKEN, and sends HF_TOKEN as a Bearer header (never to another host)', async () => {
    const cacheDir = freshCache()
    const denied = await rejection(hubDownload('org/private', 'model.safetensors', { endpoint, cacheDir }))
    expect((denied as HubError).reason).toBe('unauthorized')
    expect(denied.message).toMatch(/401/)
    expect(denied.message).toMatch(/set HF_TOKEN/)
    const wrong = await rejection(hubDownload('org/private', 'model.safetensors', { endpoint, cacheDir, token: 'hf_nope' }))
    expect(wrong.message).toMatch(/HF_TOKEN\) has no access/)

    process.env.HF_TOKEN = 'hf_secret'
    hub.cdnOrigin = cdnEndpoint
    hub.seen = []
    const path = await hubDownload('org/private', 'model.safetensors', { endpoint, cacheDir })
    sameBytes(path, bytes(5000, 3))
    const resolve = hub.seen.filter((r) => r.path.includes('/resolve/'))
    expect(resolve.length).toBeGreaterThan(0)
    expect(resolve.every((r) => r.auth === 'Bearer hf_secret')).toBe(true)
    const cdn = hub.seen.filter((r) => r.path.startsWith('/cdn/'))
    expect(cdn.map((r) => [r.port, r.auth])).toEqual([[Number(new URL(cdnEndpoint).port), undefined]])
  })

  it('deletes a corrupt download (sha256 or size mismatch) and leaves nothing in blobs/ or snapshots/', async () => {
    const cacheDir = freshCache()
    const root = repoDir(cacheDir, 'org/tiny')
    hub.corrupt.add(`/cdn/${sha256(weights)}`)
    try {
      const e = await rejection(hubDownload('org/tiny', 'model.safetensors', { endpoint, cacheDir }))
      expect((e as HubError).reason).toBe('corrupt')
      expect(e.message).toMatch(/model\.safetensors.*corrupt: sha256 is [0-9a-f]{64}, expected [0-9a-f]{64}/)
    } finally {
      hub.corrupt.clear()
    }
    expect(listDir(join(root, 'blobs'))).toEqual([])
    expect(listDir(join(root, 'snapshots', COMMIT))).toEqual([])

    hub.sizeLie.add('org/tiny/config.json')
    try {
      const e = await rejection(hubDownload('org/tiny', 'config.json', { endpoint, cacheDir }))
      expect(e.message).toContain(`got ${config.length} bytes, expected ${config.length + 10}`)
    } finally {
      hub.sizeLie.clear()
    }
    expect(listDir(join(root, 'blobs'))).toEqual([])
    // A good download afterwards works.
    sameBytes(await hubDownload('org/tiny', 'model.safetensors', { endpoint, cacheDir }), weights)
  })

  it('works offline from the cache with the server stopped, and names repo, file and cache when not cached', async () => {
    const cacheDir = freshCache()
    const lone = new FakeHub()
    lone.add('org/gone', 'config.json', config)
    const url = await lone.listen()
    const path = await hubDownload('org/gone', 'config.json', { endpoint: url, cacheDir })
    await lone.close()

    expect(await hubDownload('org/gone', 'config.json', { endpoint: url, cacheDir, offline: true })).toBe(path)
    // Online but unreachable: the cached copy stands in, as with huggingface_hub.
    expect(await hubDownload('org/gone', 'config.json', { endpoint: url, cacheDir })).toBe(path)

    const offline = await rejection(hubDownload('org/gone', 'other.json', { endpoint: url, cacheDir, offline: true }))
    expect((offline as HubError).reason).toBe('not-cached')
    expect(offline.message).toContain('org/gone/other.json')
    expect(offline.message).toContain(repoDir(cacheDir, 'org/gone'))
    expect(offline.message).toMatch(/offline/)

    // The server is closed: its loopback port has nothing listening.
    const down = await rejection(hubDownload('org/gone', 'other.json', { endpoint: url, cacheDir }))
    expect(down).toBeInstanceOf(HubError)
    expect(down.code).toBe('MARVEL_HUB')
    expect((down as HubError).reason).toBe('unreachable')
    expect(down.message).toContain(`cannot reach ${url}/org/gone/resolve/main/other.json`)
    expect(down.message).toContain('ECONNREFUSED')
    expect(down.message).toContain('is not in the cache')
    // How to carry on without the hub, once.
    expect(down.message.match(/--model <folder>/g)).toHaveLength(1)
    expect(down.message).toContain('HF_HUB_OFFLINE=1')
    expect(down.message).toContain('HF_ENDPOINT')
  })

  it('gives up on a silent server after the timeout', async () => {
    hub.hang.add('org/tiny/slow.bin')
    const t0 = Date.now()
    const e = await rejection(hubDownload('org/tiny', 'slow.bin', { endpoint, cacheDir: freshCache(), timeout: 300 }))
    expect(e.code).toBe('MARVEL_HUB')
    expect((e as HubError).reason).toBe('unreachable')
    expect(e.message).toMatch(/ETIMEDOUT/)
    expect(Date.now() - t0).toBeLessThan(5000)
  })

  it('shares one transfer between concurrent calls for the same file', async () => {
    const cacheDir = freshCache()
    const paths = await Promise.all([1, 2, 3].map(() => hubDownload('org/tiny', 'model.safetensors', { endpoint, cacheDir })))
    expect(new Set(paths).size).toBe(1)
    expect(hub.count('GET', '/cdn/')).toBe(1)
  })

  it('reads the cache folder from HF_HUB_CACHE and accepts a repo id without an org', async () => {
    process.env.HF_HUB_CACHE = freshCache()
    const path = await hubDownload('solo', 'config.json', { endpoint })
    expect(path).toBe(join(process.env.HF_HUB_CACHE, 'models--solo', 'snapshots', COMMIT, 'config.json'))
  })

  it('rejects bad repo ids, file names and revisions up front, naming the value', async () => {
    const cacheDir = freshCache()
    const ids = ['', 'a/b/c', '../x', 'org/na me', 'org--x/y', '-org/x', 'org/x.', 'org/', 42]
    for (const id of ids) {
      const e = await rejection(hubDownload(id as string, 'config.json', { endpoint, cacheDir }))
      expect(e.code).toBe('MARVEL_INVALID_ARGUMENT')
      expect(e.message).toContain(`repoId must be`)
      expect(e.message).toContain(JSON.stringify(id))
    }
    for (const file of ['', '../secret', '/etc/passwd', 'a/../../b', 'a\\b', 'C:/x', 'a//b']) {
      const e = await rejection(hubDownload('org/tiny', file, { endpoint, cacheDir }))
      expect(e.code).toBe('MARVEL_INVALID_ARGUMENT')
      expect(e.message).toContain(`filename must be`)
      expect(e.message).toContain(JSON.stringify(file))
    }
    const rev = await rejection(hubDownload('org/tiny', 'config.json', { endpoint, cacheDir, revision: '../../x' }))
    expect(rev.message).toContain('revision must be')
    const ep = await rejection(hubDownload('org/tiny', 'config.json', { endpoint: 'ftp://x', cacheDir }))
    expect(ep.message).toContain('"ftp://x"')
    // 2^31 ms and more would make Node's timer fire at once instead of never.
    for (const timeout of [0, -1, Number.NaN, 2 ** 31, Infinity, '5' as unknown as number]) {
      const e = await rejection(hubDownload('org/tiny', 'config.json', { endpoint, cacheDir, timeout }))
      expect(e.code).toBe('MARVEL_INVALID_ARGUMENT')
      expect(e.message).toMatch(/hubDownload: expected timeout to be a number of milliseconds from 1 to 2147483647 but received/)
    }
    const nul = await rejection(hubDownload('org/tiny', 'config.json', { endpoint, cacheDir: `${cacheDir}\0x` }))
    expect(nul.message).toMatch(/expected cacheDir to be a non-empty path without NUL bytes/)
    expect(hub.seen).toEqual([])
  })
})

describe('snapshotDownload and resolveModelFiles', () => {
  it('snapshotDownload fetches every file at one commit', async () => {
    const cacheDir = freshCache()
    const snap = await snapshotDownload('org/tiny', ['config.json', 'model.safetensors'], { endpoint, cacheDir })
    expect(snap.commit).toBe(COMMIT)
    expect(snap.dir).toBe(join(repoDir(cacheDir, 'org/tiny'), 'snapshots', COMMIT))
    expect(snap.paths).toEqual([join(snap.dir, 'config.json'), join(snap.dir, 'model.safetensors')])
    // Files after the first are asked for by commit, not by branch.
    expect(hub.count('HEAD', `resolve/${COMMIT}/model.safetensors`)).toBe(1)
  })

  it('resolveModelFiles prefers model.safetensors and falls back to pytorch_model.bin on a 404', async () => {
    const cacheDir = freshCache()
    const tiny = await resolveModelFiles('org/tiny', { endpoint, cacheDir })
    expect(tiny.weights.endsWith('model.safetensors')).toBe(true)
    expect(hub.count('HEAD', 'pytorch_model.bin')).toBe(0)

    hub.seen = []
    const old = await resolveModelFiles('org/old', { endpoint, cacheDir })
    sameBytes(old.config, config)
    sameBytes(old.weights, oldWeights)
    expect(old.weights).toBe(join(repoDir(cacheDir, 'org/old'), 'snapshots', COMMIT, 'pytorch_model.bin'))
    expect(hub.count('HEAD', 'model.safetensors')).toBe(1)

    hub.seen = []
    expect(await resolveModelFiles('org/old', { endpoint, cacheDir, offline: true })).toEqual(old)
    expect(hub.seen).toEqual([])

    const none = await rejection(resolveModelFiles('org/tiny', { endpoint, cacheDir, weights: ['a.bin', 'b.bin'] }))
    expect((none as HubError).reason).toBe('not-found')
    expect(none.message).toContain('a.bin, b.bin')
  })
})

describe('createProgressPrinter', () => {
  it('formats size, speed and ETA', () => {
    expect(formatProgress({ file: 'model.safetensors', downloaded: 12.3e6, total: 45.6e6 }, 3.2e6)).toBe(
      'model.safetensors  12.3/45.6 MB  3.2 MB/s  ETA 11s',
    )
    expect(formatProgress({ file: 'f', downloaded: 1e6, total: undefined }, 0)).toBe('f  1.0 MB  0.0 MB/s')
  })

  it('draws on a TTY, ends the line when a file completes, and stays silent otherwise', () => {
    const out: string[] = []
    const tty = createProgressPrinter({ isTTY: true, write: (s: string) => out.push(s) })
    tty({ file: 'w.bin', downloaded: 0, total: 2e6 })
    tty({ file: 'w.bin', downloaded: 2e6, total: 2e6 })
    expect(out[0]).toMatch(/^\r\x1b\[2Kw\.bin {2}0\.0\/2\.0 MB {2}[\d.]+ MB\/s {2}ETA /)
    expect(out[1].endsWith('\n')).toBe(true)

    const piped: string[] = []
    createProgressPrinter({ isTTY: false, write: (s: string) => piped.push(s) })({ file: 'w.bin', downloaded: 1, total: 2 })
    expect(piped).toEqual([])
  })
})
