import type { DecodePlan, PrefillPlan } from '../plan.js';
import { attendDense, denseRows } from './dense.js';
import type { TileKernels } from './kernels.js';
import { copyPartial, mergeInto, partialIn, type Partial } from './partial.js';
import { attendPrefill, prefillCandidates } from './prefill-item.js';
import { attendSparse, candidateCount } from './sparse.js';

/** A call the item machinery runs: a decode (dense or sparse) or a sparse prefill (docs/reference-backend.md#prefill). */
export type ItemPlan = DecodePlan | PrefillPlan;

/**
 * Keys (dense) or candidate positions (sparse) per work item: MAX_CHUNK, halved down to MIN_CHUNK
 * while a call has fewer than MIN_ITEMS items, so short calls still spread evenly over threads
 * and the last items leave little imbalance (sparse b=4 h_q=64: 16 items of 512 candidates, not
 * 8 of 1024; dense b=1 s_k=4096: 8 items, not 4). Below 512 keys the per-item fixed costs (the
 * partial's copy and merge, 128 × 512 floats each) outweigh the balance gained. The size depends
 * only on the plan, never on the thread count, so every thread count computes the same partials
 * and merges them in the same order: results are bitwise identical for any `threads`. Multiples
 * of TILE, so dense chunks start on a page.
 */
export const MAX_CHUNK = 1024;
export const MIN_CHUNK = 512;
export const MIN_ITEMS = 16;

/**
 * Most query rows per dense item. More rows share each converted K tile, but past ~128 rows the
 * fp32 Q and O rows (2.2 KB + 2 KB each) no longer fit in a 1 MB L2 with the tile, and the loops
 * slow down by a quarter (s_q = 2, h_q = 128 has 256 rows).
 */
export const MAX_ROWS = 128;

/** int32 fields per item. */
export const ITEM = 6;

/**
 * The work items of a plan, ITEM int32 each: dense (i, k, t0, t1, r0, r1), sparse (i, s, p0, p1,
 * 0, h_q), prefill (0, s, p0, p1, 0, h_q) with p1 at most the token's topkLength; grouped by
 * output rows (dense: request × KV head × row block, sparse: request × query token, prefill: query
 * token), chunks of a group in key order. A group with no keys still gets one (empty) item: its
 * rows are lonely.
 */
export function workItems(plan: ItemPlan): Int32Array {
  const chunk = chunkSize(plan);
  const out: number[] = [];
  if (plan.kind === 'prefill') {
    for (let s = 0; s < plan.sQ; s++) {
      const n = prefillCandidates(plan, s);
      for (let p0 = 0; p0 === 0 || p0 < n; p0 += chunk) out.push(0, s, p0, Math.min(p0 + chunk, n), 0, plan.hQ);
    }
  } else if (plan.kind === 'dense') {
    for (let i = 0; i < plan.b; i++) {
      const L = plan.seqlens![i]!;
      const rows = denseRows(plan);
      for (let k = 0; k < plan.hK; k++) {
        for (let r0 = 0; r0 < rows; r0 += MAX_ROWS) {
          for (let t0 = 0; t0 === 0 || t0 < L; t0 += chunk) out.push(i, k, t0, Math.min(t0 + chunk, L), r0, Math.min(r0 + MAX_ROWS, rows));
        }
      }
    }
  } else {
    const n = candidateCount(plan);
    for (let i = 0; i < plan.b; i++) {
      for (let s = 0; s < plan.sQ; s++) {
        for (let p0 = 0; p0 === 0 || p0 < n; p0 += chunk) out.push(i, s, p0, Math.min(p0 + chunk, n), 0, plan.hQ);
      }
    }
  }
  return Int32Array.from(out);
}

