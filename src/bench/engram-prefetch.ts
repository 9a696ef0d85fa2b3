/**
 * Latency of EngramStore.prefetch for decode steps of a batch (docs/cli.md#engram-bench): every
 * request adds one token a step; the store hashes the tokens against each request's history (V4.1's
 * hash: N 4, K 8, V′ 99,092, seed-0 multipliers) and gathers 48 rows a token from two warm, mapped
 * tables (layers 1 and 14) into one tensor. The tables have V4.1's structure but primes sized to the
 * benchmark tables (src/bench/engram-tables.ts): random rows over GiBs miss the CPU caches as rows of
 * a 101 GB table do; page cache warm, as for a table resident in host memory.
 */
import { NgramHasher } from '../engram/hash.js';
import type { HashSession } from '../engram/hash-session.js';
import { EngramStore, type EngramPrefetchFormat } from '../engram/store.js';
import type { EngramConfig } from '../engram/config.js';
import type { EngramTableFile } from '../engram/table-format.js';
import { EngramTable } from '../engram/table.js';
import { warmPageCache } from './engram-tables.js';
import { zeros } from '../tensor.js';

/** Options of {@link benchPrefetch}. */
export interface PrefetchBenchOptions {
  /** Decode steps measured (after `warmup` untimed ones). */
  readonly steps: number;
  /** Untimed steps first. */
  readonly warmup: number;
  /** Requests in the batch (one new token each per step). */
  readonly requests: number;
  /** EngramStore threads. */
  readonly threads: number;
  /** Row format handed back. */
  readonly format: EngramPrefetchFormat;
}

/** Percentiles of the steps, milliseconds. */
export interface LatencySummary {
  /** Median. */
  readonly p50: number;
  /** 90th percentile (nearest rank). */
  readonly p90: number;
  /** 99th percentile (nearest rank). */
  readonly p99: number;
  /** Slowest step. */
  readonly max: number;
  /** Mean. */
  readonly mean: number;
}

/** What {@link benchPrefetch} reports. */
export interface PrefetchBench {
  /** The options the steps ran with. */
  readonly options: PrefetchBenchOptions;
  /** Rows per step (requests × layers × 24). */
  readonly rowsPerStep: number;
  /** Rows per layer table. */
  readonly tableRows: readonly number[];
  /** Bytes per layer table file. */
  readonly tableBytes: readonly number[];
  /** Step latency from the prefetch call to its settled promise, a new output each step, milliseconds. */
  readonly latencyMs: LatencySummary;
  /** The same with two outputs (SharedArrayBuffer tensors) reused in turn through `options.out`, milliseconds. */
  readonly reusedMs: LatencySummary;
  /** The hash part alone: the same steps' tokens appended to sessions of a separate hasher of the same config, milliseconds a step. */
  readonly hashMs: LatencySummary;
}

/** The p-th percentile (nearest rank) of sorted values. */
function percentile(sorted: readonly number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

function summarize(ms: readonly number[]): LatencySummary {
  const sorted = [...ms].sort((a, b) => a - b);
  return { p50: percentile(sorted, 50), p90: percentile(sorted, 90), p99: percentile(sorted, 99), max: sorted[sorted.length - 1]!, mean: ms.reduce((a, b) => a + b, 0) / ms.length };
}

/** Runs the steps over `files` (one per layer of `config`). */
export async function benchPrefetch(config: EngramConfig, files: readonly EngramTableFile[], o: PrefetchBenchOptions): Promise<PrefetchBench> {
  for (const f of files) warmPageCache(f.path, f.fileBytes);
  const tables = files.map((f) => EngramTable.open(f.path, { config, io: 'mmap', hugePages: true }));
  const ms: number[] = [];
  const hashMs: number[] = [];
  const reused: number[] = [];
  // The same appends the store makes, on sessions of their own: the step's hashing cost alone.
  const hasher = new NgramHasher(config);
  const sessions: HashSession[] = Array.from({ length: o.requests }, () => hasher.session());
  try {
    const store = EngramStore.open({ config, tables, threads: o.threads });
    const layers = tables.length;
    const perToken = (config.maxNgramSize - 1) * config.nHeads;
    const dtype = o.format === 'raw' ? 'uint8' : o.format;
    const width = o.format === 'raw' ? tables[0]!.rowBytes : config.headDim;
    const outs = [0, 1].map(() => zeros(dtype, [o.requests, layers, perToken, width], { shared: true }));
    let seed = 7;
    const rand = (): number => (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32;
    // Steps alternate between a new output and the two reused ones, so both see the same machine state.
    for (let s = 0; s < 2 * (o.warmup + o.steps); s++) {
      const batch = Array.from({ length: o.requests }, (_, r) => ({ id: r, tokens: [Math.floor(rand() * config.compressedVocabSize!)] }));
      const h0 = performance.now();
      for (const [r, req] of batch.entries()) sessions[r]!.append(req.tokens);
      const h1 = performance.now();
      const reuse = s % 2 === 1;
      const t0 = performance.now();
      await store.prefetch(batch, reuse ? { format: o.format, out: outs[(s >> 1) % 2]! } : { format: o.format });
      if (s >= 2 * o.warmup) {
        (reuse ? reused : ms).push(performance.now() - t0);
        hashMs.push(h1 - h0);
      }
    }
    store.close();
  } finally {
    for (const t of tables) t.close();
  }
  return {
    options: o, rowsPerStep: o.requests * tables.length * (config.maxNgramSize - 1) * config.nHeads,
    tableRows: files.map((f) => f.rows), tableBytes: files.map((f) => f.fileBytes), latencyMs: summarize(ms), reusedMs: summarize(reused), hashMs: summarize(hashMs),
  };
}
