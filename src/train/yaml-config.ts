/**
 * Training configs as the reference writes them: YAML read like OmegaConf reads it (YAML 1.1 scalars, so
 * `1_000_000`, `1e-4` and `True` are numbers and booleans), `${a.b.c}` references resolved after the overrides (so
 * `optimizer.params.learning_rate=2e-4` also moves `lr_scheduler.params.learning_rate: ${optimizer.params.learning_rate}`),
 * and dotted `key=value` overrides typed by the value they replace. Every problem is `MARVEL_CONFIG` naming the key.
 */
import { readFileSync } from 'node:fs'

import YAML from 'yaml'

import { MarvelError, invalidParameter } from '../errors.js'
import { pathParameter } from '../files.js'
import { isLoopKey } from './settings.js'

export type ConfigObject = Record<string, unknown>

function configError(message: string): MarvelError {
  return new MarvelError('MARVEL_CONFIG', message)
}

function isObject(v: unknown): v is ConfigObject {
  return v !== null && typeof v === 'object' && !Array.isArray(v)
}

/** The YAML file at `path` as a plain object (references not yet resolved). */
export function readConfigFile(path: string): ConfigObject {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (e) {
    const missing = (e as NodeJS.ErrnoException).code === 'ENOENT'
    throw new MarvelError('MARVEL_IO', `cannot read config ${path}: ${missing ? 'file not found' : (e as Error).message}`, { cause: e })
  }
  let parsed: unknown
  try {
    parsed = YAML.parse(text, { version: '1.1', merge: true })
  } catch (e) {
    throw configError(`config ${path} is not valid YAML: ${(e as Error).message}`)
  }
  if (!isObject(parsed)) throw configError(`config ${path} must hold a mapping of sections (experiment, model, ...), got ${parsed === null ? 'nothing' : typeof parsed}`)
  return parsed
}

function typeName(v: unknown): string {
  if (v === null || v === undefined) return 'null'
  if (Array.isArray(v)) return 'a list'
  if (isObject(v)) return 'a mapping'
  return `a ${typeof v}`
}

/** Path parts that name Object's machinery, not a key. */
const FORBIDDEN_PARTS = new Set(['__proto__', 'constructor', 'prototype'])

/** A value written on the command line: YAML 1.1 scalar syntax, like OmegaConf's dotlist. */
function parseValue(text: string): unknown {
  try {
    return YAML.parse(text, { version: '1.1' }) ?? null
  } catch {
    return text
  }
}

/**
 * `config` with each `key=value` of `overrides` applied. The key must exist, or sit directly in a section that does
 * (the trainer then checks the key's name against the ones it knows); the value takes the type of the value it
 * replaces: a number must parse as a number, a boolean as true/false, a string stays the text as written.
 */
export function applyOverrides(config: ConfigObject, overrides: readonly string[], known: (path: string) => boolean = () => false): ConfigObject {
  const out = structuredClone(config)
  for (const item of overrides) {
    const eq = item.indexOf('=')
    if (eq <= 0) throw configError(`override ${JSON.stringify(item)} is not key=value (e.g. training.per_gpu_batch_size=8)`)
    const key = item.slice(0, eq).trim()
    const text = item.slice(eq + 1)
    const path = key.split('.')
    if (path.some((p) => p === '')) throw configError(`override ${JSON.stringify(item)}: ${JSON.stringify(key)} is not a dotted key`)
    // Such a part would walk into (and write to) Object.prototype rather than the config.
    const forbidden = path.find((p) => FORBIDDEN_PARTS.has(p))
    if (forbidden !== undefined) throw configError(`override ${JSON.stringify(item)}: ${JSON.stringify(key)} contains ${forbidden}, which no config key may be named`)
    let parent: ConfigObject = out
    for (let i = 0; i < path.length - 1; i++) {
      const child = Object.hasOwn(parent, path[i]) ? parent[path[i]] : undefined
      if (!isObject(child)) {
        const section = path.slice(0, i + 1).join('.')
        throw configError(`unknown key ${key} in override ${item}: the config has no section ${section}`)
      }
      parent = child
    }
    const name = path[path.length - 1]
    const old = Object.hasOwn(parent, name) ? parent[name] : undefined
    const value = parseValue(text)
    if (!Object.hasOwn(parent, name)) {
      if (path.length === 1 || !known(key)) {
        throw configError(`unknown key ${key} in override ${item}: the config has no such key${path.length > 1 ? ` in ${path.slice(0, -1).join('.')}` : ''}`)
      }
      parent[name] = value
      continue
    }
    if (typeof old === 'string' && old.match(REFERENCE) !== null) {
      // A reference has no type of its own until resolved; the override's YAML says what it is (`3e-4`: a number).
      parent[name] = value
    } else if (typeof old === 'string') {
      parent[name] = text
    } else if (old === null || old === undefined) {
      parent[name] = value
    } else if (typeof old === 'number') {
      if (typeof value !== 'number' || !Number.isFinite(value)) throw configError(`override ${item}: ${key} is a number, got ${JSON.stringify(text)}`)
      parent[name] = value
    } else if (typeof old === 'boolean') {
      if (typeof value !== 'boolean') throw configError(`override ${item}: ${key} is a boolean (true/false), got ${JSON.stringify(text)}`)
      parent[name] = value
    } else if (typeName(value) !== typeName(old)) {
      throw configError(`override ${item}: ${key} is ${typeName(old)}, got ${typeName(value)}`)
    } else {
      parent[name] = value
    }
  }
  return out
}

