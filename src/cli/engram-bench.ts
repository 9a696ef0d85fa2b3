import { readFileSync, statSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { benchGather, type GatherBench } from '../bench/engram-gather.js';
import { benchHash, type HashBench } from '../bench/engram-hash.js';
import { benchPrefetch, type PrefetchBench } from '../bench/engram-prefetch.js';
import { benchTables } from '../bench/engram-tables.js';
import { choice, integer, MAX_THREADS, str, UsageError, type Command, type OptionValues } from './args.js';
import { bytesText, unitProgress } from './engram-progress.js';
import { fmtMs, formatTable } from './table.js';

const PARTS = ['gather', 'hash', 'prefetch'] as const;
type Part = (typeof PARTS)[number];

/** `--table-gib`: a positive decimal number of GiB (fractions allowed for small runs), at most 1024. */
function tableBytes(values: OptionValues): number {
  const v = values['table-gib'];
  if (v === undefined) return 4 * 2 ** 30;
  const n = typeof v === 'string' && /^\d+(\.\d+)?$/.test(v) ? Number(v) : NaN;
  if (!(n > 0 && n <= 1024) || n * 2 ** 30 < 264 * 48) throw new UsageError(`--table-gib must be a number of GiB from 0.0001 to 1024, got '${String(v)}'`);
  return Math.floor(n * 2 ** 30);
}

function parts(values: OptionValues): Part[] {
  const v = str(values, 'only');
  if (v === undefined) return [...PARTS];
  const list = v.split(',').map((s) => s.trim());
  const bad = list.find((p) => !(PARTS as readonly string[]).includes(p));
  if (bad !== undefined || list.length === 0) throw new UsageError(`--only must be a comma-separated list of ${PARTS.join(', ')}, got '${v}'`);
  return list as Part[];
}

/** What the machine is, for the record next to the numbers. */
function machine(): { nproc: number; cpu: string; thp: string } {
  let thp = 'unknown';
  try {
    thp = readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8').trim();
  } catch {
    // not Linux, or not exposed
  }
  return { nproc: cpus().length, cpu: cpus()[0]?.model ?? 'unknown', thp };
}

const M = (x: number): string => (x / 1e6).toFixed(2);

function gatherText(g: GatherBench, ids: number, repeats: number): string {
  return [`(a) gather: ${ids.toLocaleString('en-US')} random ids a repeat, median of ${repeats} repeats; table ${g.path}`,
    `    ${g.rows.toLocaleString('en-US')} rows × 264 B = ${bytesText(g.tableBytes)}, page cache warmed by read(2) at ${(g.warmReadBytesPerS / 1e9).toFixed(2)} GB/s; ` +
    `MADV_HUGEPAGE ${g.hugePages ? 'accepted' : 'refused'}; dequantisation kernels ${g.kernels}`,
    formatTable(['method', 'M rows/s', 'per CPU-s', 'GB/s', 'M V4.1 tokens/s', 'vs baseline', 'what'],
      g.results.map((r) => [r.method, M(r.rowsPerS), r.rowsPerCpuS === null ? '–' : M(r.rowsPerCpuS), (r.bytesPerS / 1e9).toFixed(2), M(r.tokensPerS),
        r.vsBaseline === null ? '–' : `${r.vsBaseline.toFixed(2)}x`, r.note]), [1, 2, 3, 4, 5]),
  ].join('\n');
}

function hashText(h: HashBench): string {
  return [`(b) hash, V4.1 layout (2 layers × 24 row ids a token), one thread: prefill ${h.tokens.toLocaleString('en-US')} tokens in appends of ${h.chunk} (2% dead), ` +
    `decode ${h.decodeTokens.toLocaleString('en-US')} single-token appends; median of ${h.runs} runs` + (h.nativeMissing !== undefined ? `\n    native tier absent: ${h.nativeMissing}` : ''),
  formatTable(['tier', 'prefill M tokens/s', 'per CPU-s', 'decode M tokens/s', 'per CPU-s'],
    h.results.map((r) => [r.tier, M(r.prefillTokensPerS), M(r.prefillTokensPerCpuS), M(r.decodeTokensPerS), M(r.decodeTokensPerCpuS)]), [1, 2, 3, 4]),
  ].join('\n');
}

function prefetchText(p: PrefetchBench): string {
  const o = p.options;
  const l = p.latencyMs;
  const h = p.hashMs;
  const r = p.reusedMs;
  return [`(c) EngramStore.prefetch of a ${o.requests}-request decode step (${o.requests} tokens, ${p.rowsPerStep} rows, ${o.format} out), threads ${o.threads}, ` +
    `${o.steps} steps after ${o.warmup} untimed; V4.1 hash over two warm mapped tables of ${p.tableRows.map((r) => r.toLocaleString('en-US')).join(' and ')} rows (${p.tableBytes.map(bytesText).join(', ')})`,
  formatTable(['what', 'p50 ms', 'p90 ms', 'p99 ms', 'max ms', 'mean ms', 'note'], [
    ['prefetch step', fmtMs(l.p50), fmtMs(l.p90), fmtMs(l.p99), fmtMs(l.max), fmtMs(l.mean), 'a new output each step; target p99 ≤ 1 ms'],
    ['  reused out', fmtMs(r.p50), fmtMs(r.p90), fmtMs(r.p99), fmtMs(r.max), fmtMs(r.mean), 'two outputs (options.out) used in turn; target p99 ≤ 1 ms'],
    ['hash alone', fmtMs(h.p50), fmtMs(h.p90), fmtMs(h.p99), fmtMs(h.max), fmtMs(h.mean), 'the same appends on separate sessions, just before each step'],
  ], [1, 2, 3, 4, 5]),
  ].join('\n');
}

/** `flashmla-node engram bench`: gather, hash and prefetch numbers of this machine. */
export const engramBench: Command = {
  name: 'engram bench',
  usage: '[--only gather,hash,prefetch] [--table-gib N] [--rows N] [--steps N] [--json] …',
  summary: 'Engram host-side numbers, each measured against a baseline or ceiling in the same run:\n' +
    '(a) random-row gathers from a warm synthetic packed table (default 4 GiB a layer in the temp folder, reused):\n' +
    '    the addon\'s plain C gather, lookupRaw, lookup bf16/fp32, a sequential pass, PCIe Gen5 x16;\n' +
    '(b) hash tokens/s per tier for the V4.1 layout; (c) EngramStore.prefetch latency of decode steps with\n' +
    '    the V4.1 hash over two warm tables (p50/p90/p99). Numbers on a shared machine are noisy.',
  options: {
    only: { type: 'string', value: 'LIST', help: 'parts to run: gather, hash, prefetch (default: all)' },
    'table-gib': { type: 'string', value: 'N', help: 'size of each layer\'s table in GiB, fractions allowed; gather uses layer 1\'s, prefetch both (default: 4)' },
    dir: { type: 'string', value: 'DIR', help: 'folder of the benchmark tables (default: the OS temp folder)' },
    rows: { type: 'string', value: 'N', help: 'random row ids per gather repeat (default: 2000000)' },
    repeats: { type: 'string', value: 'N', help: 'timed gather repeats (default: 5)' },
    batch: { type: 'string', value: 'N', help: 'row ids per gather call (default: 4096, about one decode step of 85 V4.1 tokens)' },
    'hash-tokens': { type: 'string', value: 'N', help: 'tokens hashed per prefill run (default: 1000000)' },
    'hash-runs': { type: 'string', value: 'N', help: 'timed hash runs per tier (default: 5)' },
    steps: { type: 'string', value: 'N', help: 'prefetch decode steps (default: 1000)' },
    warmup: { type: 'string', value: 'N', help: 'untimed prefetch steps first (default: 20)' },
    requests: { type: 'string', value: 'N', help: 'requests per decode step (default: 64)' },
    threads: { type: 'string', value: 'N', help: 'EngramStore threads (default: 2)' },
    format: { type: 'string', value: 'NAME', help: 'prefetch row format: bf16 (default), fp32 or raw' },
    json: { type: 'boolean', help: 'print the results as JSON' },
  },
  async run(values) {
    const only = parts(values);
    const bytes = tableBytes(values);
    const dir = str(values, 'dir') ?? tmpdir();
    if (!statSync(dir, { throwIfNoEntry: false })?.isDirectory()) throw new UsageError(`--dir: '${dir}' is not a folder`);
    const ids = integer(values, 'rows', 2_000_000, 1, 2 ** 28);
    const repeats = integer(values, 'repeats', 5, 1, 1000);
    const batch = integer(values, 'batch', 4096, 2, 1 << 22);
    const hashTokens = integer(values, 'hash-tokens', 1_000_000, 1, 1 << 28);
    const hashRuns = integer(values, 'hash-runs', 5, 1, 1000);
    const steps = integer(values, 'steps', 1000, 1, 1_000_000);
    const warmup = integer(values, 'warmup', 20, 0, 100_000);
    const requests = integer(values, 'requests', 64, 1, 65536);
    const threads = integer(values, 'threads', 2, 1, Math.min(256, MAX_THREADS));
    const format = choice(values, 'format', ['bf16', 'fp32', 'raw'] as const, 'bf16');
    const json = values.json === true;
    const out: { machine: ReturnType<typeof machine>; gather?: GatherBench; hash?: HashBench; prefetch?: PrefetchBench } = { machine: machine() };
    const say = (text: string): void => { if (!json) process.stdout.write(`${text}\n\n`); };
    say(`machine: ${out.machine.nproc} CPUs (${out.machine.cpu}), transparent huge pages: ${out.machine.thp}; numbers on a shared machine are noisy`);
    const needTables = only.includes('gather') || only.includes('prefetch');
    const tables = needTables ? await (async () => {
      const progress = unitProgress(process.stderr, 'writing a benchmark table', 'rows', 1 << 20);
      const t = await benchTables(dir, bytes, only.includes('prefetch') ? 2 : 1, (d, total) => progress.update(d, total));
      progress.end();
      for (const p of t.written) process.stderr.write(`wrote ${p}; later runs with the same --table-gib reuse it\n`);
      return t;
    })() : undefined;
    if (only.includes('gather')) {
      out.gather = await benchGather(tables!.files[0]!, { ids, repeats, batch });
      say(gatherText(out.gather, ids, repeats));
    }
    if (only.includes('hash')) {
      out.hash = benchHash(hashTokens, hashRuns);
      say(hashText(out.hash));
    }
    if (only.includes('prefetch')) {
      out.prefetch = await benchPrefetch(tables!.config, tables!.files, { steps, warmup, requests, threads, format });
      say(prefetchText(out.prefetch));
    }
    if (json) process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
    return 0;
  },
};
