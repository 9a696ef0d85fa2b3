// The sparse prefill fuzzer's runner: picks a tiny base case and a mutation family
// (prefill-fuzz-catalogue.ts) per call, runs it with a time bound, and judges the outcome against
// what the family declares (the decode fuzzer's counterpart, fuzz.ts).
import type { DeviceTensor } from '../device-tensor.js';
import { isHostTensor, type DeviceTensorMeta, type HostTensor, type Tensor } from '../tensor.js';
import type { HostSparseFwdArgs, SparseFwdArgs, SparseFwdResult } from '../types.js';
import { issueMutated, judgeThrown, type FuzzReport } from './fuzz.js';
import type { FuzzDevice } from './fuzz-catalogue.js';
import { checkIsAllclose, TOLERANCES } from './metrics.js';
import { oraclePrefill } from './prefill-oracle.js';
import {
  PREFILL_CALL_MUTATIONS, PREFILL_INDEX_LIKE, PREFILL_MUTATIONS, prefillBaseCase, presentPrefillFields, uploadPrefillFields,
  type PrefillArch, type PrefillCall, type PrefillMutation, type SparseFwdFn,
} from './prefill-fuzz-catalogue.js';
import type { PrefillCase } from './prefill-cases.js';
import { Rng } from './random.js';

export type { PrefillArch, SparseFwdFn } from './prefill-fuzz-catalogue.js';

/** A sparse prefill fuzz run: what to call, how many times, with which seed. */
export interface SparseFwdFuzzOptions {
  /** The `flashMlaSparseFwd` entry point under test. */
  sparseFwd: SparseFwdFn;
  /** Calls to make. */
  calls: number;
  /** Seed of the run (same seed: same calls). */
  seed: number;
  /** Per-call time bound (a call past it counts as a hang). Default 30 s. */
  timeBoundMs?: number;
  /**
   * What valid calls are judged against, on host tensors. Default: the float64 oracle rounded to
   * the output dtypes (`oraclePrefill`).
   */
  yardstick?: (args: HostSparseFwdArgs) => Promise<SparseFwdResult<HostTensor>>;
  /**
   * The architecture a CUDA backend under test runs, so that valid base cases obey its kernel's
   * topk rule. Default: none (any multiple of 64, the reference backend's rule).
   */
  arch?: PrefillArch;
  /** Device-resident calls for a CUDA backend (see FuzzDevice); enables the device families. Default: none. */
  device?: FuzzDevice;
  /** The reference backend's entry point, for the family that hands it device tensors (needs `device`). Default: none. */
  reference?: SparseFwdFn;
  /** Mutation names left out. Default: none. */
  exclude?: readonly string[];
  /** Called after each call with the report so far. Default: none. */
  onProgress?: (done: number, report: FuzzReport) => void;
}

interface Prepared {
  name: string;
  m: Pick<PrefillMutation, 'expect' | 'codes' | 'names' | 'during' | 'global'>;
  call: PrefillCall;
}

/** A deep copy of a call's host tensors: the yardstick's inputs when the caller changes them mid-call. */
function snapshotHost(args: SparseFwdArgs): HostSparseFwdArgs {
  const out: Record<string, unknown> = { ...args };
  for (const f of presentPrefillFields(args)) {
    const t = args[f]!;
    if (isHostTensor(t)) out[f] = { ...t, data: t.data.slice() };
  }
  return out as HostSparseFwdArgs;
}

async function prepare(c: PrefillCase, rng: Rng, opts: SparseFwdFuzzOptions): Promise<Prepared | null> {
  const extra = opts.device === undefined ? [] : PREFILL_CALL_MUTATIONS.filter((m) => opts.reference !== undefined || m.name !== 'device tensors given to the reference backend');
  for (;;) {
    const i = rng.int(0, PREFILL_MUTATIONS.length + extra.length);
    if (i >= PREFILL_MUTATIONS.length) {
      const m = extra[i - PREFILL_MUTATIONS.length]!;
      if (opts.exclude?.includes(m.name)) continue;
      const call = await m.prepare(c, rng, { device: opts.device!, reference: opts.reference! });
      if (call !== null) return { name: m.name, m, call };
      continue;
    }
    const m = PREFILL_MUTATIONS[i]!;
    if (opts.exclude?.includes(m.name)) continue;
    const args = m.apply(c, rng, opts.arch);
    if (args === null && m.name !== 'args not an object') continue;
    const host = m.oracleFromCase || args === null ? c.args : m.during !== undefined ? snapshotHost(args) : args as HostSparseFwdArgs;
    const call: PrefillCall = { args: args as SparseFwdArgs, host, uploads: [], options: m.options?.(rng) };
    if (opts.device === undefined || args === null || typeof args !== 'object' || m.during !== undefined || m.hostOnly || rng.next() < 0.5) {
      return { name: m.name, m, call };
    }
    // The mutated inputs stay on the host, where their values are always checked; so do the
    // index-like ones when the outcome depends on their values (on the device they are the caller's contract).
    const untouched = presentPrefillFields(args).filter((f) => args[f] === c.args[f] && !((m.values || m.readsIndices) && PREFILL_INDEX_LIKE.includes(f)));
    call.args = await uploadPrefillFields(opts.device, args, untouched, call.uploads);
    return { name: `${m.name} [device-resident]`, m, call };
  }
}

