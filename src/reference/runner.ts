/**
 * The native tier's item runner (binding/cpu_runner.cc): every work item of a call runs in the
 * addon, on the calling thread and the addon's helper threads, reading the caller's arrays in
 * place, plain or shared (docs/reference-backend.md#native-runner). The call is synchronous, so the
 * arrays cannot be detached or collected while helpers read them. The same threads then merge the
 * partials in item order and round the outputs (`RunnerFinish`), so results are bitwise identical
 * for any thread count.
 */
import type { DecodePlan, DensePlan, PrefillPlan, SparsePlan, SparseScope } from '../plan.js';
import type { HostTensor, View } from '../tensor.js';
import type { DecodeResult } from '../types.js';
import { softmaxScaleLog2 } from '../softmax-scale.js';
import { nonFiniteError } from '../validate/common.js';
import { ITEM, sameGroup, type ItemPlan } from './items.js';
import { lseOf } from './partial.js';
import { nativeTileApi, type CpuTileApi } from './tile-native.js';

type Runner = Required<Pick<CpuTileApi, 'runDense' | 'runSparse' | 'runPrefill' | 'startHelpers' | 'prime'>>;

let runner: Runner | null | undefined;

/** The addon's runner, or null without the addon, its tile loops or an addon built before the runner. */
export function nativeRunner(): Runner | null {
  if (runner === undefined) {
    const api = nativeTileApi();
    runner = typeof api !== 'string' && api.runDense && api.runSparse && api.runPrefill && api.startHelpers && api.prime
      ? { runDense: api.runDense, runSparse: api.runSparse, runPrefill: api.runPrefill, startHelpers: api.startHelpers, prime: api.prime } : null;
  }
  return runner;
}

const dataOf = <T>(b: { tensor: unknown }): T => (b.tensor as HostTensor).data as T;
/** offset and the first three strides of a view (the innermost is 1: validated). */
const viewParams = (v: View): number[] => [v.offset, v.strides[0] ?? 0, v.strides[1] ?? 0, v.strides[2] ?? 0];

function denseParams(plan: DensePlan): Float64Array {
  const bt = plan.blockTable.view;
  return Float64Array.from([
    plan.dtype === 'fp16' ? 1 : 0, plan.b, plan.sQ, plan.hQ, plan.hK, plan.dQK, plan.dV, plan.causal ? 1 : 0,
    softmaxScaleLog2('dense', plan.softmaxScale), ...viewParams(plan.q.view), ...viewParams(plan.kCache.view),
    bt.offset, bt.strides[0]!, bt.strides[1]!,
  ]);
}

function sparseParams(plan: SparsePlan, scopes: SparseScope[]): Float64Array {
  const p = [plan.layout === 'v32' ? 0 : 1, plan.b, plan.sQ, plan.hQ, plan.dV, softmaxScaleLog2('sparse', plan.softmaxScale), ...viewParams(plan.q.view), scopes.length];
  for (const s of scopes) p.push(s.topk, s.pageBlockSize, ...viewParams(s.cache.view), ...viewParams(s.indices.view));
  return Float64Array.from(p);
}

function prefillParams(plan: PrefillPlan): Float64Array {
  return Float64Array.from([
    plan.sQ, plan.hQ, plan.dQK, plan.dV, plan.sKv, plan.topk, softmaxScaleLog2('sparse', plan.smScale),
    ...viewParams(plan.q.view), ...viewParams(plan.kv.view), ...viewParams(plan.indices.view),
  ]);
}

/**
 * Where the runner writes a call's finished rows (binding/cpu_runner.cc `Finish`): each group's
 * partials folded in item order as index.ts's merger folds them, out rounded as finalize.ts
 * `writeRows` rounds it, and per row the merged max and sum, from which the caller takes the LSE
 * (partial.ts `lseOf`). Only for calls without an attention sink, whose out does not depend on
 * the LSE.
 */
export interface RunnerFinish {
  /** out's data, in q's dtype (b, s_q, h_q, d_v). */
  out: Uint16Array;
  /** lse's data (b, h_q, s_q): the runner writes each row's merged base-2 max there. */
  lse: Float32Array;
  /** Each row's merged sum, at the row's place in lse. */
  sums: Float32Array;
  /** One slot: the fold of the group the previous wave left open, which this wave's first group goes on from. */
  carryIn: Float32Array;
  /** One slot, apart from carryIn: the fold of the group this wave leaves open, for the next. */
  carryOut: Float32Array;
  /** 1: the wave's first group goes on from carryIn; 2: its last group goes on in the next wave. */
  flags: number;
}

