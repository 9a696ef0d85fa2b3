import type { Bound, DensePlan, PrefillPlan, SparsePlan, SparseScope } from '../plan.js';
import { extentOf, type HostTensor } from '../tensor.js';
import { MODEL1, V32 } from '../kvcache/layout.js';
import { usedIndex } from '../validate/prefill.js';
import { ITEM, type ItemPlan } from './items.js';
import { nativeTileApi, type CpuTileApi } from './tile-native.js';
import { copyBytes, TILE } from './workspace.js';

type Typed = Uint8Array | Uint16Array | Int32Array | Float32Array;
type TypedCtor = new (buffer: SharedArrayBuffer, byteOffset?: number, length?: number) => Typed;

const isShared = (a: Typed): boolean => a.buffer instanceof SharedArrayBuffer;

/**
 * Shared memory for staged inputs and results, reused from call to call: fresh memory costs a
 * page fault per 4 KiB (~2 ms for a 4.7 MB cache), more than the copy itself. Only one pooled
 * call stages at a time (pool.exclusive), so regions are handed out from the start on each call.
 */
class Arena {
  private buffer = new SharedArrayBuffer(1 << 20);
  private used = 0;

  reset(): void {
    this.used = 0;
  }

  take<T extends Typed>(Ctor: TypedCtor, length: number): T {
    // Sizes pass 2^31 bytes for large caches: plain arithmetic, no bit operators.
    const bytes = Math.ceil((Math.max(length, 1) * (Ctor as unknown as { BYTES_PER_ELEMENT: number }).BYTES_PER_ELEMENT) / 16) * 16;
    if (this.used + bytes > this.buffer.byteLength) {
      // Earlier regions of this call stay valid in the old buffer; the new one serves later calls.
      this.buffer = new SharedArrayBuffer(Math.max(2 * this.buffer.byteLength, bytes));
      this.used = 0;
    }
    const view = new Ctor(this.buffer, this.used, length) as T;
    this.used += bytes;
    return view;
  }
}

export const arena = new Arena();

function sharedCopy<T extends Typed>(a: T, from: number, to: number): T {
  const c = arena.take<T>(a.constructor as TypedCtor, Math.max(to - from, 0));
  c.set(a.subarray(from, to) as never);
  return c;
}

/** A tensor workers can read: itself when its data is in a SharedArrayBuffer, else a shared copy of the span its view covers. */
function shareBound(b: Bound): Bound {
  const t = b.tensor as HostTensor;
  if (isShared(t.data)) return b;
  const data = sharedCopy(t.data, b.view.offset, extentOf(b.view));
  return { tensor: { ...t, data, offset: 0 } as HostTensor, view: { ...b.view, offset: 0 } };
}

const shareInts = (a: Int32Array | null): Int32Array | null => (a && !isShared(a) ? sharedCopy(a, 0, a.length) : a);

function bound(data: Typed, dtype: HostTensor['dtype'], shape: number[], strides: number[]): Bound {
  return { tensor: { dtype, shape, strides, data } as HostTensor, view: { dtype, shape, strides, offset: 0 } };
}

/**
 * A plan as worker threads see it, and how to fill it: `stage(items, j)` copies what item j of
 * `items` reads into the plan's shared arrays (null when nothing needs copying). Items must be
 * staged before a worker runs them; the calling thread runs its own items on the original plan.
 */
export interface Staged {
  plan: ItemPlan;
  stage: ((items: Int32Array, j: number) => void) | null;
}

/**
 * The dense cache for workers: zero-copy when shared; else a compact shared cache with one slot
 * per page a request reads (the first ceil(L/64) of each), and a block table remapped to it. Each
 * page is copied when the first staged item needs it, so only the workers' pages are copied.
 */
