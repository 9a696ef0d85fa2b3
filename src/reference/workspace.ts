import type { TileKernels } from './kernels.js';
import { RowState } from './softmax.js';

/** Tokens per KV tile: one dense page (SPEC §5.1), one 64-index block of the sparse kernels (§0.A7). */
export const TILE = 64;

/**
 * Scratch buffers of one attention worker, allocated once per (kernels, rows, dim) and reused for
 * every tile: no allocation per token or per head.
 */
export class Workspace {
  readonly q: Float32Array;
  readonly k: Float32Array;
  /** Alias of `k` for bf16 → f32 by shifting bits. */
  readonly k32: Uint32Array;
  readonly q32: Uint32Array;
  readonly s: Float32Array;
  readonly state: RowState;

  constructor(readonly kernels: TileKernels, readonly rows: number, readonly dim: number, readonly dv: number) {
    this.q = kernels.alloc(rows * dim);
    this.k = kernels.alloc(TILE * dim);
    this.s = kernels.alloc(rows * TILE);
    this.state = new RowState(rows, kernels.alloc(rows * dv), dv);
    this.k32 = new Uint32Array(this.k.buffer, this.k.byteOffset, this.k.length);
    this.q32 = new Uint32Array(this.q.buffer, this.q.byteOffset, this.q.length);
  }

  /** Scores of the current tile, masked, softmax-updated; then P·V into the state. */
  step(rows: number, tokens: number, scaleLog2: number, mask?: (r: number) => number): void {
    const { kernels, q, k, s, dim, dv, state } = this;
    kernels.qk(q, rows, k, tokens, dim, s, TILE);
    for (let r = 0; r < rows; r++) {
      const base = r * TILE;
      const visible = mask ? mask(r) : tokens;
      for (let t = 0; t < tokens; t++) s[base + t] = t < visible ? s[base + t]! * scaleLog2 : -Infinity;
    }
    state.absorb(s, rows, TILE, tokens);
    kernels.pv(s, rows, TILE, k, tokens, dim, dv, state.o);
  }
}

const cache = new WeakMap<TileKernels, Map<string, Workspace>>();

/** A reusable workspace for this shape (one per kernels × rows × dim × dv, kept while the kernels live). */
export function workspaceFor(kernels: TileKernels, rows: number, dim: number, dv: number): Workspace {
  let m = cache.get(kernels);
  if (!m) cache.set(kernels, (m = new Map()));
  const key = `${rows}x${dim}x${dv}`;
  let ws = m.get(key);
  if (!ws) m.set(key, (ws = new Workspace(kernels, rows, dim, dv)));
  return ws;
}
