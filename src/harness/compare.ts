import { FlashMLAError } from '../errors.js';
import { FlashMLA } from '../flashmla.js';
import { referenceDecode } from '../reference/index.js';
import { getMlaMetadata } from '../sched-meta.js';
import { isHostTensor, type HostTensor, type Tensor } from '../tensor.js';
import type { DecodeArgs, DecodeResult } from '../types.js';
import type { DecodeCase } from './cases.js';
import { generateEntry, matrixEntries, type MatrixName } from './matrix.js';
import { checkIsAllclose, TOLERANCES, type AllcloseResult, type Tolerance } from './metrics.js';
import { oracleDecode } from './oracle.js';

/** Any decode implementation on host tensors (e.g. one under development). */
export interface CustomSide {
  /** Shown in reports. */
  name: string;
  /** Runs one decode call on host tensors. */
  decode(args: DecodeArgs): Promise<DecodeResult<HostTensor>>;
}

/** A side of a comparison: a backend by name, the float64 oracle, an open FlashMLA instance, or a custom one. */
export type CompareSide = 'cuda' | 'reference' | 'oracle' | FlashMLA | CustomSide;

/** Cases drawn from a named matrix; entry i is generated with seed `seed + i`. */
export interface MatrixSource {
  /** 'quick' or 'full'. */
  matrix: MatrixName;
  /** Base seed (default 0). */
  seed?: number;
}

/** One progress event of `compare`: a case starting, or finished (`result` set). */
export interface CompareProgress {
  /** 0-based position among all candidate cases. */
  index: number;
  /** Candidate cases in all. */
  total: number;
  /** The case. */
  name: string;
  /** Set when the case has finished. */
  result?: CaseResult;
}

/** What `compare` runs: two sides, the cases, and how. */
export interface CompareOptions {
  /** Judged side ("ans" of docs/flashmla-interface.md#tolerances). */
  a: CompareSide;
  /** Yardstick side ("ref" of docs/flashmla-interface.md#tolerances: relative errors are relative to it). */
  b: CompareSide;
  /** Explicit cases, or a matrix to draw them from. */
  cases: readonly DecodeCase[] | MatrixSource;
  /** Only cases whose name contains this substring. */
  filter?: string;
  /**
   * With the oracle on a side, cases above this many FLOPs (the test-generator formulas of docs/flashmla-interface.md#test-generators) are skipped:
   * the float64 oracle runs at well under 1 GFLOP/s. Default 2e9.
   */
  maxOracleWork?: number;
  /** For a `'cuda'` side: the FlashMLA build to load and the device to use. */
  library?: string;
  /** For a 'cuda' side: the device (default 0). */
  device?: number;
  /** Reference backend worker threads (default: its own default). */
  threads?: number;
  /**
   * Untimed calls of each non-oracle side before the timed one (default 0), so the time shows the
   * steady state rather than worker start-up and JIT warm-up. They reuse the timed call's sched meta.
   */
  warmup?: number;
  /** Called when each case starts and ends. */
  onProgress?: (event: CompareProgress) => void;
}

/** A side that threw instead of answering. */
export interface CaseError {
  /** Which side. */
  side: 'a' | 'b';
  /** The FlashMLAError code, or the error name. */
  code: string;
  /** Its message. */
  message: string;
}

/** The verdict on one case. */
export interface CaseResult {
  /** The case. */
  name: string;
  /** Dense or sparse decode. */
  kind: 'dense' | 'sparse';
  /** Set when the case was not run, with the reason. */
  skipped: string | null;
  /** Both outputs within tolerance and neither side threw. */
  pass: boolean;
  /** Sides that threw. */
  errors: CaseError[];
  /** `out` judged with its tolerance (null when not compared). */
  out: (AllcloseResult & { tolerance: Tolerance }) | null;
  /** `lse` judged with its tolerance (null when not compared). */
  lse: (AllcloseResult & { tolerance: Tolerance }) | null;
  /** Wall time of each side's call, ms (host tensors in and out). */
  ms: { a: number | null; b: number | null };
  /** FLOPs of the call. */
  flops: number;
  /** Bytes the call reads and writes. */
  bytes: number;
}