/** What is wrong with a result's shapes and special values, or null. */
function checkOutputs(args: HostSparseFwdArgs, r: SparseFwdResult<HostTensor>): string | null {
  const [sQ, hQ] = args.q.shape as number[];
  if (r.out.shape.join() !== [sQ, hQ, 512].join() || r.maxLogits.shape.join() !== [sQ, hQ].join() || r.lse.shape.join() !== [sQ, hQ].join()) {
    return `wrong output shapes ${r.out.shape} / ${r.maxLogits.shape} / ${r.lse.shape}`;
  }
  const m = r.maxLogits.data as Float32Array;
  const l = r.lse.data as Float32Array;
  for (let i = 0; i < m.length; i++) {
    // docs/flashmla-interface.md#sparse-prefill: a row with nothing valid has max_logits −inf and lse +inf; any other row is finite.
    const empty = m[i] === -Infinity;
    if (empty ? l[i] !== Infinity : !(Number.isFinite(m[i]!) && Number.isFinite(l[i]!))) return `row ${i}: maxLogits ${m[i]}, lse ${l[i]}`;
  }
  const o = r.out.data as Uint16Array;
  for (let i = 0; i < o.length; i++) if ((o[i]! & 0x7f80) === 0x7f80) return `out[${i}] is not finite`;
  return null;
}

/** Host copies of the outputs (device outputs are downloaded, then disposed), or what is wrong with where they live. */
async function hostOutputs(args: SparseFwdArgs, res: SparseFwdResult<Tensor>, device: FuzzDevice | undefined): Promise<SparseFwdResult<HostTensor> | string> {
  const onDevice = !isHostTensor(args.q);
  const outs = [res.out, res.maxLogits, res.lse];
  if (outs.every(isHostTensor)) return onDevice ? 'outputs of a device-resident q must be device tensors' : res as SparseFwdResult<HostTensor>;
  if (!onDevice || device === undefined || outs.some(isHostTensor)) return 'outputs of a host q must be host tensors';
  try {
    return {
      out: await device.download(res.out as DeviceTensorMeta), maxLogits: await device.download(res.maxLogits as DeviceTensorMeta),
      lse: await device.download(res.lse as DeviceTensorMeta),
    };
  } finally {
    for (const t of outs) (t as DeviceTensor).dispose();
  }
}

/**
 * Seeded fuzzing of a `flashMlaSparseFwd` entry point with malformed and valid-but-extreme calls.
 * Every call must end in a FlashMLAError with a declared code naming a declared argument
 * (malformed), or in a result that matches the yardstick within FlashMLA's prefill tolerances
 * (valid), within the time bound.
 */
export async function fuzzSparseFwd(opts: SparseFwdFuzzOptions): Promise<FuzzReport> {
  const rng = new Rng(opts.seed);
  const bound = opts.timeBoundMs ?? 30_000;
  const yardstick = opts.yardstick ?? (async (args: HostSparseFwdArgs) => oraclePrefill(args));
  const report: FuzzReport = { calls: 0, results: 0, errors: {}, failures: [], elapsedMs: 0 };
  const start = performance.now();
  for (let call = 0; call < opts.calls; call++) {
    const c = prefillBaseCase(rng, opts.seed * 1_000_003 + call, opts.arch);
    report.calls++;
    let prepared: Prepared | null;
    try {
      prepared = await prepare(c, rng, opts);
    } catch (e) {
      report.failures.push({ call, mutation: '(preparing the call)', caseName: c.name, problem: e instanceof Error ? `${e.name}: ${e.message}` : String(e) });
      opts.onProgress?.(call + 1, report);
      continue;
    }
    const { name, m: { expect, codes, names, during, global }, call: { args, options, host, uploads, instead } } = prepared!;
    const fail = (problem: string) => report.failures.push({ call, mutation: name, caseName: c.name, problem });
    try {
      const answer = await issueMutated(global, () => (instead !== undefined ? instead() : opts.sparseFwd(args, options)), () => during?.(args, rng), rng, bound);
      if (answer === 'timeout') { fail(`no answer within ${bound} ms`); continue; }
      if (instead !== undefined) { fail('the call was accepted'); continue; }
      report.results++;
      const got = await hostOutputs(args, answer as SparseFwdResult<Tensor>, opts.device);
      if (expect === 'error') { fail('malformed call was accepted'); continue; }
      if (typeof got === 'string') { fail(got); continue; }
      const bad = checkOutputs(host, got);
      if (bad) { fail(bad); continue; }
      const want = await yardstick(host);
      const verdicts = [
        checkIsAllclose('out', got.out, want.out, TOLERANCES.prefillOut),
        checkIsAllclose('maxLogits', got.maxLogits, want.maxLogits, TOLERANCES.prefillMaxLogits),
        checkIsAllclose('lse', got.lse, want.lse, TOLERANCES.prefillLse),
      ].filter((v) => !v.pass);
      if (verdicts.length > 0) fail(`differs from the yardstick: ${verdicts.map((v) => `${v.name}: ${v.reason}`).join('; ')}`);
    } catch (e) {
      judgeThrown(e, { expect, codes, names }, report, fail);
    } finally {
      for (const u of uploads) u.dispose();
      opts.onProgress?.(call + 1, report);
    }
  }
  report.elapsedMs = performance.now() - start;
  return report;
}
