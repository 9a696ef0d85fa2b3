// The fuzzer's runner: picks a base case and a mutation family (fuzz-catalogue.ts) per call, runs
// it with a time bound, and judges the outcome against what the family declares.
import { FlashMLAError, type FlashMLAErrorCode } from '../errors.js';
import type { DeviceTensor } from '../device-tensor.js';
import { isHostTensor, type DeviceTensorMeta, type HostTensor, type Tensor } from '../tensor.js';
import type { DecodeArgs, DecodeResult } from '../types.js';
import type { DecodeCase } from './cases.js';
import { checkIsAllclose, TOLERANCES } from './metrics.js';
import { oracleDecode } from './oracle.js';
import { Rng } from './random.js';
import {
  baseCase, CALL_MUTATIONS, INDEX_LIKE, MUTATIONS, presentFields, TENSOR_FIELDS, uploadFields, withMeta,
  type Call, type CallMutation, type DecodeFn, type Expect, type FuzzDevice, type GlobalMutation, type Mutation,
} from './fuzz-catalogue.js';

export { fuzzDeviceOf, type DecodeFn, type FuzzDevice } from './fuzz-catalogue.js';

/** A call that did not end as its mutation requires. */
export interface FuzzFailure {
  /** Index of the call in the run (same seed: same call). */
  call: number;
  /** The mutation family. */
  mutation: string;
  /** The base case it mutated. */
  caseName: string;
  /** What went wrong. */
  problem: string;
}

/** What `fuzz` returns. */
export interface FuzzReport {
  /** Calls made. */
  calls: number;
  /** Calls that returned a result (checked against the oracle where the call was valid). */
  results: number;
  /** FlashMLAErrors thrown, by code. */
  errors: Partial<Record<FlashMLAErrorCode, number>>;
  /**
   * Anything else: a non-FlashMLAError throw, E_CUDA / E_INTERNAL (hostile input reached the device),
   * a hang past the time bound, NaN output, a wrong result, a missed error, outputs on the wrong side.
   */
  failures: FuzzFailure[];
  /** Wall time of the run. */
  elapsedMs: number;
}

/** A fuzz run: what to call, how many times, with which seed. */
export interface FuzzOptions {
  /** The decode entry point under test. */
  decode: DecodeFn;
  /** Calls to make. */
  calls: number;
  /** Seed of the run (same seed: same calls). */
  seed: number;
  /** Per-call time bound (a call past it counts as a hang). Default 30 s. */
  timeBoundMs?: number;
  /** Kinds of base case (default both; sm100 has no dense kernel, docs/flashmla-interface.md#dense-host-layer). */
  kinds?: readonly ('dense' | 'sparse')[];
  /** Device-resident calls for a CUDA backend (see FuzzDevice). */
  device?: FuzzDevice;
  /** Another backend sharing sched metas with the one under test (docs/flashmla-interface.md#sched-meta-caching consistency across backends). */
  other?: DecodeFn;
  /** Mutation names left out (to measure the rest while a known bug is open). */
  exclude?: readonly string[];
  /** Opens a build the way users do (`FlashMLA.open({ backend: 'cuda', library })`): enables the hostile-loader family. */
  openBuild?: (path: string) => Promise<unknown>;
  /** Called after each call with the report so far. */
  onProgress?: (done: number, report: FuzzReport) => void;
}

function checkOutputs(args: DecodeArgs, res: DecodeResult<HostTensor>): string | null {
  const { out, lse } = res;
  const [b, s, h] = args.q.shape as number[];
  if (out.shape.join() !== [b, s, h, 512].join() || lse.shape.join() !== [b, h, s].join()) return `wrong output shapes ${out.shape} / ${lse.shape}`;
  const lseData = lse.data as Float32Array;
  for (let i = 0; i < lseData.length; i++) if (!(Number.isFinite(lseData[i]!) || lseData[i] === Infinity)) return `lse[${i}] = ${lseData[i]}`;
  const o = out.data as Uint16Array;
  const nanMask = out.dtype === 'fp16' ? 0x7c00 : 0x7f80;
  for (let i = 0; i < o.length; i++) if ((o[i]! & nanMask) === nanMask) return `out[${i}] is not finite`;
  return null;
}