/** What `compare` returns. */
export interface CompareReport {
  /** Name of the judged side. */
  a: string;
  /** Name of the yardstick side. */
  b: string;
  /** Matrix name and seed, or 'cases' for an explicit list. */
  source: string;
  /** Base seed of a matrix source. */
  seed: number | null;
  /** One verdict per case, in order. */
  results: CaseResult[];
  /** Cases that passed. */
  passed: number;
  /** Cases that failed. */
  failed: number;
  /** Cases not run (see each reason). */
  skipped: number;
  /** True when at least one case ran and none failed. */
  pass: boolean;
  /** Wall time of the whole comparison, ms. */
  ms: number;
}

interface Runner {
  /** The case. */
  name: string;
  oracle: boolean;
  run(args: DecodeArgs): Promise<DecodeResult<HostTensor>>;
  close(): Promise<void>;
}

function hostResult(r: DecodeResult<Tensor>, side: string): DecodeResult<HostTensor> {
  const { out, lse } = r;
  if (!isHostTensor(out) || !isHostTensor(lse)) {
    throw new FlashMLAError('E_INTERNAL', `${side} returned device tensors for host inputs`, side);
  }
  return { out, lse };
}

async function openSide(side: CompareSide, opts: CompareOptions, label: 'a' | 'b'): Promise<Runner> {
  if (side === 'reference') {
    const threads = opts.threads;
    return { name: 'reference', oracle: false, run: (args) => referenceDecode(args, { threads }), close: async () => undefined };
  }
  if (side === 'oracle') {
    return { name: 'oracle', oracle: true, run: async (args) => oracleDecode(args), close: async () => undefined };
  }
  if (side === 'cuda') {
    const inst = await FlashMLA.open({ backend: 'cuda', library: opts.library, device: opts.device });
    return { name: 'cuda', oracle: false, run: async (args) => hostResult(await inst.flashMlaWithKvCache(args), label), close: () => inst.dispose() };
  }
  if (side instanceof FlashMLA) {
    return { name: side.backend, oracle: false, run: async (args) => hostResult(await side.flashMlaWithKvCache(args), label), close: async () => undefined };
  }
  if (typeof side === 'object' && side !== null && typeof side.decode === 'function' && typeof side.name === 'string') {
    return { name: side.name, oracle: false, run: (args) => side.decode(args), close: async () => undefined };
  }
  throw new FlashMLAError('E_VALUE', `${label} must be 'cuda', 'reference', 'oracle', a FlashMLA instance or { name, decode }, got ${String(side)}`, label);
}

function asCaseError(side: 'a' | 'b', e: unknown): CaseError {
  if (e instanceof FlashMLAError) return { side, code: e.code, message: e.message };
  return { side, code: e instanceof Error ? e.name : 'Error', message: e instanceof Error ? e.message : String(e) };
}

/** Runs one side on a fresh sched meta (docs/flashmla-interface.md#sched-meta-caching: one per configuration) and times it. */
async function timed(runner: Runner, c: DecodeCase, warmup: number): Promise<{ res: DecodeResult<HostTensor>; ms: number }> {
  const schedMeta = getMlaMetadata();
  try {
    for (let i = 0; i < (runner.oracle ? 0 : warmup); i++) await runner.run({ ...c.args, schedMeta });
    const t0 = performance.now();
    const res = await runner.run({ ...c.args, schedMeta });
    return { res, ms: performance.now() - t0 };
  } finally {
    schedMeta.dispose();
  }
}

