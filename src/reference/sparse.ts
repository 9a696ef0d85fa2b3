import type { SparsePlan, SparseScope } from '../plan.js';
import type { HostTensor } from '../tensor.js';
import { dequantTokenModel1, dequantTokenV32 } from '../kvcache/token.js';
import type { TileKernels } from './kernels.js';
import type { Partial } from './partial.js';
import { LOG2E } from './softmax.js';
import { TILE, workspaceFor } from './workspace.js';

/** One unit of sparse work: request i, query token s, candidate positions [p0, p1) of main ++ extra. */
export interface SparseItem {
  i: number;
  s: number;
  p0: number;
  p1: number;
}

/** Number of candidate positions of a query token: topk (+ extra_topk). */
export function candidateCount(plan: SparsePlan): number {
  return plan.main.topk + (plan.extra?.topk ?? 0);
}

interface ScopeReader {
  bytes: Uint8Array;
  idx: Int32Array;
  idxBase: number;
  used: number;
  read(index: number, dst: Float32Array, dstOffset: number): void;
}

function readerFor(plan: SparsePlan, scope: SparseScope, i: number, s: number): ScopeReader {
  const bytes = (scope.cache.tensor as HostTensor).data as Uint8Array;
  const cv = scope.cache.view;
  const iv = scope.indices.view;
  const B = scope.pageBlockSize;
  const stride0 = cv.strides[0]!;
  const read = plan.layout === 'v32'
    ? (index: number, dst: Float32Array, o: number) =>
      dequantTokenV32(bytes, cv.offset + Math.floor(index / B) * stride0 + (index % B) * cv.strides[1]!, dst, o)
    : (index: number, dst: Float32Array, o: number) =>
      dequantTokenModel1(bytes, cv.offset + Math.floor(index / B) * stride0, B, index % B, dst, o);
  return {
    bytes,
    idx: (scope.indices.tensor as HostTensor).data as Int32Array,
    idxBase: iv.offset + i * iv.strides[0]! + s * iv.strides[1]!,
    used: scope.lengths ? scope.lengths[i]! : scope.topk,
    read,
  };
}

/**
 * SPEC §6.3–6.4 for one item: candidates are indices[i, s, :topk] then extra indices; a candidate
 * is used iff its value is not −1 and its position is below topk_length (resp. extra_topk_length).
 * Used tokens are gathered 64 at a time, dequantised once (§5) and serve all h_q heads. V is dims
 * 0–511 of the token: NoPE only for V3.2, NoPE + RoPE for MODEL1 (§6.7).
 */
export function attendSparse(plan: SparsePlan, item: SparseItem, kernels: TileKernels): Partial {
  const { hQ, dQK, dV } = plan;
  const ws = workspaceFor(kernels, hQ, dQK, dV);
  const qv = plan.q.view;
  const q = (plan.q.tensor as HostTensor).data as Uint16Array;
  for (let h = 0; h < hQ; h++) {
    const src = qv.offset + item.i * qv.strides[0]! + item.s * qv.strides[1]! + h * qv.strides[2]!;
    for (let d = 0; d < dQK; d++) ws.q32[h * dQK + d] = q[src + d]! << 16;
  }
  ws.state.reset(hQ);
  const scaleLog2 = plan.softmaxScale * LOG2E;
  const scopes = [readerFor(plan, plan.main, item.i, item.s)];
  if (plan.extra) scopes.push(readerFor(plan, plan.extra, item.i, item.s));
  const stride2 = [plan.main.indices.view.strides[2]!, plan.extra?.indices.view.strides[2] ?? 0];

  let filled = 0;
  let base = 0;
  for (let sc = 0; sc < scopes.length; sc++) {
    const r = scopes[sc]!;
    const topk = sc === 0 ? plan.main.topk : plan.extra!.topk;
    const lo = Math.max(item.p0 - base, 0);
    const hi = Math.min(item.p1 - base, r.used, topk);
    for (let p = lo; p < hi; p++) {
      const index = r.idx[r.idxBase + p * stride2[sc]!]!;
      if (index === -1) continue;
      r.read(index, ws.k, filled * dQK);
      if (++filled === TILE) {
        ws.step(hQ, filled, scaleLog2);
        filled = 0;
      }
    }
    base += topk;
  }
  if (filled > 0) ws.step(hQ, filled, scaleLog2);
  const st = ws.state;
  return { rows: hQ, dv: dV, m: st.m.slice(0, hQ), l: st.l.slice(0, hQ), o: st.o.slice(0, hQ * dV) };
}
