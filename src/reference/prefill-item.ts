import type { PrefillPlan } from '../plan.js';
import { softmaxScaleLog2 } from '../softmax-scale.js';
import type { HostTensor } from '../tensor.js';
import { usedIndex } from '../validate/prefill.js';
import type { TileKernels } from './kernels.js';
import { storePartial, type Partial } from './partial.js';
import { qLoaded } from './qmemo.js';
import { TILE, type Workspace } from './workspace.js';

/** One unit of prefill work: query token s, index positions [p0, p1). */
export interface PrefillItem {
  /** Query token. */
  s: number;
  /** First index position. */
  p0: number;
  /** One past the last index position (the token's topkLength caps it too). */
  p1: number;
}

/**
 * The running max every prefill row starts from: FlashMLA's sparse prefill kernels start it at
 * −1e30, not −Infinity, so logits below that contribute nothing (docs/reference-backend.md#prefill).
 */
export const PREFILL_MAX_INIT = -1e30;

/** Index positions of query token s the kernels visit: its topkLength, else topk. */
export function prefillCandidates(plan: PrefillPlan, s: number): number {
  return plan.lengths ? plan.lengths[s]! : plan.topk;
}

/** Per workspace, a bf16 staging tile of gathered kv rows (TILE × d_qk), made once. */
const staging = new WeakMap<Workspace, Uint16Array>();

/**
 * The prefill analogue of sparse.ts `attendSparse` for one item, into `out`: the used kv rows of
 * positions [p0, p1) of token s (position < topkLength[s], index in [0, s_kv); validate/prefill.ts
 * `usedIndex`) are gathered 64 at a time, converted to fp32 once and served to all h_q heads. The
 * running max starts at PREFILL_MAX_INIT and P is rounded to bf16 before P·V (the tile's `roundP`),
 * as FlashMLA's prefill kernels (docs/flashmla-interface.md#sparse-prefill). V is dims 0–511 of the row.
 * binding/cpu_runner.cc `RunPrefill` is the same item on the native runner.
 */
export function attendPrefill(plan: PrefillPlan, item: PrefillItem, kernels: TileKernels, out: Partial): void {
  const { hQ, dQK, dV } = plan;
  const ws = kernels.workspace(hQ, dQK, dV);
  const qv = plan.q.view;
  const q = (plan.q.tensor as HostTensor).data as Uint16Array;
  if (!qLoaded(ws, plan, item.s, 0)) {
    for (let h = 0; h < hQ; h++) {
      const src = qv.offset + item.s * qv.strides[0]! + h * qv.strides[1]!;
      for (let d = 0; d < dQK; d++) ws.q32[h * dQK + d] = q[src + d]! << 16;
    }
  }
  ws.reset();
  ws.m.fill(PREFILL_MAX_INIT, 0, hQ);
  let tile = staging.get(ws);
  if (!tile) staging.set(ws, (tile = new Uint16Array(TILE * dQK)));
  const kv = (plan.kv.tensor as HostTensor).data as Uint16Array;
  const kvv = plan.kv.view;
  const idx = { data: (plan.indices.tensor as HostTensor).data, view: plan.indices.view };
  const scaleLog2 = softmaxScaleLog2('sparse', plan.smScale);
  const flush = (tokens: number): void => {
    ws.loadBf16(tile, 0, dQK, tokens);
    ws.vis.fill(tokens, 0, hQ);
    ws.step(tokens, scaleLog2, true);
  };
  let filled = 0;
  const end = Math.min(item.p1, prefillCandidates(plan, item.s));
  for (let p = item.p0; p < end; p++) {
    const t = usedIndex(plan, idx, item.s, p);
    if (t < 0) continue;
    const at = kvv.offset + t * kvv.strides[0]!;
    tile.set(kv.subarray(at, at + dQK), filled * dQK);
    if (++filled === TILE) {
      flush(filled);
      filled = 0;
    }
  }
  if (filled > 0) flush(filled);
  storePartial(out, ws);
}
