import { check, FlashMLAError } from '../errors.js';
import type { Bound, PrefillPlan } from '../plan.js';
import { softmaxScaleLog2 } from '../softmax-scale.js';
import { INT32_MAX } from '../tensor.js';
import type { SparseFwdArgs } from '../types.js';
import {
  bind, expectContiguous, expectFiniteScalar, expectFiniteValues, expectIntStrides, expectLastDimContiguous, expectShape,
  expectTmaFriendly, hostData, isGiven, nonFiniteError, readInt32Vector, type Downloaded,
} from './common.js';
import { D_V } from './dense.js';

/** Head dims the prefill kernels are instantiated for (docs/flashmla-interface.md#sparse-prefill). */
const PREFILL_D_QK: readonly number[] = [576, 512];
/** Every prefill kernel loads index blocks of 64 (sm100 head64 and small-topk; sm90 and sm100 head128 need 128, cuda/host-layer.ts). */
export const PREFILL_TOPK_MULTIPLE = 64;

/** Options of validateSparseFwd. */
export interface SparseFwdValidateOptions {
  /**
   * Check q for NaN / ±Infinity (default true). The reference backend's native runner checks q as
   * its threads load it and reports the same error (docs/reference-backend.md#native-runner).
   */
  finiteQ?: boolean;
}

/**
 * Validates a `flashMlaSparseFwd` call as FlashMLA's host layer does on any GPU
 * (docs/flashmla-interface.md#sparse-prefill: ranks, d_qk, d_v, dtypes, shapes, last-dim
 * contiguity), the launcher checks every architecture shares (h_kv 1, h_q 64 or 128, topk a
 * positive multiple of 64, int strides, TMA-friendly q and kv), and the range rules FlashMLA
 * leaves out: topkLength within [0, topk] (a larger one makes the kernel read past the row's
 * indices), a finite scale and sink, finite q and finite kv rows where a kernel loads them. Indices
 * need no range check: any value outside [0, s_kv) is "unused" here. Values are checked where
 * host-readable (host tensors, or the `downloaded` copies of device ones).
 */
