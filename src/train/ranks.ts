/**
 * Data-parallel ranks on one machine, on the CPU: `launchRanks` forks N copies of a training script with
 * `RANK` / `WORLD_SIZE` set, and each copy's `ProcessGroup` averages its flat gradients with the others' through
 * Node IPC. The launcher sums each element over the ranks in rank order (in float64, rounded once), so every rank
 * receives the same bits and the ranks' weights stay identical step after step.
 *
 * This is the plumbing and a reference collective for tests and small runs; multi-GPU training averages on the
 * devices (NCCL) through the core's `GradientReducer` instead.
 *
 * Failures end the whole run, never a hang: a rank that exits with an error, or exits while the others wait for it
 * in a collective, or does not join one within the collective timeout, gets every other rank killed and
 * `launchRanks` rejected with an error naming it.
 */
import { fork, type ChildProcess } from 'node:child_process'

import { MarvelError, integerParameter, invalidParameter, optionsParameter } from '../errors.js'
import { pathParameter } from '../files.js'

/** The environment variable that tells a rank its launcher listens on its IPC channel. */
export const LAUNCHER_ENV = 'MARVEL_RANK_LAUNCHER'

/** Values per IPC message: large gradients go in pieces, so no single message grows past 64 MiB. */
const CHUNK = 1 << 24

/** torch.distributed's default collective timeout. */
const DEFAULT_COLLECTIVE_TIMEOUT_MS = 30 * 60 * 1000

/** Grace between asking ranks to stop (SIGTERM, their checkpoint-on-signal) and killing them. */
const KILL_GRACE_MS = 5000

const FORWARDED = ['SIGINT', 'SIGTERM'] as const

type RankMessage = { marvel: 'reduce'; seq: number; data: Float32Array }
type LauncherMessage = { marvel: 'reduced'; seq: number; data: Float32Array } | { marvel: 'failed'; message: string }

function rankError(message: string): MarvelError {
  return new MarvelError('MARVEL_RANK', message)
}

/** The most ranks a run may have (and one more than the highest rank). */
export const MAX_WORLD_SIZE = 65536

/**
 * A rank or world size as given (an environment variable, a flag, an option): undefined when absent or empty, else
 * decimal digits (or a safe integer) from `min` to `max`, or an error naming it. The one parser of every way a
 * process is told its place, so `RANK`, `--rank` and `train({ rank })` accept the same values.
 */
export function rankInteger(name: string, value: string | number | undefined, min: number, max: number): number | undefined {
  if (value === undefined || value === '') return undefined
  const n = typeof value === 'number' ? value : /^\d+$/.test(value) ? Number(value) : NaN
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    throw new MarvelError('MARVEL_INVALID_ARGUMENT', `${name}=${value}: expected an integer from ${min} to ${max}`)
  }
  return n
}

/** The error of a rank whose launcher can no longer be reached. */
function launcherGone(how: string): MarvelError {
  return rankError(`the rank launcher is gone (${how}); this rank cannot reach the others`)
}

/** This process's place among the ranks, and the collective that averages across them. */
export class ProcessGroup {
  readonly rank: number
  readonly worldSize: number
  #seq = 0
  readonly #waiting = new Map<number, { resolve: (data: Float32Array) => void; reject: (e: Error) => void }>()
  #closed: MarvelError | null = null
  readonly #onMessage = (m: unknown) => this.#receive(m)
  readonly #onDisconnect = () => this.#fail(launcherGone('its IPC channel closed'))

