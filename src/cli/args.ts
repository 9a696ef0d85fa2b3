import { openSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { INT32_MAX } from '../tensor.js';

/** A wrong command line: the CLI prints its one-line message and exits with status 2. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

export interface OptionSpec {
  type: 'string' | 'boolean';
  /** Placeholder shown in help for string options. */
  value?: string;
  help: string;
}

export type OptionSpecs = Record<string, OptionSpec>;
export type OptionValues = Record<string, string | boolean | undefined>;

/** A CLI command: its options, help text and body; `run` resolves to the exit status. */
export interface Command {
  /** One word, or two for a command of a group (`engram inspect`). */
  name: string;
  summary: string;
  /** Usage line after `flashmla-node <name>`. */
  usage: string;
  options: OptionSpecs;
  /** Names of the positional arguments, all required (e.g. ['FILE']); default: none accepted. */
  positionals?: readonly string[];
  run(values: OptionValues, positionals: readonly string[]): Promise<number>;
}

/** A negative number, as in `--reps -5`: the value of the option before it, not an option. */
const NEGATIVE_NUMBER = /^-\.?\d/;

/**
 * Strict `node:util` parseArgs: unknown options and stray arguments are usage errors. Each string
 * option is joined to its value first, so `--reps -5` reads as `--reps=-5` (and fails the number's
 * own check) where parseArgs alone would only call the value "ambiguous".
 */
export function parseOptions(argv: string[], specs: OptionSpecs, positionalNames: readonly string[] = []): { values: OptionValues; positionals: string[] } {
  const options = Object.fromEntries(Object.entries({ ...specs, help: { type: 'boolean' as const, help: '' } })
    .map(([k, s]) => [k, { type: s.type, ...(k === 'help' ? { short: 'h' } : {}) }]));
  let parsed: { values: OptionValues; positionals: string[] };
  try {
    parsed = parseArgs({ args: joinValues(argv, specs), options, strict: true, allowPositionals: positionalNames.length > 0 }) as typeof parsed;
  } catch (e) {
    if (e instanceof UsageError) throw e;
    // parseArgs messages can span lines; keep the first.
    throw new UsageError((e as Error).message.split('\n')[0]!);
  }
  const { values, positionals } = parsed;
  if (values.help !== true && positionals.length !== positionalNames.length) {
    throw new UsageError(`expects ${positionalNames.join(' ')} (${positionalNames.length} argument${positionalNames.length === 1 ? '' : 's'}), got ${positionals.length}`);
  }
  return { values, positionals };
}

/**
 * `--name VALUE` as `--name=VALUE` for string options. A value is missing when the next argument is
 * absent or another option; one that starts with '-' (other than a negative number) must be given
 * as `--name=-…`, since it is as likely a forgotten value followed by an option.
 */
function joinValues(argv: string[], specs: OptionSpecs): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') return [...out, ...argv.slice(i)];
    const name = arg.startsWith('--') ? arg.slice(2) : '';
    if (!Object.hasOwn(specs, name) || specs[name]!.type !== 'string') {
      out.push(arg);
      continue;
    }
    const next = argv[i + 1];
    const what = `${arg} needs a value (${specs[name]!.value ?? 'VALUE'})`;
    if (next === undefined) throw new UsageError(what);
    if (next.startsWith('-') && !NEGATIVE_NUMBER.test(next)) throw new UsageError(`${what}, got '${next}'; write a value that starts with '-' as ${arg}=${next}`);
    out.push(`${arg}=${next}`);
    i++;
  }
  return out;
}

/** One of `choices`, or a usage error naming the option. */
export function choice<T extends string>(values: OptionValues, name: string, choices: readonly T[], fallback: T): T {
  const v = values[name];
  if (v === undefined) return fallback;
  if (typeof v !== 'string' || !(choices as readonly string[]).includes(v)) {
    throw new UsageError(`--${name} must be one of ${choices.join(', ')}, got '${String(v)}'`);
  }
  return v as T;
}

/** Most reference worker threads an option accepts: more is a typo, not a plan (each is an OS thread). */
export const MAX_THREADS = 1024;

/** Largest CUDA device ordinal an option accepts: the CUDA runtime takes it as a C int. */
export const MAX_DEVICE = INT32_MAX;

/** `text` as an integer in [min, max], else null; digits only, so '', '1e3', '0x10' and '1.0' are not taken. */
function toInteger(text: string, min: number, max: number): number | null {
  const n = Number(text);
  return /^\d+$/.test(text) && n >= min && n <= max ? n : null;
}

/** The accepted range in words, for messages. */
function rangeText(min: number, max: number): string {
  if (max < Number.MAX_SAFE_INTEGER) return `an integer from ${min} to ${max}`;
  return min === 1 ? 'a positive integer' : `an integer ≥ ${min}`;
}

/** An integer option in [min, max], or a usage error naming it and the range. */
export function integer(values: OptionValues, name: string, fallback: number, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const v = values[name];
  if (v === undefined) return fallback;
  const n = typeof v === 'string' ? toInteger(v, min, max) : null;
  if (n === null) throw new UsageError(`--${name} must be ${rangeText(min, max)}, got '${String(v)}'`);
  return n;
}

/** A comma-separated list of integers in [min, max], or a usage error naming the option and the range. */
export function integerList(values: OptionValues, name: string, fallback: number[], min = 0, max = Number.MAX_SAFE_INTEGER): number[] {
  const v = values[name];
  if (v === undefined) return fallback;
  const list = typeof v === 'string' ? v.split(',').map((s) => toInteger(s.trim(), min, max)) : [null];
  if (list.some((n) => n === null)) throw new UsageError(`--${name} must be a comma-separated list, each ${rangeText(min, max)}, got '${String(v)}'`);
  return list as number[];
}

/**
 * Opens the file a path option names for writing, before any work: a bad path (missing folder,
 * no permission, a directory) is then a usage error at once, not a lost run at the end.
 */
export function outputFile(values: OptionValues, name: string): { path: string; fd: number } | undefined {
  const path = str(values, name);
  if (path === undefined) return undefined;
  try {
    return { path, fd: openSync(path, 'w') };
  } catch (e) {
    // "ENOENT: no such file or directory, open '<path>'": the path is already in the message.
    throw new UsageError(`--${name}: cannot write '${path}' (${(e as Error).message.replace(/, open '.*$/, '')})`);
  }
}

export function str(values: OptionValues, name: string): string | undefined {
  const v = values[name];
  return typeof v === 'string' ? v : undefined;
}

/** Help text of a command. */
export function commandHelp(cmd: Command): string {
  const rows: [string, string][] = Object.entries(cmd.options).map(([k, s]) => [`--${k}${s.type === 'string' ? ` ${s.value ?? 'VALUE'}` : ''}`, s.help]);
  rows.push(['-h, --help', 'show this help']);
  const w = Math.max(...rows.map(([l]) => l.length));
  return [`Usage: flashmla-node ${cmd.name} ${cmd.usage}`, '', cmd.summary, '', 'Options:',
    ...rows.map(([l, h]) => `  ${l.padEnd(w)}  ${h}`), ''].join('\n');
}
