/** Tokenizer.fromPretrained with a repo id: downloaded from a loopback hub into the cache, then loaded offline. */
import { createHash } from 'node:crypto'
import { mkdtempSync, readFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { Tokenizer } from '../src/index.js'
import { tinyModel } from './helpers/models.js'

const COMMIT = 'fedcba9876543210fedcba9876543210fedcba98'

describe('Tokenizer.fromPretrained from the hub', () => {
  let server: Server
  let endpoint: string
  let modelDir: string
  const requests: string[] = []

  beforeAll(async () => {
    modelDir = await tinyModel({ quantizeMode: 'lfq', depths: 2 })
    const files: Record<string, Buffer> = {
      'config.json': readFileSync(join(modelDir, 'config.json')),
      'model.safetensors': readFileSync(join(modelDir, 'model.safetensors')),
    }
    server = createServer((req, res) => {
      requests.push(`${req.method} ${req.url}`)
      // The hub serves a file at a branch name or at the commit it resolves to.
      const m = new RegExp(`^/org/tiny/resolve/(?:main|${COMMIT})/(.+)$`).exec(req.url ?? '')
      const body = m && files[m[1]]
      if (!body) {
        res.writeHead(404, { 'X-Error-Code': 'EntryNotFound' }).end()
        return
      }
      res.writeHead(200, {
        'Content-Length': body.length,
        'X-Repo-Commit': COMMIT,
        ETag: `"${createHash('sha256').update(body).digest('hex')}"`,
      })
      res.end(req.method === 'HEAD' ? undefined : body)
    })
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  })
  afterAll(() => new Promise<void>((r) => server.close(() => r())))

  it('downloads config and weights once, then loads from the cache offline', async () => {
    const cacheDir = mkdtempSync(join(tmpdir(), 'marvel-hubcache-'))
    const fromHub = await Tokenizer.fromPretrained('org/tiny', { endpoint, cacheDir })
    expect(fromHub.info).toMatchObject({ architecture: 'marvel', depth: 2, source: 'org/tiny' })
    expect(requests.filter((r) => r.startsWith('GET ') && r.endsWith('/model.safetensors'))).toHaveLength(1)

    const local = await Tokenizer.fromPretrained(modelDir)
    const img = { data: new Uint8Array(256 * 256 * 3).map((_, i) => (i * 13) % 256), width: 256, height: 256 }
    expect(Array.from((await fromHub.encode(img)).data)).toEqual(Array.from((await local.encode(img)).data))

    const before = requests.length
    const offline = await Tokenizer.fromPretrained('org/tiny', { endpoint, cacheDir, offline: true })
    expect(requests.length).toBe(before)
    expect(offline.info.parameters).toBe(local.info.parameters)
    for (const t of [fromHub, local, offline]) t.dispose()
  })

  it('a repo the hub does not have is a clear error', async () => {
    const cacheDir = mkdtempSync(join(tmpdir(), 'marvel-hubcache-'))
    const err = await Tokenizer.fromPretrained('org/missing', { endpoint, cacheDir }).catch((e) => e)
    expect(err.code).toBe('MARVEL_HUB')
    expect(err.message).toMatch(/org\/missing/)
  })

  it('a path-looking source that does not exist is not sent to the hub', async () => {
    const before = requests.length
    const err = await Tokenizer.fromPretrained('./no/such/model', { endpoint }).catch((e) => e)
    expect(err.code).toBe('MARVEL_IO')
    expect(requests.length).toBe(before)
  })
})