export function validateSparseFwd(args: SparseFwdArgs, downloaded?: Downloaded, opts?: SparseFwdValidateOptions): PrefillPlan {
  check(args !== null && typeof args === 'object', 'E_VALUE', 'args', 'args must be an object');
  const q = bind(args.q, 'q', 3, ['bf16']);
  const kv = bind(args.kv, 'kv', 3, ['bf16']);
  const indices = bind(args.indices, 'indices', 3, ['int32']);
  const attnSink = isGiven(args.attnSink) ? bind(args.attnSink, 'attnSink', 1, ['fp32']) : null;
  const topkLength = isGiven(args.topkLength) ? bind(args.topkLength, 'topkLength', 1, ['int32']) : null;
  const [sQ, hQ, dQK] = q.view.shape as [number, number, number];
  const [sKv, hKv] = kv.view.shape as [number, number, number];
  const topk = indices.view.shape[2]!;

  check(PREFILL_D_QK.includes(dQK), 'E_SHAPE', 'q', `q's head dim (q.shape[2]) must be 576 (V3.2) or 512 (MODEL1), got ${dQK}`);
  const dV = args.dV ?? D_V;
  check(dV === D_V, 'E_VALUE', 'dV', `dV must be 512, got ${String(dV)}`);
  expectShape(kv, 'kv', [null, null, dQK], '(s_kv, h_kv, d_qk)');
  expectShape(indices, 'indices', [sQ, hKv, null], '(s_q, h_kv, topk)');
  if (attnSink) expectShape(attnSink, 'attnSink', [hQ], '(h_q,)');
  if (topkLength) expectShape(topkLength, 'topkLength', [sQ], '(s_q,)');
  for (const [b, name] of [[q, 'q'], [kv, 'kv'], [indices, 'indices'], [attnSink, 'attnSink'], [topkLength, 'topkLength']] as const) {
    if (b) expectLastDimContiguous(b, name);
  }
  if (attnSink) expectContiguous(attnSink, 'attnSink');
  if (topkLength) expectContiguous(topkLength, 'topkLength');

  // Launcher checks every architecture makes (KU_ASSERTs, which would end the process).
  check(sQ > 0, 'E_SHAPE', 'q', 's_q (q.shape[0]) must be > 0');
  check(hQ === 64 || hQ === 128, 'E_UNSUPPORTED', 'q', `sparse prefill supports h_q = 64 or 128 (q.shape[1]), got ${hQ}`);
  check(hKv === 1, 'E_UNSUPPORTED', 'kv', `sparse prefill supports only MQA: kv.shape[1] must be 1, got ${hKv}`);
  check(sKv > 0, 'E_SHAPE', 'kv', 's_kv (kv.shape[0]) must be > 0');
  // FlashMLA's params hold s_kv in an int, and int32 indices cannot reach rows past it anyway.
  check(sKv <= INT32_MAX, 'E_UNSUPPORTED', 'kv', () => `s_kv (kv.shape[0] = ${sKv}) must be below 2^31 (FlashMLA holds it in an int)`);
  check(topk > 0 && topk % PREFILL_TOPK_MULTIPLE === 0, 'E_UNSUPPORTED', 'indices',
    `topk (indices.shape[2] = ${topk}) must be a positive multiple of ${PREFILL_TOPK_MULTIPLE}`);
  // max_logits and lse rows, and the kernels' index offsets, are int32.
  check(sQ * hQ <= INT32_MAX, 'E_UNSUPPORTED', 'q', () => `s_q·h_q = ${sQ * hQ} must be below 2^31 (FlashMLA indexes rows with int32)`);
  expectIntStrides(q, 'q');
  expectIntStrides(kv, 'kv');
  expectIntStrides(indices, 'indices');
  const iv = indices.view;
  check(iv.offset + (sQ - 1) * iv.strides[0]! + (topk - 1) * iv.strides[2]! <= INT32_MAX, 'E_UNSUPPORTED', 'indices',
    'indices spans more than 2^31 elements; FlashMLA addresses it with int32 offsets');
  // q is loaded by TMA on every architecture, kv by TMA or 16-byte copies (docs/flashmla-interface.md#tma-alignment).
  expectTmaFriendly(q, 'q', 2);
  expectTmaFriendly(kv, 'kv', 2);

  const smScale = expectFiniteScalar(args.smScale, 'smScale');
  check(Number.isFinite(Math.fround(smScale)) && Number.isFinite(softmaxScaleLog2('sparse', smScale)), 'E_VALUE', 'smScale',
    () => `smScale = ${smScale} is beyond float32 range once multiplied by log2(e)`);

  const lengths = topkLength ? readInt32Vector(topkLength, downloaded) : null;
  if (lengths) {
    for (let s = 0; s < sQ; s++) {
      const l = lengths[s]!;
      if (l < 0 || l > topk) throw new FlashMLAError('E_RANGE', `topkLength[${s}] = ${l} must be in [0, ${topk}]`, 'topkLength');
    }
  }
  if (attnSink) {
    // ±Infinity are meaningful sinks (out scaled to 0, or unchanged); NaN would make whole heads NaN.
    const sink = hostData(attnSink, downloaded);
    if (sink) {
      for (let h = 0; h < hQ; h++) {
        check(!Number.isNaN(sink.data[sink.view.offset + h * sink.view.strides[0]!]!), 'E_VALUE', 'attnSink', `attnSink[${h}] is NaN`);
      }
    }
  }
  const plan: PrefillPlan = {
    kind: 'prefill', sQ, sKv, hQ, hKv, dQK, dV, topk, smScale, q, kv, indices, attnSink, topkLength, lengths,
  };
  expectUsedKvFinite(plan, downloaded);
  // Last, so that skipping it (opts.finiteQ) changes no other check's order.
  if (opts?.finiteQ !== false) expectFiniteValues(q, 'q', downloaded);
  return plan;
}

