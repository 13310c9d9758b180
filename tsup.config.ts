import { defineConfig } from 'tsup'

export default defineConfig([
  {
    entry: { index: 'src/index.ts' },
    format: ['esm', 'cjs'],
    dts: true,
    sourcemap: true,
    // The configs build in parallel: leave the CLI's and the tar writer's files to theirs.
    clean: ['!cli.js', '!cli.js.map', '!tar-writer.js'],
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
  {
    // The webdataset writer alone, for scripts/builtin-data/tar.mjs: one tar writer in the repository.
    entry: { 'tar-writer': 'src/data/tar-writer.ts' },
    format: ['esm'],
    clean: false,
    target: 'node20',
  },
])