async function runCase(c: DecodeCase, a: Runner, b: Runner, warmup: number): Promise<CaseResult> {
  const result: CaseResult = {
    name: c.name, kind: c.kind, skipped: null, pass: false, errors: [], out: null, lse: null,
    ms: { a: null, b: null }, flops: c.flops, bytes: c.bytes,
  };
  const outs: (DecodeResult<HostTensor> | null)[] = [];
  for (const [label, runner] of [['a', a], ['b', b]] as const) {
    try {
      const { res, ms } = await timed(runner, c, warmup);
      result.ms[label] = ms;
      outs.push(res);
    } catch (e) {
      result.errors.push(asCaseError(label, e));
      outs.push(null);
    }
  }
  const [ra, rb] = outs;
  if (ra && rb) {
    // docs/flashmla-interface.md#tolerances: dense and sparse decode have their own tolerances.
    const [tOut, tLse] = c.kind === 'dense' ? [TOLERANCES.denseOut, TOLERANCES.denseLse] : [TOLERANCES.sparseOut, TOLERANCES.sparseLse];
    result.out = { ...checkIsAllclose('out', ra.out, rb.out, tOut), tolerance: tOut };
    result.lse = { ...checkIsAllclose('lse', ra.lse, rb.lse, tLse), tolerance: tLse };
    result.pass = result.out.pass && result.lse.pass;
  }
  return result;
}

/** The candidate cases, generated one at a time so a large matrix never sits in memory whole. */
function* candidates(source: CompareOptions['cases']): Generator<DecodeCase> {
  if (Array.isArray(source)) {
    yield* source as readonly DecodeCase[];
    return;
  }
  const { matrix, seed = 0 } = source as MatrixSource;
  const entries = matrixEntries(matrix);
  for (let i = 0; i < entries.length; i++) yield generateEntry(entries[i]!, seed + i);
}

function candidateCount(source: CompareOptions['cases']): number {
  return Array.isArray(source) ? source.length : matrixEntries((source as MatrixSource).matrix).length;
}

/**
 * Runs the same cases on two sides and judges `a` against `b` with FlashMLA's `check_is_allclose`
 * (docs/flashmla-interface.md#tolerances) on `out` and `lse`. A side that throws fails that case with the error's code and
 * message; the other cases still run.
 */
export async function compare(opts: CompareOptions): Promise<CompareReport> {
  const start = performance.now();
  const isMatrix = !Array.isArray(opts.cases);
  const source = isMatrix ? (opts.cases as MatrixSource) : null;
  const maxOracleWork = opts.maxOracleWork ?? 2e9;
  const a = await openSide(opts.a, opts, 'a');
  let b: Runner;
  try {
    b = await openSide(opts.b, opts, 'b');
  } catch (e) {
    await a.close();
    throw e;
  }
  const results: CaseResult[] = [];
  try {
    const total = candidateCount(opts.cases);
    let index = 0;
    for (const c of candidates(opts.cases)) {
      const i = index++;
      if (opts.filter !== undefined && !c.name.includes(opts.filter)) continue;
      opts.onProgress?.({ index: i, total, name: c.name });
      let r: CaseResult;
      if ((a.oracle || b.oracle) && c.flops > maxOracleWork) {
        r = {
          name: c.name, kind: c.kind, pass: false, errors: [], out: null, lse: null, ms: { a: null, b: null },
          flops: c.flops, bytes: c.bytes,
          skipped: `${(c.flops / 1e9).toFixed(2)} GFLOP is above maxOracleWork (${(maxOracleWork / 1e9).toFixed(2)} GFLOP)`,
        };
      } else {
        r = await runCase(c, a, b, opts.warmup ?? 0);
      }
      results.push(r);
      opts.onProgress?.({ index: i, total, name: c.name, result: r });
    }
  } finally {
    await a.close();
    await b.close();
  }
  const skipped = results.filter((r) => r.skipped !== null).length;
  const passed = results.filter((r) => r.pass).length;
  const failed = results.length - passed - skipped;
  return {
    a: a.name, b: b.name,
    source: source ? source.matrix : 'cases',
    seed: source ? source.seed ?? 0 : null,
    results, passed, failed, skipped,
    pass: passed > 0 && failed === 0,
    ms: performance.now() - start,
  };
}
