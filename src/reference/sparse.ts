import type { SparsePlan, SparseScope } from '../plan.js';
import type { HostTensor } from '../tensor.js';
import type { TileKernels } from './kernels.js';
import { storePartial, type Partial } from './partial.js';
import { qLoaded } from './qmemo.js';
import { softmaxScaleLog2 } from '../softmax-scale.js';
import { TILE, type Workspace } from './workspace.js';

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

/**
 * docs/flashmla-interface.md#sparse-semantics for one item, into `out`: candidates are indices[i, s, :topk] then extra indices;
 * a candidate is used iff its value is not −1 and its position is below topk_length (resp.
 * extra_topk_length). Only used tokens are read: gathered 64 at a time, dequantised once (docs/flashmla-interface.md#kv-caches) and
 * served to all h_q heads. V is dims 0–511 of the token: NoPE only for V3.2, NoPE + RoPE for
 * MODEL1 (docs/flashmla-interface.md#value-vector).
 */
export function attendSparse(plan: SparsePlan, item: SparseItem, kernels: TileKernels, out: Partial): void {
  const { hQ, dQK, dV, layout } = plan;
  const ws = kernels.workspace(hQ, dQK, dV);
  const qv = plan.q.view;
  const q = (plan.q.tensor as HostTensor).data as Uint16Array;
  // Chunks of one query token share the converted rows (qmemo.ts).
  if (!qLoaded(ws, plan, item.i * plan.sQ + item.s, 0)) {
    for (let h = 0; h < hQ; h++) {
      const src = qv.offset + item.i * qv.strides[0]! + item.s * qv.strides[1]! + h * qv.strides[2]!;
      for (let d = 0; d < dQK; d++) ws.q32[h * dQK + d] = q[src + d]! << 16;
    }
  }
  ws.reset();
  const scaleLog2 = softmaxScaleLog2('sparse', plan.softmaxScale);
  const flush = (tokens: number): void => {
    ws.endTokens(layout, tokens);
    ws.vis.fill(tokens, 0, hQ);
    ws.step(tokens, scaleLog2);
  };

  let filled = 0;
  let base = 0;
  for (const scope of plan.extra ? [plan.main, plan.extra] : [plan.main]) {
    const lo = Math.max(item.p0 - base, 0);
    const hi = Math.min(item.p1 - base, scope.lengths ? scope.lengths[item.i]! : scope.topk, scope.topk);
    for (let p = lo; p < hi; p++) {
      const index = indexAt(scope, item, p);
      if (index === -1) continue;
      gather(ws, plan, scope, index, filled);
      if (++filled === TILE) {
        flush(filled);
        filled = 0;
      }
    }
    base += scope.topk;
  }
  if (filled > 0) flush(filled);
  storePartial(out, ws);
}

function indexAt(scope: SparseScope, item: SparseItem, p: number): number {
  const v = scope.indices.view;
  return ((scope.indices.tensor as HostTensor).data as Int32Array)[v.offset + item.i * v.strides[0]! + item.s * v.strides[1]! + p * v.strides[2]!]!;
}

/** Token slot u ← cache token `index` (block index / B, row index % B; docs/flashmla-interface.md#kv-caches). */
function gather(ws: Workspace, plan: SparsePlan, scope: SparseScope, index: number, u: number): void {
  const bytes = (scope.cache.tensor as HostTensor).data as Uint8Array;
  const cv = scope.cache.view;
  const B = scope.pageBlockSize;
  const blockAt = cv.offset + Math.floor(index / B) * cv.strides[0]!;
  if (plan.layout === 'v32') ws.tokenV32(bytes, blockAt + (index % B) * cv.strides[1]!, u);
  else ws.tokenModel1(bytes, blockAt, B, index % B, u);
}