/** Host copies of the outputs (device outputs are downloaded, then disposed), or what is wrong with where they live. */
async function hostOutputs(args: DecodeArgs, res: DecodeResult<Tensor>, device: FuzzDevice | undefined): Promise<DecodeResult<HostTensor> | string> {
  const onDevice = !isHostTensor(args.q);
  if (isHostTensor(res.out) && isHostTensor(res.lse)) return onDevice ? 'outputs of a device-resident q must be device tensors' : { out: res.out, lse: res.lse };
  if (!onDevice || device === undefined) return 'outputs of a host q must be host tensors';
  try {
    return { out: await device.download(res.out as DeviceTensorMeta), lse: await device.download(res.lse as DeviceTensorMeta) };
  } finally {
    (res.out as DeviceTensor).dispose();
    (res.lse as DeviceTensor).dispose();
  }
}

/** The promise's value, or 'timeout' when it does not settle within `ms`. */
/**
 * Judges what a fuzz call threw, counting FlashMLAErrors by code in `report`: a valid call must not
 * be refused; hostile input must be refused before any launcher runs (an error the device or a
 * launcher reported, or a broken invariant, fails even a malformed call); a malformed input's error
 * carries a code it declares and, when it declares them, names one of its arguments (`names`:
 * the argument itself or a part of it, `q.data`, `indices[3]`); anything but a FlashMLAError fails.
 */
export function judgeThrown(
  e: unknown, m: { expect: Expect; codes?: readonly string[]; names?: readonly (string | undefined)[] }, report: FuzzReport, fail: (problem: string) => void,
): void {
  if (!(e instanceof FlashMLAError)) {
    fail(`threw a non-FlashMLAError: ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`);
    return;
  }
  report.errors[e.code] = (report.errors[e.code] ?? 0) + 1;
  if (m.expect === 'match') fail(`valid call rejected: ${e.code} ${e.message}`);
  else if (e.code === 'E_CUDA' || e.code === 'E_INTERNAL' || e.code === 'E_DEVICE_LOST') fail(`reached the device: ${e.code} ${e.message}`);
  else if (m.codes !== undefined && !m.codes.includes(e.code)) fail(`wrong error code ${e.code} (expected ${m.codes.join(' or ')}): ${e.message}`);
  else if (m.names !== undefined && !namesDeclared(e.argument, m.names)) fail(`error names '${String(e.argument)}' (expected ${m.names.map(String).join(' or ')}): ${e.message}`);
}

function namesDeclared(argument: string | undefined, names: readonly (string | undefined)[]): boolean {
  return names.some((n) => n === argument || (n !== undefined && argument !== undefined && (argument.startsWith(`${n}.`) || argument.startsWith(`${n}[`))));
}

/**
 * Issues one fuzz call with its global mutation made just before and undone when it declares, runs
 * what the caller does while the call runs, and awaits the answer within `bound` ms.
 */
export async function issueMutated(
  global: GlobalMutation | undefined, issue: () => Promise<unknown>, during: () => void, rng: Rng, bound: number,
): Promise<unknown> {
  global?.make(rng);
  let pending: Promise<unknown>;
  try {
    pending = issue();
  } finally {
    if (global?.until === 'issued') global.undo();
  }
  during();
  try {
    return await withTimeout(pending, bound);
  } finally {
    if (global?.until === 'settled') global.undo();
  }
}

