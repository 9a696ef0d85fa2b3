import type { DensePlan } from '../plan.js';
import { isHostTensor, type HostTensor } from '../tensor.js';
import { FlashMLAError } from '../errors.js';
import { FP16_TO_F32 } from '../formats/fp16.js';
import type { TileKernels } from './kernels.js';
import type { Partial } from './partial.js';
import { LOG2E } from './softmax.js';
import { TILE, workspaceFor } from './workspace.js';

/** One unit of dense work: request i, KV head k, keys [t0, t1) of that request. */
export interface DenseItem {
  i: number;
  k: number;
  t0: number;
  t1: number;
}

function hostOf(t: unknown, name: string): HostTensor {
  if (!isHostTensor(t as HostTensor)) {
    throw new FlashMLAError('E_DEVICE', `${name} is a device tensor; the reference backend needs host tensors`, name);
  }
  return t as HostTensor;
}

/**
 * SPEC §6.2 for one item: rows are (s, j) → query s, head k·hpk + j (FlashMLA's q regrouping,
 * §2.2); key t of request i is row t % 64 of page blockTable[i][t / 64]; causal rows see keys
 * t ≤ L − s_q + s. Each 64-token page is converted to fp32 once and serves every row.
 */
export function attendDense(plan: DensePlan, item: DenseItem, kernels: TileKernels): Partial {
  const { sQ, hQ, hK, dQK, dV, causal } = plan;
  const hpk = hQ / hK;
  const rows = sQ * hpk;
  const ws = workspaceFor(kernels, rows, dQK, dV);
  const q = hostOf(plan.q.tensor, 'q').data as Uint16Array;
  const kc = hostOf(plan.kCache.tensor, 'kCache').data as Uint16Array;
  const bt = hostOf(plan.blockTable.tensor, 'blockTable').data as Int32Array;
  const L = plan.seqlens![item.i]!;
  const fp16 = plan.dtype === 'fp16';

  // Q rows → fp32.
  const qv = plan.q.view;
  for (let s = 0; s < sQ; s++) {
    for (let j = 0; j < hpk; j++) {
      const src = qv.offset + item.i * qv.strides[0]! + s * qv.strides[1]! + (item.k * hpk + j) * qv.strides[2]!;
      const dst = (s * hpk + j) * dQK;
      if (fp16) for (let d = 0; d < dQK; d++) ws.q[dst + d] = FP16_TO_F32[q[src + d]!]!;
      else for (let d = 0; d < dQK; d++) ws.q32[dst + d] = q[src + d]! << 16;
    }
  }

  ws.state.reset(rows);
  const kv = plan.kCache.view;
  const btv = plan.blockTable.view;
  const scaleLog2 = plan.softmaxScale * LOG2E;
  const end = Math.min(item.t1, L);
  for (let t0 = item.t0; t0 < end; t0 += TILE - (t0 % TILE)) {
    const page = Math.floor(t0 / TILE);
    const first = t0 % TILE;
    const tokens = Math.min(TILE - first, end - t0);
    const block = bt[btv.offset + item.i * btv.strides[0]! + page * btv.strides[1]!]!;
    for (let u = 0; u < tokens; u++) {
      const src = kv.offset + block * kv.strides[0]! + (first + u) * kv.strides[1]! + item.k * kv.strides[2]!;
      const dst = u * dQK;
      if (fp16) for (let d = 0; d < dQK; d++) ws.k[dst + d] = FP16_TO_F32[kc[src + d]!]!;
      else for (let d = 0; d < dQK; d++) ws.k32[dst + d] = kc[src + d]! << 16;
    }
    // Causal: row (s, j) sees keys up to L − s_q + s, i.e. the first (L − s_q + s − t0 + 1) of this tile.
    const mask = causal ? (r: number) => L - sQ + Math.floor(r / hpk) - t0 + 1 : undefined;
    ws.step(rows, tokens, scaleLog2, mask);
  }
  const st = ws.state;
  return { rows, dv: dV, m: st.m.slice(0, rows), l: st.l.slice(0, rows), o: st.o.slice(0, rows * dV) };
}
