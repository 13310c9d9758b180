/**
 * The `marvel` command (package.json `bin`, built to dist/cli.js). Exit codes: 0 success, 1 failure, 2 bad usage.
 * A failure prints one line, `marvel: <message> (<code>)`, on stderr; `MARVEL_DEBUG=1` adds the stack.
 */
import { existsSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

import { Command, CommanderError } from 'commander'

import { UsageError } from './common.js'
import { registerDecode } from './decode.js'
import { registerEncode } from './encode.js'
import { registerEval } from './eval.js'
import { registerInfo } from './info.js'
import { registerMakeShards } from './make-shards.js'
import { registerPretokenize } from './pretokenize.js'
import { registerPlot } from './plot.js'
import { registerReconstruct } from './reconstruct.js'
import { registerTrain } from './train.js'

const EXIT_FAILURE = 1
const EXIT_USAGE = 2

function packageVersion(): string {
  let dir = dirname(fileURLToPath(import.meta.url))
  for (let i = 0; i < 4; i++, dir = dirname(dir)) {
    const pkg = join(dir, 'package.json')
    if (existsSync(pkg)) {
      const json = JSON.parse(readFileSync(pkg, 'utf8'))
      if (json.name === 'marvel-tokenizer') return json.version
    }
  }
  return 'unknown'
}

function program(): Command {
  const root = new Command('marvel')
    .description('MARVEL / TiTok 1D image tokenizer: images to a few dozen tokens and back.')
    .version(packageVersion(), '-V, --version')
    // Errors are reported once, by report() below, as one line.
    .exitOverride()
    .configureOutput({ outputError: () => {} })
    .addHelpText(
      'after',
      '\nEnvironment:\n' +
        '  HF_ENDPOINT, HF_HOME, HF_HUB_CACHE, HF_TOKEN, HF_HUB_OFFLINE   Hugging Face hub access and cache\n' +
        '  MARVEL_NUM_THREADS                                           compute threads (default: physical cores)\n' +
        '  MARVEL_INCEPTION_WEIGHTS                                     pytorch-fid Inception weights for marvel eval (rFID)\n' +
        '  MARVEL_DEBUG=1                                               print stack traces on failure\n' +
        '\nExit codes: 0 success, 1 failure, 2 bad usage.',
    )
  registerEncode(root)
  registerDecode(root)
  registerReconstruct(root)
  registerInfo(root)
  registerTrain(root)
  registerMakeShards(root)
  registerPretokenize(root)
  registerEval(root)
  registerPlot(root)
  return root
}

function oneLine(message: string): string {
  return message.replace(/^error: /, '').replace(/\s*\n\s*/g, '; ').trim()
}

/** Print the failure line and return the exit code. */
function report(e: unknown, argv: string[], commands: string[]): number {
  if (e instanceof CommanderError) {
    // --help, --version and `marvel help <command>` end parsing with exit code 0.
    if (e.exitCode === 0) return 0
    // `marvel help <unknown>`: commander has already printed the usage to stderr.
    if (e.code === 'commander.help') return EXIT_USAGE
    const command = argv.find((a) => commands.includes(a))
    const help = command ? `marvel ${command} --help` : 'marvel --help'
    process.stderr.write(`marvel: ${oneLine(e.message)}; see ${help} (MARVEL_INVALID_ARGUMENT)\n`)
    return EXIT_USAGE
  }
  const err = e as Error & { code?: unknown; syscall?: unknown }
  // Every failure line carries a documented code: a stray Node system error (EACCES, ...) is an I/O failure, and
  // anything else uncoded is a bug in marvel.
  const code =
    typeof err?.code === 'string' && err.code.startsWith('MARVEL_') ? err.code : typeof err?.syscall === 'string' ? 'MARVEL_IO' : 'MARVEL_INTERNAL'
  process.stderr.write(`marvel: ${oneLine(err?.message ?? String(e))} (${code})\n`)
  if (process.env.MARVEL_DEBUG === '1' && err?.stack) process.stderr.write(`${err.stack}\n`)
  return e instanceof UsageError ? EXIT_USAGE : EXIT_FAILURE
}

async function main(argv: string[]): Promise<number> {
  const root = program()
  const commands = root.commands.map((c) => c.name())
  if (argv.length === 0) {
    process.stderr.write(`marvel: no command given; one of ${commands.join(', ')} (see marvel --help) (MARVEL_INVALID_ARGUMENT)\n`)
    return EXIT_USAGE
  }
  try {
    await root.parseAsync(argv, { from: 'user' })
    return 0
  } catch (e) {
    if (process.env.MARVEL_DEBUG === '1' && e instanceof CommanderError) process.stderr.write(`${e.stack}\n`)
    return report(e, argv, commands)
  }
}

// A closed pipe (`marvel info | head -1`) is not a failure.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(0)
  throw e
})

process.exitCode = await main(process.argv.slice(2))