async function withTimeout<T>(p: Promise<T>, ms: number): Promise<T | 'timeout'> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<'timeout'>((resolve) => { timer = setTimeout(() => resolve('timeout'), ms); });
  try {
    return await Promise.race([p, t]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Picks a mutation and builds its call. Plain mutations keep their inputs on the host, or (with a
 * device, half the time) get their untouched inputs uploaded: the mutated ones stay on the host,
 * where their values are always checked.
 */
interface Prepared {
  name: string;
  expect: Expect;
  codes: readonly FlashMLAErrorCode[] | undefined;
  call: Call;
  during?: Mutation['during'];
  global?: Mutation['global'];
}

/** A deep copy of a call's host tensors: the oracle's inputs when the caller changes them mid-call. */
function snapshotHost(args: DecodeArgs): DecodeArgs {
  const out: Record<string, unknown> = { ...args };
  for (const f of TENSOR_FIELDS) {
    const t = args[f];
    if (t !== null && t !== undefined && isHostTensor(t)) out[f] = { ...t, data: t.data.slice() };
  }
  return out as unknown as DecodeArgs;
}

async function prepare(c: DecodeCase, rng: Rng, opts: FuzzOptions, extra: readonly CallMutation[]): Promise<Prepared> {
  for (;;) {
    const i = rng.int(0, MUTATIONS.length + extra.length);
    if (i >= MUTATIONS.length) {
      const m = extra[i - MUTATIONS.length]!;
      if (opts.exclude?.includes(m.name)) continue;
      const call = await m.prepare(c, rng, { device: opts.device!, other: opts.other!, openBuild: opts.openBuild! });
      if (call !== null) return { name: m.name, expect: m.expect, codes: m.codes, call };
      continue;
    }
    const m = MUTATIONS[i]!;
    if (opts.exclude?.includes(m.name)) continue;
    const args = m.apply(c, rng);
    if (args === null && m.name !== 'args not an object') continue;
    const host = m.oracleFromCase ? withMeta(c.args) : m.during !== undefined ? snapshotHost(args as DecodeArgs) : args as DecodeArgs;
    const call: Call = { args: args as DecodeArgs, host, uploads: [], options: m.options?.(rng) };
    const hooks = { codes: m.codes, during: m.during, global: m.global };
    if (opts.device === undefined || args === null || typeof args !== 'object' || m.during !== undefined || rng.next() < 0.5) {
      return { name: m.name, expect: m.expect, call, ...hooks };
    }
    // Which block-table entries and indices are used depends on the lengths: with hostile values
    // on the host, the index-like tensors stay there too (on the device they are the caller's contract).
    const untouched = presentFields(args).filter((f) => args[f] === c.args[f] && !(m.values && INDEX_LIKE.includes(f)));
    call.args = await uploadFields(opts.device, args, untouched, call.uploads);
    return { name: `${m.name} [device-resident]`, expect: m.expect, call, ...hooks };
  }
}

/**
 * Seeded fuzzing of a decode entry point with malformed and valid-but-extreme calls (hostile
 * input). Every call must end in a FlashMLAError (malformed) or in a result that matches the
 * float64 oracle within FlashMLA's tolerances (valid), within the time bound.
 */
export async function fuzz(opts: FuzzOptions): Promise<FuzzReport> {
  const rng = new Rng(opts.seed);
  const bound = opts.timeBoundMs ?? 30_000;
  const kinds = opts.kinds ?? ['dense', 'sparse'];
  const extra = CALL_MUTATIONS.filter((m) => (m.needs === 'other' ? opts.other !== undefined
    : m.needs === 'loader' ? opts.openBuild !== undefined
      : opts.device !== undefined && (m.needs === 'device' || opts.device.uploadElsewhere !== undefined)));
  const report: FuzzReport = { calls: 0, results: 0, errors: {}, failures: [], elapsedMs: 0 };
  const start = performance.now();
  for (let call = 0; call < opts.calls; call++) {
    const c = baseCase(rng, opts.seed * 1_000_003 + call, kinds);
    report.calls++;
    let prepared: Awaited<ReturnType<typeof prepare>>;
    try {
      prepared = await prepare(c, rng, opts, extra);
    } catch (e) {
      report.failures.push({ call, mutation: '(preparing the call)', caseName: c.name, problem: e instanceof Error ? `${e.name}: ${e.message}` : String(e) });
      opts.onProgress?.(call + 1, report);
      continue;
    }
    const { name, expect, codes, during, global, call: { args, options, host, uploads, instead } } = prepared;
    const fail = (problem: string) => report.failures.push({ call, mutation: name, caseName: c.name, problem });
    try {
      const answer = await issueMutated(global, () => (instead !== undefined ? instead() : opts.decode(args, options)), () => during?.(args, rng), rng, bound);
      if (answer === 'timeout') { fail(`no answer within ${bound} ms`); continue; }
      if (instead !== undefined) { fail('a hostile build was accepted'); continue; }
      const res = answer as DecodeResult<Tensor>;
      report.results++;
      const got = await hostOutputs(args, res, opts.device);
      if (expect === 'error') { fail('malformed call was accepted'); continue; }
      if (typeof got === 'string') { fail(got); continue; }
      const bad = checkOutputs(host, got);
      if (bad) { fail(bad); continue; }
      const want = oracleDecode(host);
      const tol = c.kind === 'dense' ? [TOLERANCES.denseOut, TOLERANCES.denseLse] : [TOLERANCES.sparseOut, TOLERANCES.sparseLse];
      const o = checkIsAllclose('out', got.out, want.out, tol[0]!);
      const l = checkIsAllclose('lse', got.lse, want.lse, tol[1]!);
      if (!o.pass || !l.pass) fail(`differs from the oracle: ${o.reason || l.reason}`);
    } catch (e) {
      judgeThrown(e, { expect, codes }, report, fail);
    } finally {
      for (const u of uploads) u.dispose();
      opts.onProgress?.(call + 1, report);
    }
  }
  report.elapsedMs = performance.now() - start;
  return report;
}
