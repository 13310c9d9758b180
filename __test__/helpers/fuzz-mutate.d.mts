// Types for fuzz-mutate.mjs (plain JS so that the forked worker runs it without a TypeScript loader).
export interface BinTensor {
  name: string
  storage: string
  key: string
  numel: number
  offset: number
  shape: number[]
  stride: number[]
}
export interface BinParts {
  tensors: BinTensor[]
  storages: Uint8Array[]
}
export interface Seeds {
  config: Uint8Array
  safetensors: Uint8Array
  bin: BinParts
  images: Uint8Array[]
  tokens: Uint8Array
}
export type FuzzClass = 'config' | 'safetensors' | 'bin' | 'image' | 'tokens'
export function rng(seed: number): { u32(): number; int(n: number): number; pick<T>(list: readonly T[]): T; chance(p: number): boolean }
export function crc32(data: Uint8Array): number
export function storedZip(entries: Array<[string, Uint8Array]>): Uint8Array
export function statePickle(tensors: BinTensor[]): Uint8Array
export function binParts(safetensors: Uint8Array): BinParts
export function binBytes(parts: BinParts, pickle?: Uint8Array): Uint8Array
export function writeSafetensors(header: object, data: Uint8Array): Uint8Array
export function mutateInput(klass: FuzzClass, seeds: Seeds, seed: number, index: number): Uint8Array
export function readSeeds(dir: string): Promise<Seeds>