  private constructor(rank: number, worldSize: number) {
    this.rank = rank
    this.worldSize = worldSize
    if (worldSize > 1) {
      process.on('message', this.#onMessage)
      process.on('disconnect', this.#onDisconnect)
      // The channel keeps the process alive only while a collective waits on it.
      process.channel?.unref()
    }
  }

  /**
   * The group of this process from `RANK` and `WORLD_SIZE` (as torchrun and Slurm-style launchers set them): one
   * rank when they are absent. More than one needs a process started by `launchRanks`.
   */
  static fromEnv(env: NodeJS.ProcessEnv = process.env): ProcessGroup {
    const worldSize = rankInteger('WORLD_SIZE', env.WORLD_SIZE, 1, MAX_WORLD_SIZE) ?? 1
    const rank = rankInteger('RANK', env.RANK, 0, worldSize - 1) ?? 0
    if (worldSize > 1 && (env[LAUNCHER_ENV] !== 'ipc' || typeof process.send !== 'function')) {
      throw new MarvelError(
        'MARVEL_INVALID_ARGUMENT',
        `WORLD_SIZE=${worldSize} but this process was not started by launchRanks (marvel train --nproc), so it has no ` +
          'channel to the other ranks; ranks on several machines need the NCCL engine',
      )
    }
    return new ProcessGroup(rank, worldSize)
  }

  /**
   * The element-wise mean of `x` over the ranks, identical on every rank. Every rank must call it with the same
   * length, in the same order of calls.
   */
  async allReduceMean(x: Float32Array): Promise<Float32Array> {
    if (!(x instanceof Float32Array)) throw invalidParameter('allReduceMean', 'x', 'a Float32Array', x)
    if (this.#closed) throw this.#closed
    if (this.worldSize === 1) return x.slice()
    const parts: Array<Promise<Float32Array>> = []
    for (let at = 0; at === 0 || at < x.length; at += CHUNK) parts.push(this.#reduce(x.subarray(at, at + CHUNK)))
    const reduced = await Promise.all(parts)
    if (reduced.length === 1) return reduced[0]
    const out = new Float32Array(x.length)
    reduced.forEach((part, i) => out.set(part, i * CHUNK))
    return out
  }

  #reduce(chunk: Float32Array): Promise<Float32Array> {
    const seq = this.#seq++
    return new Promise((resolve, reject) => {
      this.#waiting.set(seq, { resolve, reject })
      process.channel?.ref()
      const message: RankMessage = { marvel: 'reduce', seq, data: chunk.slice() }
      process.send!(message, undefined, undefined, (e) => {
        // A killed launcher shows first as a failed write (EPIPE) or as the channel's disconnect, whichever the
        // event loop sees first: one error for both.
        if (e) this.#fail(launcherGone(`sending to it failed: ${e.message}`))
      })
    })
  }

  #receive(m: unknown): void {
    const msg = m as LauncherMessage
    if (msg?.marvel === 'failed') return this.#fail(rankError(msg.message))
    if (msg?.marvel !== 'reduced') return
    const waiter = this.#waiting.get(msg.seq)
    if (!waiter) return
    this.#waiting.delete(msg.seq)
    if (this.#waiting.size === 0) process.channel?.unref()
    waiter.resolve(msg.data)
  }

  #fail(e: MarvelError): void {
    this.#closed ??= e
    for (const w of this.#waiting.values()) w.reject(e)
    this.#waiting.clear()
  }

  /** Stops listening to the launcher; later collectives throw. Collectives in flight are rejected. */
  close(): void {
    if (this.worldSize > 1 && !this.#closed) {
      process.off('message', this.#onMessage)
      process.off('disconnect', this.#onDisconnect)
      process.channel?.unref()
    }
    this.#fail(rankError('this process group was closed'))
  }
}

export interface LaunchOptions {
  /** Milliseconds a collective may wait for its last rank, from the first rank's arrival. Default 30 minutes. */
  collectiveTimeoutMs?: number
  /** Aborting stops every rank (SIGTERM, then SIGKILL after 5 s) and rejects. */
  signal?: AbortSignal
  /**
   * Pass SIGINT and SIGTERM sent to this process on to every rank (their checkpoint-on-signal) instead of ending this
   * process, which then ends when the ranks do; for a launcher that a job scheduler signals. Ranks started from a
   * terminal also get its Ctrl-C directly, so a rank should treat a repeated signal as one: the launcher counts the
   * signals it is sent, and on the second kills the ranks at once (SIGKILL) and rejects. Default false.
   */
  forwardSignals?: boolean
}

interface PendingReduce {
  parts: Array<Float32Array | undefined>
  arrived: number
  timer: NodeJS.Timeout
}

/**
 * What to quote from a rank's stderr in the error that names it: from the last error line Node printed (its
 * uncaught-exception report puts the message above the stack), else the last lines.
 */
function lastWords(text: string): string {
  const lines = text.trimEnd().split('\n')
  let from = Math.max(0, lines.length - 8)
  for (let i = lines.length - 1; i >= 0; i--) {
    if (/^\w*(Error|Exception)\b/.test(lines[i])) {
      from = i
      break
    }
  }
  const quoted = lines.slice(from, from + 8).join('\n')
  return quoted.length > 2000 ? quoted.slice(0, 2000) : quoted
}

/**
 * Runs `n` ranks of `script` (a Node script, given `args`) on this machine, each with `env` plus `RANK`,
 * `WORLD_SIZE`, `LOCAL_RANK` and `LOCAL_WORLD_SIZE`, and serves their collectives. Resolves when every rank has
 * exited with code 0; rejects with a `MARVEL_RANK` error naming the first rank that failed, once all are gone.
 */
export function launchRanks(n: number, script: string, args: string[] = [], env: Record<string, string> = {}, options?: LaunchOptions): Promise<void> {
  n = integerParameter('launchRanks', 'n', n, 1, 1024)
  pathParameter('launchRanks', 'script', script)
  if (!Array.isArray(args) || !args.every((a) => typeof a === 'string')) throw invalidParameter('launchRanks', 'args', 'an array of strings', args)
  if (env === null || typeof env !== 'object' || !Object.values(env).every((v) => typeof v === 'string')) throw invalidParameter('launchRanks', 'env', 'an object of strings', env)
  options = optionsParameter('launchRanks', options, ['collectiveTimeoutMs', 'signal', 'forwardSignals'])
  const timeoutMs = integerParameter('launchRanks', 'collectiveTimeoutMs', options.collectiveTimeoutMs ?? DEFAULT_COLLECTIVE_TIMEOUT_MS, 1, 2 ** 31 - 1)
  const signal = options.signal
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw invalidParameter('launchRanks', 'signal', 'an AbortSignal', signal)
  const forwardSignals = options.forwardSignals ?? false
  if (typeof forwardSignals !== 'boolean') throw invalidParameter('launchRanks', 'forwardSignals', 'a boolean', forwardSignals)

  return new Promise((resolve, reject) => {
    const children: ChildProcess[] = []
    const stderr = Array.from({ length: n }, () => '')
    const exited: Array<string | null> = Array.from({ length: n }, () => null)
    const pending = new Map<number, PendingReduce>()
    let failure: MarvelError | null = null
    let killTimer: NodeJS.Timeout | undefined
    let left = n

    const fail = (e: MarvelError) => {
      if (failure) return
      failure = e
      for (const p of pending.values()) clearTimeout(p.timer)
      pending.clear()
      // The ranks' collectives fail with the reason (a loop may still save what it has), then the ranks are stopped.
      const told: LauncherMessage = { marvel: 'failed', message: `the run stopped: ${e.message}` }
      for (const child of children) if (child.connected) child.send(told, () => undefined)
      for (const [r, child] of children.entries()) if (exited[r] === null) child.kill('SIGTERM')
      killTimer = setTimeout(() => children.forEach((c, r) => exited[r] === null && c.kill('SIGKILL')), KILL_GRACE_MS)
    }
    const onAbort = () => fail(rankError('the ranks were stopped: the launch was aborted'))
    signal?.addEventListener('abort', onAbort, { once: true })
    let signalsSent = 0
    const forward = (sig: NodeJS.Signals) => {
      if (++signalsSent === 1) return children.forEach((c, r) => exited[r] === null && c.kill(sig))
      // The ranks ignore repeats (a terminal's Ctrl-C reaches them twice), so "quit now" is the launcher's to carry out.
      fail(rankError(`the ranks were killed: a second ${sig} means quit at once, without the checkpoint of the first`))
      children.forEach((c, r) => exited[r] === null && c.kill('SIGKILL'))
    }
    if (forwardSignals) for (const sig of FORWARDED) process.on(sig, forward)

    const finish = () => {
      clearTimeout(killTimer)
      signal?.removeEventListener('abort', onAbort)
      if (forwardSignals) for (const sig of FORWARDED) process.off(sig, forward)
      if (failure) reject(failure)
      else resolve()
    }

    const onReduce = (rank: number, msg: RankMessage) => {
      if (failure) return
      if (!Number.isSafeInteger(msg.seq) || !(msg.data instanceof Float32Array)) return fail(rankError(`rank ${rank} sent a malformed collective message`))
      const gone = exited.findIndex((e) => e !== null)
      if (gone >= 0) return fail(rankError(`rank ${gone} ${exited[gone]} while rank ${rank} waited for it in collective #${msg.seq}`))
      let p = pending.get(msg.seq)
      if (!p) {
        const timer = setTimeout(() => {
          const missing = p!.parts.flatMap((part, r) => (part === undefined ? [r] : []))
          fail(rankError(`rank ${missing.join(', rank ')} did not join collective #${msg.seq} within ${timeoutMs} ms (the other ranks waited in it)`))
        }, timeoutMs)
        p = { parts: Array.from({ length: n }), arrived: 0, timer }
        pending.set(msg.seq, p)
      }
      const first = p.parts.find((part) => part !== undefined)
      if (first && first.length !== msg.data.length) {
        return fail(rankError(`rank ${rank} gave collective #${msg.seq} ${msg.data.length} values, rank ${p.parts.indexOf(first)} gave ${first.length}`))
      }
      p.parts[rank] = msg.data
      if (++p.arrived < n) return
      clearTimeout(p.timer)
      pending.delete(msg.seq)
      const parts = p.parts as Float32Array[]
      const out = new Float32Array(parts[0].length)
      for (let i = 0; i < out.length; i++) {
        let sum = parts[0][i]
        for (let r = 1; r < n; r++) sum += parts[r][i]
        out[i] = sum / n
      }
      const reply: LauncherMessage = { marvel: 'reduced', seq: msg.seq, data: out }
      // A rank gone since it sent its part is reported by its `close`; nothing to do for the send.
      for (const child of children) if (child.connected) child.send(reply, () => undefined)
    }

    for (let rank = 0; rank < n; rank++) {
      const child = fork(script, args, {
        env: { ...process.env, ...env, RANK: String(rank), WORLD_SIZE: String(n), LOCAL_RANK: String(rank), LOCAL_WORLD_SIZE: String(n), [LAUNCHER_ENV]: 'ipc' },
        serialization: 'advanced',
        stdio: ['inherit', 'inherit', 'pipe', 'ipc'],
      })
      children.push(child)
      child.stderr!.on('data', (chunk: Buffer) => {
        process.stderr.write(chunk)
        stderr[rank] = (stderr[rank] + chunk.toString('utf8')).slice(-8192)
      })
      child.on('message', (m: unknown) => {
        if ((m as RankMessage)?.marvel === 'reduce') onReduce(rank, m as RankMessage)
      })
      child.on('error', (e) => fail(rankError(`rank ${rank} could not run ${script}: ${e.message}`)))
      // `close`, not `exit`: the rank's stderr has been read to its end, so its last words are in the message.
      child.on('close', (code, sig) => {
        exited[rank] = sig ? `was killed by ${sig}` : `exited with code ${code}`
        if (code !== 0 && !failure) {
          const said = lastWords(stderr[rank])
          fail(rankError(`rank ${rank} of ${n} ${exited[rank]}${said ? `:\n${said}` : ''}`))
        } else if (pending.size > 0) {
          const seq = Math.min(...pending.keys())
          if (pending.get(seq)!.parts[rank] === undefined) fail(rankError(`rank ${rank} ${exited[rank]} while the other ranks waited for it in collective #${seq}`))
        }
        if (--left === 0) finish()
      })
    }
    if (signal?.aborted) onAbort()
  })
}
