import type { DensePlan } from '../plan.js';
import type { HostTensor } from '../tensor.js';
import { FP16_TO_F32 } from '../formats/fp16.js';
import type { TileKernels } from './kernels.js';
import { storePartial, type Partial } from './partial.js';
import { qLoaded } from './qmemo.js';
import { softmaxScaleLog2 } from '../softmax-scale.js';
import { TILE } from './workspace.js';

/** One unit of dense work: request i, KV head k, keys [t0, t1) of that request, rows [r0, r1). */
export interface DenseItem {
  i: number;
  k: number;
  t0: number;
  t1: number;
  r0: number;
  r1: number;
}

/** Rows of a dense item: (s, j) → query s, head k·hpk + j (FlashMLA's q regrouping, docs/flashmla-interface.md#dense-host-layer). */
export function denseRows(plan: DensePlan): number {
  return plan.sQ * (plan.hQ / plan.hK);
}

/**
 * docs/flashmla-interface.md#dense-semantics for one item, into `out`: key t of request i is row t % 64 of page blockTable[i][t / 64];
 * causal rows see keys t ≤ L − s_q + s. Each page is converted to fp32 once and serves every row.
 */
export function attendDense(plan: DensePlan, item: DenseItem, kernels: TileKernels, out: Partial): void {
  const { sQ, hQ, hK, dQK, dV, causal } = plan;
  const hpk = hQ / hK;
  const rows = item.r1 - item.r0;
  const ws = kernels.workspace(rows, dQK, dV);
  const q = (plan.q.tensor as HostTensor).data as Uint16Array;
  const kc = (plan.kCache.tensor as HostTensor).data as Uint16Array;
  const bt = (plan.blockTable.tensor as HostTensor).data as Int32Array;
  const L = plan.seqlens![item.i]!;
  const fp16 = plan.dtype === 'fp16';

  const qv = plan.q.view;
  // Chunks of one row group share the converted rows (qmemo.ts).
  if (!qLoaded(ws, plan, item.i * plan.hK + item.k, item.r0)) {
    for (let r = 0; r < rows; r++) {
      const s = Math.floor((item.r0 + r) / hpk);
      const j = (item.r0 + r) % hpk;
      const src = qv.offset + item.i * qv.strides[0]! + s * qv.strides[1]! + (item.k * hpk + j) * qv.strides[2]!;
      const dst = r * dQK;
      if (fp16) for (let d = 0; d < dQK; d++) ws.q[dst + d] = FP16_TO_F32[q[src + d]!]!;
      else for (let d = 0; d < dQK; d++) ws.q32[dst + d] = q[src + d]! << 16;
    }
  }

  ws.reset();
  const kv = plan.kCache.view;
  const btv = plan.blockTable.view;
  const scaleLog2 = softmaxScaleLog2('dense', plan.softmaxScale);
  const end = Math.min(item.t1, L);
  for (let t0 = item.t0; t0 < end; t0 += TILE - (t0 % TILE)) {
    const page = Math.floor(t0 / TILE);
    const first = t0 % TILE;
    const tokens = Math.min(TILE - first, end - t0);
    const block = bt[btv.offset + item.i * btv.strides[0]! + page * btv.strides[1]!]!;
    const at = kv.offset + block * kv.strides[0]! + first * kv.strides[1]! + item.k * kv.strides[2]!;
    if (fp16) {
      for (let u = 0; u < tokens; u++) {
        const src = at + u * kv.strides[1]!;
        for (let d = 0; d < dQK; d++) ws.k[u * dQK + d] = FP16_TO_F32[kc[src + d]!]!;
      }
    } else {
      ws.loadBf16(kc, at, kv.strides[1]!, tokens);
    }
    // Causal: row (s, j) sees keys up to L − s_q + s, i.e. the first (L − s_q + s − t0 + 1) of this tile.
    for (let r = 0; r < rows; r++) {
      ws.vis[r] = causal ? Math.max(0, Math.min(tokens, L - sQ + Math.floor((item.r0 + r) / hpk) - t0 + 1)) : tokens;
    }
    ws.step(tokens, scaleLog2);
  }
  storePartial(out, ws);
}