function lookup(root: ConfigObject, path: string): { found: boolean; value: unknown } {
  let node: unknown = root
  for (const part of path.split('.')) {
    if (!isObject(node) || !Object.hasOwn(node, part)) return { found: false, value: undefined }
    node = node[part]
  }
  return { found: true, value: node }
}

const REFERENCE = /\$\{([^${}]+)\}/g

/**
 * `config` with every `${a.b.c}` replaced: a string that is exactly one reference takes the referenced value with
 * its type (OmegaConf's rule), a reference inside a longer string is spliced in as text. References may chain; a
 * cycle or a missing key is an error naming the key that holds the reference.
 */
export function resolveReferences(config: ConfigObject): ConfigObject {
  const root = structuredClone(config)
  const resolving = new Set<string>()
  const resolveAt = (path: string): unknown => {
    const { found, value } = lookup(root, path)
    if (!found) return undefined
    return resolveValue(value, path)
  }
  const resolveValue = (value: unknown, where: string): unknown => {
    if (typeof value === 'string') {
      const refs = [...value.matchAll(REFERENCE)]
      if (refs.length === 0) return value
      if (resolving.has(where)) throw configError(`${where}: the reference ${refs[0][0]} leads back to ${where} (a cycle)`)
      resolving.add(where)
      const target = (ref: RegExpMatchArray) => {
        const path = ref[1].trim()
        if (path.includes(':')) throw configError(`${where}: ${ref[0]} uses a resolver (${path.split(':')[0]}), which marvel does not support; write the value`)
        if (!lookup(root, path).found) throw configError(`${where}: ${ref[0]} names no key of the config`)
        return resolveAt(path)
      }
      let out: unknown
      if (refs.length === 1 && refs[0][0] === value) out = target(refs[0])
      else out = value.replace(REFERENCE, (...m) => String(target(m as unknown as RegExpMatchArray)))
      resolving.delete(where)
      setAt(root, where, out)
      return out
    }
    if (Array.isArray(value)) return value.map((v, i) => resolveValue(v, `${where}.${i}`))
    if (isObject(value)) {
      for (const k of Object.keys(value)) value[k] = resolveValue(value[k], where ? `${where}.${k}` : k)
      return value
    }
    return value
  }
  resolveValue(root, '')
  return root
}

function setAt(root: ConfigObject, path: string, value: unknown): void {
  const parts = path.split('.')
  let node: unknown = root
  for (const p of parts.slice(0, -1)) node = (node as ConfigObject)[p]
  if (isObject(node) || Array.isArray(node)) (node as Record<string, unknown>)[parts[parts.length - 1]] = value
}

/**
 * Reads, overrides and resolves a config file: what `marvel train config=<file> key=value ...` trains with. An
 * override may add a key the file lacks when `known(key)` says it exists (default: the keys the loop reads, and any
 * key in the sections the core checks when the trainer is created).
 */
export function loadTrainingConfig(path: string, overrides: readonly string[] = [], known: (path: string) => boolean = isLoopKey): ConfigObject {
  pathParameter('loadTrainingConfig', 'path', path)
  if (!Array.isArray(overrides) || !Array.from(overrides).every((o) => typeof o === 'string')) {
    throw invalidParameter('loadTrainingConfig', 'overrides', 'an array of "key=value" strings', overrides)
  }
  if (typeof known !== 'function') throw invalidParameter('loadTrainingConfig', 'known', 'a function of a dotted key', known)
  return resolveReferences(applyOverrides(readConfigFile(path), overrides, known))
}
