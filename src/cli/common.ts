/** What the commands share: option parsers, model loading, token files, output naming, and failure reporting. */
import { existsSync, statSync } from 'node:fs'
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises'
import { basename, extname, join } from 'node:path'

import { InvalidArgumentError, type Command } from 'commander'

import { weightFiles } from '../binding.js'
import { MarvelError } from '../errors.js'
import { expectKind, outputPath } from '../files.js'
import { createProgressPrinter, resolveModelFiles } from '../hub.js'
import { Tokenizer } from '../tokenizer.js'
import { Tokens, type TokensJSON } from '../tokens.js'

export const DEFAULT_MODEL = 'yucornetto/tokenizer_titok_l32_imagenet'

/** A bad command line found after parsing (a value only the model can judge, a wrong file kind): exit code 2. */
export class UsageError extends MarvelError {
  constructor(message: string) {
    super('MARVEL_INVALID_ARGUMENT', message)
    this.name = 'UsageError'
  }
}

/** commander parser for options that take a positive integer (at most `max`); the message names the bad value. */
export function positiveInt(flag: string, max = Number.MAX_SAFE_INTEGER): (value: string) => number {
  return (value) => {
    if (!/^\d+$/.test(value.trim()) || Number(value) < 1 || !Number.isSafeInteger(Number(value))) {
      throw new InvalidArgumentError(`${flag} must be a positive integer, got ${JSON.stringify(value)}`)
    }
    if (Number(value) > max) throw new InvalidArgumentError(`${flag} must be at most ${max}, got ${JSON.stringify(value)}`)
    return Number(value)
  }
}

/** The `--model` option every model command takes. */
export function addModelOption(cmd: Command): Command {
  return cmd.option('-m, --model <dir|repo>', 'model folder, or a Hugging Face repo id (downloaded into the hub cache)', DEFAULT_MODEL)
}

/** The images-per-native-call option (memory bound on long lists; the progress bar advances per batch). */
export function addBatchOption(cmd: Command): Command {
  // The library's bound on encode()'s batchSize.
  return cmd.option('-b, --batch-size <n>', 'images per batch', positiveInt('--batch-size', 65536), 16)
}

/** Load a model folder or hub repo (download progress on a terminal; HF_* variables honoured by the hub module). */
export async function loadModel(source: string): Promise<Tokenizer> {
  return withModelOption(() => Tokenizer.fromPretrained(source, { onProgress: createProgressPrinter(process.stderr) }))
}

/** Runs a model lookup, naming `--model` in its errors: on the command line the option is what the user knows. */
export async function withModelOption<T>(lookup: () => Promise<T>): Promise<T> {
  try {
    return await lookup()
  } catch (e) {
    const m = e instanceof MarvelError ? /^(fromPretrained|inspect): (.*)$/s.exec(e.message) : null
    if (m) throw new MarvelError((e as MarvelError).code, `--model ${m[2]}`, { cause: e })
    throw e
  }
}

/** The weights file a loaded model came from, for `info` (local folder, or the hub cache without any request). */
export async function weightsFile(source: string): Promise<string | undefined> {
  if (existsSync(source) && statSync(source).isDirectory()) {
    return weightFiles().map((f) => join(source, f)).find((f) => existsSync(f))
  }
  try {
    return (await resolveModelFiles(source, { offline: true })).weights
  } catch {
    return undefined
  }
}

/** `d` checked against what the model holds (exit 2 when it asks for more). */
export function checkDepth(depth: number, modelDepth: number, what = 'the model'): number {
  if (depth > modelDepth) throw new UsageError(`--depth ${depth} is more than the ${modelDepth} depth(s) ${what} has`)
  return depth
}

/** Output file stems, one per input: the file name without extension, made unique (`cat`, `cat-1`, ...). */
export function outputNames(files: readonly string[]): string[] {
  const seen = new Set<string>()
  return files.map((f) => {
    const stem = basename(f, extname(f)) || 'image'
    let name = stem
    for (let i = 1; seen.has(name); i++) name = `${stem}-${i}`
    seen.add(name)
    return name
  })
}

export async function ensureDir(dir: string): Promise<void> {
  try {
    await mkdir(dir, { recursive: true })
  } catch (e) {
    throw new MarvelError('MARVEL_IO', `cannot create output folder ${dir}: ${(e as Error).message}`, { cause: e })
  }
}

export async function writeOutput(path: string, data: string | Uint8Array): Promise<void> {
  await outputPath('--out', 'path', path, 'output')
  try {
    await writeFile(path, data)
  } catch (e) {
    throw new MarvelError('MARVEL_IO', `cannot write ${path}: ${(e as Error).message}`, { cause: e })
  }
}

export async function fileSize(path: string): Promise<number> {
  return (await stat(path)).size
}

/** The JSON token file `encode --out x.json` writes: `Tokens.toJSON()` plus the source images. */
export interface TokenFileJSON extends TokensJSON {
  files: string[]
}

/** Read a token file, `.bin` (`Tokens.toBytes()`) or `.json` (recognised by content, not by name). */
export async function readTokenFile(path: string): Promise<{ tokens: Tokens; files?: string[] }> {
  // A FIFO would block the read forever.
  await expectKind(path, 'tokens')
  let bytes: Buffer
  try {
    bytes = await readFile(path)
  } catch (e) {
    const missing = (e as NodeJS.ErrnoException).code === 'ENOENT'
    throw new MarvelError('MARVEL_IO', `cannot read tokens ${path}: ${missing ? 'file not found' : (e as Error).message}`, { cause: e })
  }
  const head = bytes.subarray(0, 64).toString('latin1').trimStart()
  const named = (e: unknown) => (e instanceof MarvelError ? new MarvelError(e.code, `tokens ${path}: ${e.message}`, { cause: e }) : e)
  if (!head.startsWith('{')) {
    try {
      return { tokens: Tokens.fromBytes(bytes) }
    } catch (e) {
      throw named(e)
    }
  }
  let json: TokenFileJSON
  let tokens: Tokens
  try {
    json = JSON.parse(bytes.toString('utf8'))
  } catch (e) {
    throw new MarvelError('MARVEL_INVALID_ARGUMENT', `tokens ${path} is not valid JSON: ${(e as Error).message}`, { cause: e })
  }
  try {
    tokens = Tokens.fromJSON(json)
  } catch (e) {
    throw named(e)
  }
  const files = Array.isArray(json.files) && json.files.length === tokens.batch && json.files.every((f) => typeof f === 'string') ? json.files : undefined
  return { tokens, files }
}

/** Print a value as JSON on stdout (Infinity, which JSON lacks, becomes null). */
export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, (_, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2) + '\n')
}

/** `1234567` → `1.23 M`. */
export function formatCount(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} G`
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} M`
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} k`
  return String(n)
}

export function formatBytes(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} GB`
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} MB`
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} kB`
  return `${n} B`
}

/** Split `items` into runs of `size`. */
export function batches<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = []
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size))
  return out
}
