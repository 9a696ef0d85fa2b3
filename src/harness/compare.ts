import { FlashMLAError } from '../errors.js';
import { FlashMLA } from '../flashmla.js';
import { referenceDecode } from '../reference/index.js';
import { referenceSparseFwd } from '../reference/prefill.js';
import { getMlaMetadata } from '../sched-meta.js';
import { isHostTensor, type HostTensor, type Tensor } from '../tensor.js';
import type { DecodeArgs, DecodeResult, HostSparseFwdArgs, SparseFwdResult } from '../types.js';
import type { DecodeCase } from './cases.js';
import { generateEntry, matrixEntries, type MatrixName } from './matrix.js';
import { checkIsAllclose, TOLERANCES, type AllcloseResult, type Tolerance } from './metrics.js';
import { oracleDecode } from './oracle.js';
import { generatePrefillCase, prefillCaseName, type PrefillCase, type PrefillCaseParams } from './prefill-cases.js';
import { oraclePrefill } from './prefill-oracle.js';
import { isPrefillMatrix, prefillMatrixEntries, type PrefillMatrixName } from './prefill-matrix.js';

/**
 * Any implementation on host tensors (e.g. one under development): decode, sparse prefill, or
 * both. A case of a kind the side does not implement fails with E_UNSUPPORTED.
 */
export interface CustomSide {
  /** Shown in reports. */
  name: string;
  /** Runs one decode call on host tensors. Default: none (decode cases fail). */
  decode?(args: DecodeArgs): Promise<DecodeResult<HostTensor>>;
  /** Runs one sparse prefill call (`flashMlaSparseFwd`) on host tensors. Default: none (prefill cases fail). */
  sparseFwd?(args: HostSparseFwdArgs): Promise<SparseFwdResult<HostTensor>>;
}

/** A side of a comparison: a backend by name, the float64 oracle, an open FlashMLA instance, or a custom one. */
export type CompareSide = 'cuda' | 'reference' | 'oracle' | FlashMLA | CustomSide;