/** The chunk of a plan's items (see MAX_CHUNK). */
export function chunkSize(plan: ItemPlan): number {
  let groups: number;
  let keys: number[];
  if (plan.kind === 'prefill') {
    groups = 1;
    keys = Array.from({ length: plan.sQ }, (_, s) => prefillCandidates(plan, s));
  } else if (plan.kind === 'dense') {
    groups = plan.hK * Math.ceil(denseRows(plan) / MAX_ROWS);
    keys = Array.from(plan.seqlens!);
  } else {
    groups = plan.sQ;
    keys = new Array<number>(plan.b).fill(candidateCount(plan));
  }
  const count = (chunk: number): number => groups * keys.reduce((sum, L) => sum + Math.max(1, Math.ceil(L / chunk)), 0);
  let chunk = MAX_CHUNK;
  while (chunk > MIN_CHUNK && count(chunk) < MIN_ITEMS) chunk /= 2;
  return chunk;
}

/**
 * Whether items a and b fold into the same output rows (request, KV head or query token, first
 * row); a group's items are consecutive (binding/cpu_runner.cc tells groups the same way).
 */
export function sameGroup(items: Int32Array, a: number, b: number): boolean {
  return items[ITEM * a] === items[ITEM * b] && items[ITEM * a + 1] === items[ITEM * b + 1] && items[ITEM * a + 4] === items[ITEM * b + 4];
}

/** Most output rows of one item (dense: s_q·h_q/h_k up to MAX_ROWS, sparse and prefill: h_q). */
export function itemRows(plan: ItemPlan): number {
  return plan.kind === 'dense' ? Math.min(denseRows(plan), MAX_ROWS) : plan.hQ;
}

/** Multiply-adds × 2 of the whole call (an upper bound for sparse and prefill: every candidate counted). */
export function planFlops(plan: ItemPlan): number {
  const perKey = 2 * plan.hQ * (plan.dQK + plan.dV);
  if (plan.kind === 'prefill') {
    let n = 0;
    for (let s = 0; s < plan.sQ; s++) n += prefillCandidates(plan, s);
    return n * perKey;
  }
  if (plan.kind === 'sparse') return plan.b * plan.sQ * candidateCount(plan) * perKey;
  let keys = 0;
  for (let i = 0; i < plan.b; i++) keys += plan.seqlens![i]!;
  return keys * plan.sQ * perKey;
}

/** Runs item j of `items` into `out` (whose rows must be r1 − r0). */
export function runItem(plan: ItemPlan, items: Int32Array, j: number, kernels: TileKernels, out: Partial): void {
  const f = (n: number): number => items[ITEM * j + n]!;
  const a = f(0), b = f(1), c = f(2), d = f(3);
  if (plan.kind === 'prefill') attendPrefill(plan, { s: b, p0: c, p1: d }, kernels, out);
  else if (plan.kind === 'dense') attendDense(plan, { i: a, k: b, t0: c, t1: d, r0: f(4), r1: f(5) }, kernels, out);
  else attendSparse(plan, { i: a, s: b, p0: c, p1: d }, kernels, out);
}

/**
 * Folds item partials, in item order, into the group they belong to (LSE merge as FlashMLA's
 * combine, docs/flashmla-interface.md#split-kv) and calls `write(j, acc)` with the group's fold
 * when its last item j arrives. `rows` is the most rows of an item (itemRows).
 */
export function groupFolder(items: Int32Array, rows: number, dv: number, write: (j: number, acc: Partial) => void): (j: number, p: Partial) => void {
  const accBuffer = new Float32Array(rows * (dv + 2));
  let acc = partialIn(accBuffer, 0, 0, dv);
  const n = items.length / ITEM;
  return (j, p) => {
    if (j === 0 || !sameGroup(items, j, j - 1)) {
      acc = partialIn(accBuffer, 0, p.rows, dv);
      copyPartial(acc, p);
    } else {
      mergeInto(acc, p);
    }
    if (j + 1 < n && sameGroup(items, j, j + 1)) return;
    write(j, acc);
  };
}