function shareDense(plan: DensePlan): Staged {
  const base = { ...plan, q: shareBound(plan.q), cacheSeqlens: shareBound(plan.cacheSeqlens), seqlens: shareInts(plan.seqlens) };
  const kt = plan.kCache.tensor as HostTensor;
  if (isShared(kt.data)) return { plan: { ...base, blockTable: shareBound(plan.blockTable) }, stage: null };
  const kv = plan.kCache.view;
  const [, s1, s2, s3] = kv.strides as [number, number, number, number];
  const span = (TILE - 1) * s1 + (plan.hK - 1) * s2 + plan.dQK;
  const stride0 = Math.ceil(span / 8) * 8;
  const bt = (plan.blockTable.tensor as HostTensor).data as Int32Array;
  const btv = plan.blockTable.view;
  const firstSlot = new Int32Array(plan.b + 1);
  for (let i = 0; i < plan.b; i++) firstSlot[i + 1] = firstSlot[i]! + Math.ceil(plan.seqlens![i]! / TILE);
  const slots = firstSlot[plan.b]!;
  const table = arena.take<Int32Array>(Int32Array, plan.b * plan.maxBlocksPerSeq).fill(0);
  for (let i = 0; i < plan.b; i++) {
    for (let page = 0; page < firstSlot[i + 1]! - firstSlot[i]!; page++) table[i * plan.maxBlocksPerSeq + page] = firstSlot[i]! + page;
  }
  const src = kt.data as Uint16Array;
  const data = arena.take<Uint16Array>(Uint16Array, Math.max(slots, 1) * stride0);
  const copied = new Uint8Array(slots);
  const stage = (items: Int32Array, j: number): void => {
    const i = items[ITEM * j]!, t0 = items[ITEM * j + 2]!, t1 = items[ITEM * j + 3]!;
    for (let page = Math.floor(t0 / TILE); page * TILE < t1; page++) {
      const slot = firstSlot[i]! + page;
      if (copied[slot]) continue;
      copied[slot] = 1;
      const from = kv.offset + bt[btv.offset + i * btv.strides[0]! + page * btv.strides[1]!]! * kv.strides[0]!;
      data.set(src.subarray(from, from + span), slot * stride0);
    }
  };
  return {
    plan: {
      ...base,
      numBlocks: Math.max(slots, 1),
      kCache: bound(data, kt.dtype, [Math.max(slots, 1), TILE, plan.hK, plan.dQK], [stride0, s1, s2, s3]),
      blockTable: bound(table, 'int32', [plan.b, plan.maxBlocksPerSeq], [plan.maxBlocksPerSeq, 1]),
    },
    stage,
  };
}

let gatherFn: CpuTileApi['gather'] | null | undefined;

/** The addon's gather when it is loaded (one native call stages an item's tokens), else null. */
function nativeGather(): CpuTileApi['gather'] | null {
  if (gatherFn === undefined) {
    const api = nativeTileApi();
    gatherFn = typeof api === 'string' ? null : (api.gather ?? null);
  }
  return gatherFn;
}

/** The (from, to, bytes) triples of one staging call, reused. */
let runScratch = new Float64Array(3 * 2048);

/** A sparse scope for workers, and how to stage the candidates [lo, hi) of one query token. */
interface StagedScope {
  scope: SparseScope;
  stage: ((i: number, s: number, lo: number, hi: number) => void) | null;
}

/**
 * One sparse scope for workers: zero-copy when shared; else a compact shared cache of one-token
 * blocks (V3.2: the 656-byte row; MODEL1: the 576-byte record then its 8 scale bytes) with
 * remapped indices. A token gets its slot, and is copied, when the first staged item selects it;
 * slots are found through a per-call table over the cache's tokens (no Map).
 */
function shareScope(plan: SparsePlan, scope: SparseScope): StagedScope {
  const base = { ...scope, topkLength: scope.topkLength && shareBound(scope.topkLength), lengths: shareInts(scope.lengths) };
  const ct = scope.cache.tensor as HostTensor;
  if (isShared(ct.data)) return { scope: { ...base, indices: shareBound(scope.indices) }, stage: null };
  const iv = scope.indices.view;
  const idx = (scope.indices.tensor as HostTensor).data as Int32Array;
  const { b, sQ } = plan;
  const { topk } = scope;
  const B = scope.pageBlockSize;
  const remapped = arena.take<Int32Array>(Int32Array, b * sQ * topk).fill(-1);
  const slotOf = arena.take<Int32Array>(Int32Array, scope.numBlocks * B).fill(-1);
  const v32 = plan.layout === 'v32';
  const rec = v32 ? V32.bytesPerToken : MODEL1.bytesPerToken;
  const src = ct.data as Uint8Array;
  const cv = scope.cache.view;
  const capacity = Math.max(Math.min(b * sQ * topk, scope.numBlocks * B), 1);
  const data = arena.take<Uint8Array>(Uint8Array, capacity * rec);
  let slots = 0;
  const gather = nativeGather();
  // (from, to, bytes) of each copy an item needs, for one native call (gather) or copyBytes each.
  let runs = 0;
  const copy = (from: number, to: number, bytes: number): void => {
    if (!gather) {
      copyBytes(src, from, data, to, bytes);
      return;
    }
    if (3 * runs + 3 > runScratch.length) runScratch = Float64Array.from({ length: 2 * runScratch.length + 3 }, (_, n) => runScratch[n] ?? 0);
    runScratch[3 * runs] = from;
    runScratch[3 * runs + 1] = to;
    runScratch[3 * runs + 2] = bytes;
    runs++;
  };
  const stage = (i: number, s: number, lo: number, hi: number): void => {
    const row0 = iv.offset + i * iv.strides[0]! + s * iv.strides[1]!;
    const out0 = (i * sQ + s) * topk;
    runs = 0;
    for (let p = lo; p < hi; p++) {
      const index = idx[row0 + p * iv.strides[2]!]!;
      if (index === -1) continue;
      let slot = slotOf[index]!;
      if (slot === -1) {
        slotOf[index] = slot = slots++;
        const blockAt = cv.offset + Math.floor(index / B) * cv.strides[0]!;
        const row = index % B;
        if (v32) {
          copy(blockAt + row * cv.strides[1]!, slot * rec, rec);
        } else {
          copy(blockAt + row * MODEL1.recordBytes, slot * rec, MODEL1.recordBytes);
          copy(blockAt + B * MODEL1.recordBytes + row * MODEL1.scaleRecordBytes, slot * rec + MODEL1.recordBytes, MODEL1.scaleRecordBytes);
        }
      }
      remapped[out0 + p] = slot;
    }
    if (gather && runs > 0) gather(src, data, runScratch, runs);
  };
  return {
    scope: {
      ...base,
      cache: bound(data, 'uint8', [capacity, 1, 1, rec], [rec, rec, rec, 1]),
      numBlocks: capacity,
      pageBlockSize: 1,
      blockStride: rec,
      indices: bound(remapped, 'int32', [b, sQ, topk], [sQ * topk, topk, 1]),
    },
    stage,
  };
}