/** Whether position p of query token s is used: inside its topkLength, and an index in [0, s_kv). */
export function usedIndex(plan: PrefillPlan, idx: { data: ArrayLike<number>; view: Bound['view'] }, s: number, p: number): number {
  if (plan.lengths !== null && p >= plan.lengths[s]!) return -1;
  const t = idx.data[idx.view.offset + s * idx.view.strides[0]! + p * idx.view.strides[2]!]!;
  return t >= 0 && t < plan.sKv ? t : -1;
}

/**
 * Positions whose kv rows some GPU kernel loads for query token s: all of them without topkLength;
 * with it, the blocks that hold the used positions, and at least one block, in blocks of 128 (the
 * largest prefill block). sm100's kernels gather every in-range index of a block they process,
 * past topkLength too, and such a row reaches `out` through a zero probability, so a NaN there
 * would (docs/flashmla-interface.md#prefill-semantics).
 */
const LOAD_BLOCK = 128;
function loadedPositions(plan: PrefillPlan, s: number): number {
  if (plan.lengths === null) return plan.topk;
  return Math.min(plan.topk, Math.max(LOAD_BLOCK, Math.ceil(plan.lengths[s]! / LOAD_BLOCK) * LOAD_BLOCK));
}

/**
 * The distinct rows in [0, s_kv) that `visit` names, ascending: a bitmap over s_kv when that is
 * small, else the named rows sorted (s_kv may be up to 2^31 − 1 with a zero row stride, while a
 * call names at most s_q·topk rows).
 */
export function namedRows(sKv: number, visit: (name: (t: number) => void) => void): Int32Array {
  if (sKv <= BITMAP_ROWS) {
    const seen = new Uint8Array(sKv);
    let n = 0;
    visit((t) => { if (t >= 0 && t < sKv && seen[t] === 0) { seen[t] = 1; n++; } });
    const rows = new Int32Array(n);
    for (let t = 0, j = 0; j < n; t++) if (seen[t] === 1) rows[j++] = t;
    return rows;
  }
  const all: number[] = [];
  visit((t) => { if (t >= 0 && t < sKv) all.push(t); });
  const sorted = Int32Array.from(all).sort();
  let n = 0;
  for (let j = 0; j < sorted.length; j++) if (j === 0 || sorted[j] !== sorted[j - 1]) sorted[n++] = sorted[j]!;
  return sorted.slice(0, n);
}
const BITMAP_ROWS = 1 << 24;

/**
 * kv rows a kernel loads must be finite (a NaN or infinite key or value makes rows NaN); rows no
 * index in a loaded block selects may hold anything, as unwritten slots of a cache do.
 */
function expectUsedKvFinite(plan: PrefillPlan, downloaded: Downloaded | undefined): void {
  const kv = hostData(plan.kv, downloaded);
  const idx = hostData(plan.indices, downloaded);
  if (kv === null || idx === null || (plan.topkLength !== null && plan.lengths === null)) return;
  const [s0, , s2] = kv.view.strides as [number, number, number];
  const [i0, , i2] = idx.view.strides as [number, number, number];
  const rows = namedRows(plan.sKv, (name) => {
    for (let s = 0; s < plan.sQ; s++) {
      const end = loadedPositions(plan, s);
      for (let p = 0; p < end; p++) name(idx.data[idx.view.offset + s * i0 + p * i2]!);
    }
  });
  const data = kv.data;
  for (const t of rows) {
    const o = kv.view.offset + t * s0;
    for (let d = 0; d < plan.dQK; d++) {
      if ((data[o + d * s2]! & 0x7f80) === 0x7f80) throw nonFiniteError('kv', [t, 0, d]);
    }
  }
}