/** Cases drawn from a named matrix; entry i is generated with seed `seed + i`. */
export interface MatrixSource {
  /** Decode: 'quick' or 'full'; sparse prefill: 'prefill' or 'prefill-full'. */
  matrix: MatrixName | PrefillMatrixName;
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
  /** Explicit cases (decode and prefill may be mixed), or a matrix to draw them from. */
  cases: readonly (DecodeCase | PrefillCase)[] | MatrixSource;
  /** Only cases whose name contains this substring. */
  filter?: string;
  /**
   * With the oracle on a side, cases above this many FLOPs (the test-generator formulas of docs/flashmla-interface.md#test-generators) are skipped:
   * the float64 oracle runs at well under 1 GFLOP/s. Prefill matrix cases as for `maxWork`. Default 2e9.
   */
  maxOracleWork?: number;
  /**
   * Cases above this many FLOPs are skipped whatever the sides (a GPU-sized subset of a big
   * matrix). A prefill matrix case is judged by the most it can reach (every position used) and,
   * when that is above a limit, skipped without being generated. Default: none skipped.
   */
  maxWork?: number;
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
  /** Dense or sparse decode, or sparse prefill. */
  kind: 'dense' | 'sparse' | 'prefill';
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
  /** Sparse prefill's `maxLogits` judged with its tolerance (null for decode and when not compared). */
  maxLogits: (AllcloseResult & { tolerance: Tolerance }) | null;
  /** Wall time of each side's call, ms (host tensors in and out). */
  ms: { a: number | null; b: number | null };
  /** FLOPs of the call (of a prefill matrix case skipped ungenerated: the most it could reach). */
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

/** A case of either kind. */
type AnyCase = DecodeCase | PrefillCase;
/** The outputs a call returns, by name (decode: out, lse; prefill: out, maxLogits, lse). */
type Outputs = Partial<Record<'out' | 'maxLogits' | 'lse', HostTensor>>;

interface Runner {
  /** Shown in reports. */
  name: string;
  oracle: boolean;
  /** Null when the side has no decode. */
  decode: ((args: DecodeArgs) => Promise<DecodeResult<HostTensor>>) | null;
  /** Null when the side has no sparse prefill. */
  sparseFwd: ((args: HostSparseFwdArgs) => Promise<SparseFwdResult<HostTensor>>) | null;
  close(): Promise<void>;
}

/** The outputs as host tensors, or E_INTERNAL naming the side when a host call returned device tensors. */
function hostOutputs<R extends object>(r: R, side: string): { [K in keyof R]: HostTensor } {
  for (const t of Object.values(r) as Tensor[]) {
    if (!isHostTensor(t)) throw new FlashMLAError('E_INTERNAL', `${side} returned device tensors for host inputs`, side);
  }
  return r as { [K in keyof R]: HostTensor };
}

/** Both entry points of an open instance, on host tensors. */
function instanceRunner(inst: FlashMLA, name: string, label: 'a' | 'b', close: () => Promise<void>): Runner {
  return {
    name, oracle: false, close,
    decode: async (args) => hostOutputs(await inst.flashMlaWithKvCache(args), label),
    sparseFwd: async (args) => hostOutputs(await inst.flashMlaSparseFwd(args), label),
  };
}

async function openSide(side: CompareSide, opts: CompareOptions, label: 'a' | 'b'): Promise<Runner> {
  const none = async (): Promise<void> => undefined;
  if (side === 'reference') {
    const threads = opts.threads;
    return {
      name: 'reference', oracle: false, close: none,
      decode: (args) => referenceDecode(args, { threads }), sparseFwd: (args) => referenceSparseFwd(args, { threads }),
    };
  }
  if (side === 'oracle') {
    return { name: 'oracle', oracle: true, close: none, decode: async (args) => oracleDecode(args), sparseFwd: async (args) => oraclePrefill(args) };
  }
  if (side === 'cuda') {
    const inst = await FlashMLA.open({ backend: 'cuda', library: opts.library, device: opts.device });
    return instanceRunner(inst, 'cuda', label, () => inst.dispose());
  }
  if (side instanceof FlashMLA) return instanceRunner(side, side.backend, label, none);
  if (typeof side === 'object' && side !== null && typeof side.name === 'string' &&
      (typeof side.decode === 'function' || typeof side.sparseFwd === 'function')) {
    return {
      name: side.name, oracle: false, close: none,
      decode: typeof side.decode === 'function' ? (args) => side.decode!(args) : null,
      sparseFwd: typeof side.sparseFwd === 'function' ? (args) => side.sparseFwd!(args) : null,
    };
  }
  throw new FlashMLAError('E_VALUE', `${label} must be 'cuda', 'reference', 'oracle', a FlashMLA instance or { name, decode?, sparseFwd? } with at least one of them, got ${String(side)}`, label);
}

function asCaseError(side: 'a' | 'b', e: unknown): CaseError {
  if (e instanceof FlashMLAError) return { side, code: e.code, message: e.message };
  return { side, code: e instanceof Error ? e.name : 'Error', message: e instanceof Error ? e.message : String(e) };
}

/** Untimed warm-up calls (none on the oracle), then one timed call. */
async function timedCall(runner: Runner, warmup: number, call: () => Promise<Outputs>): Promise<{ res: Outputs; ms: number }> {
  for (let i = 0; i < (runner.oracle ? 0 : warmup); i++) await call();
  const t0 = performance.now();
  const res = await call();
  return { res, ms: performance.now() - t0 };
}

/**
 * Runs one side and times it. Decode gets a fresh sched meta (docs/flashmla-interface.md#sched-meta-caching:
 * one per configuration) shared by its warm-up calls; sparse prefill has none.
 */
async function timed(runner: Runner, label: 'a' | 'b', c: AnyCase, warmup: number): Promise<{ res: Outputs; ms: number }> {
  if (c.kind === 'prefill') {
    const sparseFwd = runner.sparseFwd;
    if (sparseFwd === null) throw new FlashMLAError('E_UNSUPPORTED', `${runner.name} has no sparse prefill (sparseFwd)`, label);
    return timedCall(runner, warmup, () => sparseFwd(c.args));
  }
  const decode = runner.decode;
  if (decode === null) throw new FlashMLAError('E_UNSUPPORTED', `${runner.name} has no decode`, label);
  const schedMeta = getMlaMetadata();
  try {
    return await timedCall(runner, warmup, () => decode({ ...c.args, schedMeta }));
  } finally {
    schedMeta.dispose();
  }
}

/** docs/flashmla-interface.md#tolerances: each kind's outputs with FlashMLA's tolerances for them. */
function checksOf(kind: AnyCase['kind']): readonly [keyof Outputs, Tolerance][] {
  if (kind === 'prefill') return [['out', TOLERANCES.prefillOut], ['maxLogits', TOLERANCES.prefillMaxLogits], ['lse', TOLERANCES.prefillLse]];
  if (kind === 'dense') return [['out', TOLERANCES.denseOut], ['lse', TOLERANCES.denseLse]];
  return [['out', TOLERANCES.sparseOut], ['lse', TOLERANCES.sparseLse]];
}

/** What a result needs of its case. */
type CaseWork = Pick<AnyCase, 'name' | 'kind' | 'flops' | 'bytes'>;

function emptyResult(c: CaseWork, skipped: string | null): CaseResult {
  return {
    name: c.name, kind: c.kind, skipped, pass: false, errors: [], out: null, lse: null, maxLogits: null,
    ms: { a: null, b: null }, flops: c.flops, bytes: c.bytes,
  };
}

async function runCase(c: AnyCase, a: Runner, b: Runner, warmup: number): Promise<CaseResult> {
  const result = emptyResult(c, null);
  const outs: (Outputs | null)[] = [];
  for (const [label, runner] of [['a', a], ['b', b]] as const) {
    try {
      const { res, ms } = await timed(runner, label, c, warmup);
      result.ms[label] = ms;
      outs.push(res);
    } catch (e) {
      result.errors.push(asCaseError(label, e));
      outs.push(null);
    }
  }
  const [ra, rb] = outs;
  if (ra && rb) {
    result.pass = true;
    for (const [name, tol] of checksOf(c.kind)) {
      const x = ra[name];
      const y = rb[name];
      const verdict: AllcloseResult = x !== undefined && y !== undefined ? checkIsAllclose(name, x, y, tol)
        : { name, pass: false, reason: `${x === undefined ? a.name : b.name} returned no ${name}`, maxAbsErr: 0, maxRelErr: 0, cosDiff: 0, failed: 0, firstFailure: null, anomalyMismatches: 0 };
      result[name] = { ...verdict, tolerance: tol };
      result.pass &&= verdict.pass;
    }
  }
  return result;
}

/** A candidate case: what is known of it before its tensors are generated, and how to generate it. */
interface Candidate {
  name: string | null;
  /** A prefill matrix case's largest possible work (at full topk), known from its parameters. */
  bound: CaseWork | null;
  make(): AnyCase;
}

/** FlashMLA's prefill counts (`count_flop_and_mem_vol`) when every position is used: what a case of these parameters can reach. */
function prefillBound(p: PrefillCaseParams): CaseWork {
  return {
    name: prefillCaseName(p), kind: 'prefill',
    flops: 2 * p.sQ * p.topk * p.hQ * (p.dQK + 512),
    bytes: p.sQ * Math.min(p.topk, p.sKv) * p.dQK * 2 + p.sQ * p.hQ * (p.dQK + 512) * 2,
  };
}

/**
 * The candidate cases, generated one at a time so a large matrix never sits in memory whole. A
 * prefill case's name comes from its parameters, so a filter skips it without generating it.
 */
function* candidates(source: CompareOptions['cases']): Generator<Candidate> {
  if (Array.isArray(source)) {
    for (const c of source as readonly AnyCase[]) yield { name: c.name, bound: null, make: () => c };
    return;
  }
  const { matrix, seed = 0 } = source as MatrixSource;
  if (isPrefillMatrix(matrix)) {
    const entries = prefillMatrixEntries(matrix);
    for (let i = 0; i < entries.length; i++) {
      const bound = prefillBound(entries[i]!);
      yield { name: bound.name, bound, make: () => generatePrefillCase(entries[i]!, seed + i) };
    }
    return;
  }
  const entries = matrixEntries(matrix);
  for (let i = 0; i < entries.length; i++) yield { name: null, bound: null, make: () => generateEntry(entries[i]!, seed + i) };
}

function candidateCount(source: CompareOptions['cases']): number {
  if (Array.isArray(source)) return source.length;
  const { matrix } = source as MatrixSource;
  return isPrefillMatrix(matrix) ? prefillMatrixEntries(matrix).length : matrixEntries(matrix).length;
}

/**
 * Runs the same cases on two sides and judges `a` against `b` with FlashMLA's `check_is_allclose`
 * (docs/flashmla-interface.md#tolerances) on `out` and `lse` (decode), or `out`, `maxLogits` and
 * `lse` (sparse prefill, each with FlashMLA's prefill tolerances). A side that throws fails that
 * case with the error's code and message; the other cases still run.
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
    const gflop = (x: number): string => `${(x / 1e9).toFixed(2)} GFLOP`;
    const tooMuch = (flops: number): string | null => {
      if (opts.maxWork !== undefined && flops > opts.maxWork) return `${gflop(flops)} is above maxWork (${gflop(opts.maxWork)})`;
      if ((a.oracle || b.oracle) && flops > maxOracleWork) return `${gflop(flops)} is above maxOracleWork (${gflop(maxOracleWork)})`;
      return null;
    };
    for (const candidate of candidates(opts.cases)) {
      const i = index++;
      if (opts.filter !== undefined && candidate.name !== null && !candidate.name.includes(opts.filter)) continue;
      // A prefill matrix case that can exceed a limit is skipped ungenerated: FlashMLA's largest
      // ones take minutes to generate in JavaScript.
      const early = candidate.bound === null ? null : tooMuch(candidate.bound.flops);
      const c: CaseWork = early === null ? candidate.make() : candidate.bound!;
      if (opts.filter !== undefined && !c.name.includes(opts.filter)) continue;
      opts.onProgress?.({ index: i, total, name: c.name });
      const why = early === null ? tooMuch(c.flops) : `${early} at full topk (not generated)`;
      const r = why !== null ? emptyResult(c, why) : await runCase(c as AnyCase, a, b, opts.warmup ?? 0);
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
