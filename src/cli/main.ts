#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { FlashMLAError } from '../errors.js';
import { commandHelp, parseOptions, UsageError, type Command } from './args.js';
import { bench } from './bench.js';
import { compareCommand } from './compare.js';
import { demo } from './demo.js';
import { doctor } from './doctor.js';
import { engramBench } from './engram-bench.js';
import { engramConvert } from './engram-convert.js';
import { engramDemo } from './engram-demo.js';
import { engramInspect } from './engram-inspect.js';
import { engramVerify } from './engram-verify.js';

const COMMANDS: readonly Command[] = [demo, doctor, compareCommand, bench, engramInspect, engramVerify, engramConvert, engramDemo, engramBench];

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

function toolHelp(): string {
  const w = Math.max(...COMMANDS.map((c) => c.name.length));
  return ['Usage: flashmla-node <command> [options]', '',
    "DeepSeek FlashMLA decode attention from Node.js: FlashMLA's CUDA kernels, or the exact CPU reference.", '',
    'Commands:', ...COMMANDS.map((c) => `  ${c.name.padEnd(w)}  ${c.summary.split('\n')[0]}`), '',
    'Options:', '  -h, --help     show this help (or a command\'s: flashmla-node <command> --help)', '  --version      print the version', '',
    'Exit status: 0 when everything ran and passed, 1 on a failure, 2 on a usage error.', ''].join('\n');
}

/** Writes and waits until the text is handed to the OS (a pipe may otherwise lose it at exit). */
const write = (stream: NodeJS.WriteStream, text: string): Promise<void> => new Promise((resolve) => stream.write(text, () => resolve()));

/** Node's errors from the OS (ENOSPC, EACCES, ...) say what went wrong in one line; a stack only helps with bugs. */
const isSystemError = (e: unknown): e is NodeJS.ErrnoException => e instanceof Error && typeof (e as NodeJS.ErrnoException).syscall === 'string';

async function main(argv: string[]): Promise<number> {
  const [first, ...rest] = argv;
  if (first === undefined) {
    await write(process.stderr, toolHelp());
    return 2;
  }
  if (first === '--help' || first === '-h' || first === 'help') {
    await write(process.stdout, toolHelp());
    return 0;
  }
  if (first === '--version') {
    await write(process.stdout, `${version()}\n`);
    return 0;
  }
  // A group's commands are two words (`engram inspect`): the group's name then the command's.
  const group = COMMANDS.filter((c) => c.name.startsWith(`${first} `));
  const name = group.length > 0 && rest[0] !== undefined && !rest[0].startsWith('-') ? `${first} ${rest.shift()!}` : first;
  const cmd = COMMANDS.find((c) => c.name === name);
  try {
    if (cmd === undefined) {
      const known = group.length > 0 ? group : COMMANDS;
      throw new UsageError(`unknown command '${name}' (commands: ${known.map((c) => c.name).join(', ')})`);
    }
    const { values, positionals } = parseOptions(rest, cmd.options, cmd.positionals);
    if (values.help === true) {
      await write(process.stdout, commandHelp(cmd));
      return 0;
    }
    return await cmd.run(values, positionals);
  } catch (e) {
    const where = cmd ? `flashmla-node ${cmd.name}` : 'flashmla-node';
    if (e instanceof UsageError) {
      await write(process.stderr, `${where}: ${e.message} (see ${where} --help)\n`);
      return 2;
    }
    const msg = e instanceof FlashMLAError ? `[${e.code}] ${e.message}` : isSystemError(e) ? e.message : e instanceof Error ? (e.stack ?? e.message) : String(e);
    await write(process.stderr, `${where}: error: ${msg}\n`);
    return 1;
  }
}

// Explicit exit once output is flushed: worker threads or native handles must not keep the CLI alive.
const code = await main(process.argv.slice(2));
await write(process.stdout, '');
process.exit(code);
