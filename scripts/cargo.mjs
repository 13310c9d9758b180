#!/usr/bin/env node
// Runs cargo with `--target <host triple>` appended. `napi build` always passes an explicit --target, which puts
// its artifacts under target/<triple>/; building the tests for the same explicit target lets both share one
// compiled candle instead of building it twice (minutes on 2 cores). Tests run with --workspace (marvel-node
// included) so cargo resolves the same features as the addon build and reuses its artifacts.
import { execFileSync, spawnSync } from 'node:child_process'

const host = /^host: (.+)$/m.exec(execFileSync('rustc', ['-vV'], { encoding: 'utf8' }))?.[1]
if (!host) {
  console.error('cannot read the host triple from `rustc -vV`')
  process.exit(2)
}
const args = process.argv.slice(2)
const sep = args.indexOf('--')
const withTarget = sep < 0 ? [...args, '--target', host] : [...args.slice(0, sep), '--target', host, ...args.slice(sep)]
const r = spawnSync('cargo', withTarget, { stdio: 'inherit' })
process.exit(r.status ?? 1)
