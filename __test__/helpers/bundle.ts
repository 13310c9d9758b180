/**
 * Child processes that import the TypeScript sources: bundled to one ES module with esbuild (the bundler under
 * tsup), since Node 20 runs no TypeScript. The bundle finds the native addon through MARVEL_NATIVE_PATH.
 */
import { build } from 'esbuild'
import { join } from 'node:path'

import { platformName } from '../../src/binding.js'

const root = join(import.meta.dirname, '..', '..')

/** `entry` (a path under __test__/helpers) bundled into `outDir`; returns the bundle's path. */
export async function bundleChild(entry: string, outDir: string): Promise<string> {
  const outfile = join(outDir, entry.replace(/\.ts$/, '.mjs'))
  await build({
    entryPoints: [join(import.meta.dirname, entry)],
    outfile,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    external: ['sharp'],
    logLevel: 'error',
  })
  return outfile
}

/** The environment a bundled child needs to load the addon this checkout built. */
export const childEnv = { MARVEL_NATIVE_PATH: join(root, `marvel.${platformName()}.node`) }