function shareSparse(plan: SparsePlan): Staged {
  const scopes = plan.extra ? [plan.main, plan.extra] : [plan.main];
  const staged = scopes.map((scope) => shareScope(plan, scope));
  const shared: SparsePlan = { ...plan, q: shareBound(plan.q), main: staged[0]!.scope, extra: staged[1]?.scope ?? null, attnSink: null };
  if (staged.every((s) => s.stage === null)) return { plan: shared, stage: null };
  // Candidate positions [p0, p1) run over main ++ extra; each scope stages its in-length part (docs/flashmla-interface.md#extra-cache).
  const stage = (items: Int32Array, j: number): void => {
    const i = items[ITEM * j]!, s = items[ITEM * j + 1]!, p0 = items[ITEM * j + 2]!, p1 = items[ITEM * j + 3]!;
    let base = 0;
    for (let n = 0; n < scopes.length; n++) {
      const scope = scopes[n]!;
      const lo = Math.max(p0 - base, 0);
      const hi = Math.min(p1 - base, scope.lengths ? scope.lengths[i]! : scope.topk, scope.topk);
      staged[n]!.stage?.(i, s, lo, hi);
      base += scope.topk;
    }
  };
  return { plan: shared, stage };
}

/**
 * A prefill for workers: q shared (zero-copy when it already is); kv zero-copy when shared, else
 * a compact shared kv of the rows staged items use, with indices remapped to it (−1, unused, where
 * a position is not used). A row gets its slot, and is copied, when the first staged item uses it.
 */
function sharePrefill(plan: PrefillPlan): Staged {
  const base = { ...plan, q: shareBound(plan.q), lengths: shareInts(plan.lengths), attnSink: null, topkLength: null };
  const kt = plan.kv.tensor as HostTensor;
  if (isShared(kt.data)) return { plan: { ...base, indices: shareBound(plan.indices) }, stage: null };
  const { sQ, topk, dQK } = plan;
  const idx = { data: (plan.indices.tensor as HostTensor).data, view: plan.indices.view };
  const remapped = arena.take<Int32Array>(Int32Array, sQ * topk).fill(-1);
  const slotOf = arena.take<Int32Array>(Int32Array, plan.sKv).fill(-1);
  const capacity = Math.max(Math.min(sQ * topk, plan.sKv), 1);
  const data = arena.take<Uint16Array>(Uint16Array, capacity * dQK);
  const src = kt.data as Uint16Array;
  const kvv = plan.kv.view;
  let slots = 0;
  const stage = (items: Int32Array, j: number): void => {
    const s = items[ITEM * j + 1]!, p1 = items[ITEM * j + 3]!;
    for (let p = items[ITEM * j + 2]!; p < p1; p++) {
      const t = usedIndex(plan, idx, s, p);
      if (t < 0) continue;
      let slot = slotOf[t]!;
      if (slot === -1) {
        slotOf[t] = slot = slots++;
        const at = kvv.offset + t * kvv.strides[0]!;
        data.set(src.subarray(at, at + dQK), slot * dQK);
      }
      remapped[s * topk + p] = slot;
    }
  };
  return {
    plan: {
      ...base,
      sKv: capacity,
      kv: bound(data, 'bf16', [capacity, 1, dQK], [dQK, dQK, 1]),
      indices: bound(remapped, 'int32', [sQ, 1, topk], [topk, topk, 1]),
    },
    stage,
  };
}

/**
 * The plan as worker threads see it: every array the items read is in a SharedArrayBuffer (posted
 * without copying). Host tensors already backed by one are used as they are; others get room in
 * the arena, filled item by item through `stage` (call inside pool.exclusive, after arena.reset()).
 */
export function stagePlan(plan: ItemPlan): Staged {
  return plan.kind === 'prefill' ? sharePrefill(plan) : plan.kind === 'dense' ? shareDense(plan) : shareSparse(plan);
}