/**
 * Runs items [0, count) of `items` into `results` (item j's partial at j·slot, m then l then o as
 * partial.ts `partialIn`) on the calling thread and up to threads − 1 helpers; with `finish`, the
 * same threads then fold each group's partials and write its rows there. Returns the flat index
 * ((i·s_q + s)·h_q + h)·d_qk + d of the first NaN or ±Infinity element of q the items read, or −1
 * (the runner checks q as it loads it; `throwIfNonFiniteQ` turns it into the error).
 */
export function runItemsNative(
  r: Runner, plan: ItemPlan, items: Int32Array, count: number, results: Float32Array, slot: number, threads: number,
  finish: RunnerFinish | null = null,
): number {
  const at = items.subarray(0, ITEM * count);
  if (plan.kind === 'prefill') {
    // Prefill rows are finished by prefill.ts (its out scaling needs the merged sum).
    return r.runPrefill(prefillParams(plan), dataOf(plan.q), dataOf(plan.kv), dataOf(plan.indices), plan.lengths, at, count, results, slot, threads);
  }
  const f = finish ? [finish.out, finish.lse, finish.sums, finish.carryIn, finish.carryOut, finish.flags] as const
    : [null, null, null, null, null, 0] as const;
  if (plan.kind === 'dense') {
    return r.runDense(denseParams(plan), dataOf(plan.q), dataOf(plan.kCache), dataOf(plan.blockTable), plan.seqlens!, at, count, results, slot, threads, ...f);
  }
  const scopes = plan.extra ? [plan.main, plan.extra] : [plan.main];
  const [m, x] = [plan.main, plan.extra];
  return r.runSparse(sparseParams(plan, scopes), dataOf(plan.q), dataOf(m.cache), dataOf(m.indices), m.lengths,
    x ? dataOf(x.cache) : null, x ? dataOf(x.indices) : null, x?.lengths ?? null, at, count, results, slot, threads, ...f);
}

/** The runner's reports of two waves as one: the lesser flat index, −1 for none. */
export const firstReport = (a: number, b: number): number => (a < 0 ? b : b < 0 ? a : Math.min(a, b));

let results = new Float32Array(0);
let carries = [new Float32Array(0), new Float32Array(0)];

/** A buffer for the partials of a wave, at least `floats` long, reused from call to call (fresh memory costs a page fault per 4 KiB). */
export function runnerResults(floats: number): Float32Array {
  if (results.length < floats) results = new Float32Array(floats);
  return results;
}

/**
 * A call without an attention sink, all on the runner's threads: its items in waves of `wave`
 * items, each wave's groups folded and their rows written to `res` (a group a wave leaves open
 * goes on in the next from the carry it left, the two carry buffers trading places each wave); then each row's LSE from its merged max and sum
 * (partial.ts `lseOf`, one log per row, here). Throws the error of a non-finite q.
 */
export function runFinishing(
  r: Runner, plan: DecodePlan, items: Int32Array, res: DecodeResult<HostTensor>, slot: number, threads: number, wave: number,
): void {
  const n = items.length / ITEM;
  const buffer = runnerResults(wave * slot);
  if (carries[0]!.length < slot) carries = [new Float32Array(slot), new Float32Array(slot)];
  const lse = res.lse.data as Float32Array;
  const [carryIn, carryOut] = carries as [Float32Array, Float32Array];
  const finish: RunnerFinish = { out: res.out.data as Uint16Array, lse, sums: new Float32Array(lse.length), carryIn, carryOut, flags: 0 };
  let badQ = -1;
  for (let w0 = 0; w0 < n; w0 += wave) {
    const count = Math.min(n - w0, wave);
    const end = w0 + count;
    finish.flags = (w0 > 0 && sameGroup(items, w0 - 1, w0) ? 1 : 0) | (end < n && sameGroup(items, end - 1, end) ? 2 : 0);
    badQ = firstReport(badQ, runItemsNative(r, plan, items.subarray(ITEM * w0), count, buffer, slot, threads, finish));
    [finish.carryIn, finish.carryOut] = [finish.carryOut, finish.carryIn];
  }
  for (let x = 0; x < lse.length; x++) lse[x] = lseOf(lse[x]!, finish.sums[x]!);
  throwIfNonFiniteQ(plan, badQ);
}

/**
 * Throws the error validation gives for a non-finite q (src/validate/common.ts `nonFiniteError`)
 * when `flat` (the least of the runner's reports) is not −1: at [i, s, h, d] for a decode, at
 * [s, h, d] for a prefill (whose q has no request dimension).
 */
export function throwIfNonFiniteQ(plan: ItemPlan, flat: number): void {
  if (flat < 0) return;
  const d = flat % plan.dQK, row = (flat - d) / plan.dQK;
  const h = row % plan.hQ, bs = (row - h) / plan.hQ;
  if (plan.kind === 'prefill') throw nonFiniteError('q', [bs, h, d]);
  const s = bs % plan.sQ, i = (bs - s) / plan.sQ;
  throw nonFiniteError('q', [i, s, h, d]);
}
