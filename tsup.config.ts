import { defineConfig } from 'tsup'

export default defineConfig([
  {
    entry: { index: 'src/index.ts' },
    format: ['esm', 'cjs'],
    dts: true,
    sourcemap: true,
    // The two configs build in parallel: leave the CLI's files to the second one.
    clean: ['!cli.js', '!cli.js.map'],
    target: 'node20',
    // import.meta.url in the CommonJS build (the loader resolves the package root from it).
    shims: true,
    external: ['sharp'],
  },
  {
    // The `marvel` command (package.json `bin`): ESM only, no types; tsup marks it executable for the shebang.
    entry: { cli: 'src/cli/index.ts' },
    format: ['esm'],
    sourcemap: true,
    clean: false,
    target: 'node20',
    banner: { js: '#!/usr/bin/env node' },
    external: ['sharp', 'commander'],
  },
])
