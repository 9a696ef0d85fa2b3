import { parseArgs } from 'node:util';

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
  name: string;
  summary: string;
  /** Usage line after `flashmla-node <name>`. */
  usage: string;
  options: OptionSpecs;
  run(values: OptionValues): Promise<number>;
}

/** Strict `node:util` parseArgs: unknown options and stray positionals are usage errors. */
export function parseOptions(argv: string[], specs: OptionSpecs): OptionValues {
  const options = Object.fromEntries(Object.entries({ ...specs, help: { type: 'boolean' as const, help: '' } })
    .map(([k, s]) => [k, { type: s.type, ...(k === 'help' ? { short: 'h' } : {}) }]));
  try {
    const { values, positionals } = parseArgs({ args: argv, options, strict: true, allowPositionals: true });
    if (positionals.length > 0) throw new UsageError(`unexpected argument '${positionals[0]}'`);
    return values as OptionValues;
  } catch (e) {
    if (e instanceof UsageError) throw e;
    // parseArgs messages can span lines ("To specify a positional ..."); keep the first.
    throw new UsageError((e as Error).message.split('\n')[0]!);
  }
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

/** A non-negative integer option, or a usage error naming it. */
export function integer(values: OptionValues, name: string, fallback: number, min = 0): number {
  const v = values[name];
  if (v === undefined) return fallback;
  const n = Number(v);
  if (typeof v !== 'string' || !/^\d+$/.test(v) || n < min || !Number.isSafeInteger(n)) {
    throw new UsageError(`--${name} must be an integer ≥ ${min}, got '${String(v)}'`);
  }
  return n;
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
