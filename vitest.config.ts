import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['__test__/**/*.spec.ts'],
    testTimeout: 120_000,
    hookTimeout: 300_000,
    // Native compute uses its own threads; running spec files one at a time keeps timings and memory sane on 2 cores.
    fileParallelism: false,
  },
})
