import { LN2 } from './softmax.js';
import { nativeTileApi, type CpuTileApi } from './tile-native.js';
import type { Workspace } from './workspace.js';

/**
 * Per-row results of attending over a slice of the keys: base-2 running max m, sum l and the
 * unnormalised output o (rows × dv). Slices of one row merge by LSE, as FlashMLA's combine does
 * (docs/flashmla-interface.md#split-kv).
 */
export interface Partial {
  rows: number;
  dv: number;
  m: Float32Array;
  l: Float32Array;
  o: Float32Array;
}

/** A partial over `floats` (rows·(dv + 2) values from `at`): m, then l, then o. */
export function partialIn(floats: Float32Array, at: number, rows: number, dv: number): Partial {
  return {
    rows,
    dv,
    m: floats.subarray(at, at + rows),
    l: floats.subarray(at + rows, at + 2 * rows),
    o: floats.subarray(at + 2 * rows, at + rows * (dv + 2)),
  };
}

/** Copies a workspace's row states into `out`. */
export function storePartial(out: Partial, ws: Workspace): void {
  out.m.set(ws.m.subarray(0, out.rows));
  out.l.set(ws.l.subarray(0, out.rows));
  out.o.set(ws.o.subarray(0, out.rows * out.dv));
}

/** dst ← src. */
export function copyPartial(dst: Partial, src: Partial): void {
  dst.m.set(src.m);
  dst.l.set(src.l);
  dst.o.set(src.o);
}

let nativeMerge: CpuTileApi['merge'] | null | undefined;

/**
 * Folds `src` into `dst` (same rows), rescaling both to the larger max. The calling thread merges
 * every item of a call, so with the addon loaded this runs there (same arithmetic, in double, ~8×
 * faster than the loop below); without it, the loop.
 */
export function mergeInto(dst: Partial, src: Partial): void {
  if (nativeMerge === undefined) {
    const api = nativeTileApi();
    nativeMerge = typeof api === 'string' ? null : (api.merge ?? null);
  }
  if (nativeMerge) nativeMerge(dst.m, dst.l, dst.o, src.m, src.l, src.o, dst.rows, dst.dv);
  else mergeIntoJs(dst, src);
}

/** `mergeInto` in TypeScript. */
export function mergeIntoJs(dst: Partial, src: Partial): void {
  const { dv } = dst;
  for (let r = 0; r < dst.rows; r++) {
    const ms = src.m[r]!;
    if (ms === -Infinity) continue;
    const md = dst.m[r]!;
    const M = ms > md ? ms : md;
    const ad = 2 ** (md - M);
    const as = 2 ** (ms - M);
    dst.l[r] = dst.l[r]! * ad + src.l[r]! * as;
    for (let x = r * dv, e = x + dv; x < e; x++) dst.o[x] = dst.o[x]! * ad + src.o[x]! * as;
    dst.m[r] = M;
  }
}

/** Natural-log LSE of a row, +Infinity for a row that saw no key (docs/flashmla-interface.md#empty-rows lonely rows). */
export function rowLse(p: Partial, r: number): number {
  return lseOf(p.m[r]!, p.l[r]!);
}

/**
 * Natural-log LSE of a row whose base-2 max is m and sum l (+Infinity for l = 0). The runner's
 * rows (binding/cpu_rows.h `LseIsInfinite` tells the +Infinity rows the same way) take it here too.
 */
export function lseOf(m: number, l: number): number {
  return l === 0 ? Infinity : (m + Math.log2(l)) * LN2;
}
