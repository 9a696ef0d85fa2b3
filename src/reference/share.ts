import type { Bound, DecodePlan, DensePlan, SparsePlan, SparseScope } from '../plan.js';
import { extentOf, type HostTensor } from '../tensor.js';
import { MODEL1, V32 } from '../kvcache/layout.js';
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
    const bytes = (Math.max(length, 1) * (Ctor as unknown as { BYTES_PER_ELEMENT: number }).BYTES_PER_ELEMENT + 15) & ~15;
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
 * The dense cache for workers: zero-copy when shared; else only the pages the call reads (the
 * first ceil(L/64) of each request), each copied once into a compact shared cache, with a block
 * table remapped to it.
 */
function shareDense(plan: DensePlan): DensePlan {
  const base = { ...plan, q: shareBound(plan.q), cacheSeqlens: shareBound(plan.cacheSeqlens), seqlens: shareInts(plan.seqlens) };
  const kt = plan.kCache.tensor as HostTensor;
  if (isShared(kt.data)) return { ...base, blockTable: shareBound(plan.blockTable) };
  const kv = plan.kCache.view;
  const [, s1, s2, s3] = kv.strides as [number, number, number, number];
  const span = (TILE - 1) * s1 + (plan.hK - 1) * s2 + plan.dQK;
  const stride0 = (span + 7) & ~7;
  const bt = (plan.blockTable.tensor as HostTensor).data as Int32Array;
  const btv = plan.blockTable.view;
  const slots = new Map<number, number>();
  const table = arena.take<Int32Array>(Int32Array, plan.b * plan.maxBlocksPerSeq).fill(0);
  for (let i = 0; i < plan.b; i++) {
    for (let page = 0; page < Math.ceil(plan.seqlens![i]! / TILE); page++) {
      const block = bt[btv.offset + i * btv.strides[0]! + page * btv.strides[1]!]!;
      let slot = slots.get(block);
      if (slot === undefined) slots.set(block, (slot = slots.size));
      table[i * plan.maxBlocksPerSeq + page] = slot;
    }
  }
  const src = kt.data as Uint16Array;
  const data = arena.take<Uint16Array>(Uint16Array, Math.max(slots.size, 1) * stride0);
  for (const [block, slot] of slots) {
    const from = kv.offset + block * kv.strides[0]!;
    data.set(src.subarray(from, from + span), slot * stride0);
  }
  return {
    ...base,
    numBlocks: slots.size,
    kCache: bound(data, kt.dtype, [Math.max(slots.size, 1), TILE, plan.hK, plan.dQK], [stride0, s1, s2, s3]),
    blockTable: bound(table, 'int32', [plan.b, plan.maxBlocksPerSeq], [plan.maxBlocksPerSeq, 1]),
  };
}

/**
 * One sparse scope for workers: zero-copy when shared; else only the tokens its in-length, valid
 * indices select, each copied once into a compact shared cache of one-token blocks (V3.2: the
 * 656-byte row; MODEL1: the 576-byte record then its 8 scale bytes), with remapped indices.
 */
function shareScope(plan: SparsePlan, scope: SparseScope): SparseScope {
  const base = { ...scope, topkLength: scope.topkLength && shareBound(scope.topkLength), lengths: shareInts(scope.lengths) };
  const ct = scope.cache.tensor as HostTensor;
  if (isShared(ct.data)) return { ...base, indices: shareBound(scope.indices) };
  const iv = scope.indices.view;
  const idx = (scope.indices.tensor as HostTensor).data as Int32Array;
  const { b, sQ } = plan;
  const { topk } = scope;
  const remapped = arena.take<Int32Array>(Int32Array, b * sQ * topk).fill(-1);
  const slots = new Map<number, number>();
  for (let i = 0; i < b; i++) {
    const used = Math.min(scope.lengths ? scope.lengths[i]! : topk, topk);
    for (let s = 0; s < sQ; s++) {
      for (let p = 0; p < used; p++) {
        const index = idx[iv.offset + i * iv.strides[0]! + s * iv.strides[1]! + p * iv.strides[2]!]!;
        if (index === -1) continue;
        let slot = slots.get(index);
        if (slot === undefined) slots.set(index, (slot = slots.size));
        remapped[(i * sQ + s) * topk + p] = slot;
      }
    }
  }
  const v32 = plan.layout === 'v32';
  const rec = v32 ? V32.bytesPerToken : MODEL1.bytesPerToken;
  const src = ct.data as Uint8Array;
  const cv = scope.cache.view;
  const B = scope.pageBlockSize;
  const data = arena.take<Uint8Array>(Uint8Array, Math.max(slots.size, 1) * rec);
  for (const [index, slot] of slots) {
    const blockAt = cv.offset + Math.floor(index / B) * cv.strides[0]!;
    const row = index % B;
    if (v32) {
      copyBytes(src, blockAt + row * cv.strides[1]!, data, slot * rec, rec);
    } else {
      copyBytes(src, blockAt + row * MODEL1.recordBytes, data, slot * rec, MODEL1.recordBytes);
      copyBytes(src, blockAt + B * MODEL1.recordBytes + row * MODEL1.scaleRecordBytes, data, slot * rec + MODEL1.recordBytes, MODEL1.scaleRecordBytes);
    }
  }
  return {
    ...base,
    cache: bound(data, 'uint8', [Math.max(slots.size, 1), 1, 1, rec], [rec, rec, rec, 1]),
    numBlocks: Math.max(slots.size, 1),
    pageBlockSize: 1,
    blockStride: rec,
    indices: bound(remapped, 'int32', [b, sQ, topk], [sQ * topk, topk, 1]),
  };
}

/**
 * The plan as worker threads see it: every array the items read is in a SharedArrayBuffer (posted
 * without copying). Host tensors already backed by one are used as they are; others are staged,
 * only the part the call uses, into the arena (call inside pool.exclusive, after arena.reset()).
 */
export function sharePlan(plan: DecodePlan): DecodePlan {
  if (plan.kind === 'dense') return shareDense(plan);
  return {
    ...plan,
    q: shareBound(plan.q),
    main: shareScope(plan, plan.main),
    extra: plan.extra && shareScope(plan, plan.extra),
    attnSink: null,
  };
}
