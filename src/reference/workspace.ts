import type { KvLayout } from '../types.js';

/** Tokens per KV tile: one dense page (docs/flashmla-interface.md#dense-cache), one 64-index block of the sparse kernels (docs/flashmla-interface.md#sparse-block-ranges). */
export const TILE = 64;

/**
 * Scratch state of one attention worker for one (rows, dim, dv) shape, created once and reused for
 * every tile: no allocation per token or per head. The caller fills `q` and loads one KV tile at
 * a time; `step` then runs Q·Kᵀ → scale and mask → online softmax → P·V for all rows.
 * Three implementations: plain TypeScript (tile-js.ts), WebAssembly SIMD (tile-wasm.ts) and C++ in
 * the native addon (tile-native.ts).
 */
export interface Workspace {
  readonly rows: number;
  readonly dim: number;
  readonly dv: number;
  /** Query rows, fp32, rows × dim (rows past `rows`, if any, stay zero). */
  readonly q: Float32Array;
  /** Alias of `q` for bf16 → fp32 by shifting bits. */
  readonly q32: Uint32Array;
  /** The fp32 KV tile, TILE × dim, for callers that convert tokens themselves (fp16). */
  readonly k: Float32Array;
  /** Per row, how many leading tokens of the current tile it may see (causal mask); set before `step`. */
  readonly vis: Int32Array;
  /** Running base-2 max, sum and unnormalised output (rows × dv) of each row. */
  readonly m: Float32Array;
  readonly l: Float32Array;
  readonly o: Float32Array;
  /** Starts a new key range: m = −Infinity, l = 0, o = 0. Call it after filling `q` (the native tier takes q in here). */
  reset(): void;
  /** Tile = `tokens` bf16 rows of `dim` values, row u at src[at + u·ld …]. */
  loadBf16(src: Uint16Array, at: number, ld: number, tokens: number): void;
  /** Token slot u of the tile ← the V3.2 FP8 token whose 656-byte row starts at bytes[at] (docs/flashmla-interface.md#v32-cache). */
  tokenV32(bytes: Uint8Array, at: number, u: number): void;
  /** Token slot u ← token `row` of the MODEL1 block at bytes[blockAt] with page size B (docs/flashmla-interface.md#model1-cache). */
  tokenModel1(bytes: Uint8Array, blockAt: number, B: number, row: number, u: number): void;
  /** Completes a tile gathered with token*(): dequantises where that was deferred. */
  endTokens(layout: KvLayout, tokens: number): void;
  /**
   * One tile of `tokens` keys for every row; logits are scaled by scaleLog2 (= scale·log2 e). With
   * `roundP` (sparse prefill), P·V takes the probabilities rounded to bf16 while l sums them
   * unrounded (docs/reference-backend.md#prefill).
   */
  step(tokens: number, scaleLog2: number, roundP?: boolean): void;
}

const wordViews = new WeakMap<ArrayBufferLike, Int32Array | null>();
/** The most elements one typed array can have. */
const MAX_ELEMENTS = 2 ** 32;

/** A word view of a whole buffer (null for buffers too large for one; cached per buffer). */
function wordsOf(buffer: ArrayBufferLike): Int32Array | null {
  let w = wordViews.get(buffer);
  if (w === undefined) {
    const n = Math.floor(buffer.byteLength / 4);
    w = n <= MAX_ELEMENTS ? new Int32Array(buffer, 0, n) : null;
    wordViews.set(buffer, w);
  }
  return w;
}

/** dst[to …+n) ← src[at …+n) without allocating: 32-bit moves when everything is word-aligned. */
export function copyBytes(src: Uint8Array, at: number, dst: Uint8Array, to: number, n: number): void {
  // Byte positions can pass 2^32 (a view far into a large buffer): plain arithmetic, no bit operators.
  const a = src.byteOffset + at;
  const b = dst.byteOffset + to;
  if (a % 4 === 0 && b % 4 === 0 && n % 4 === 0) {
    const s = wordsOf(src.buffer);
    const d = wordsOf(dst.buffer);
    const i0 = a / 4, j0 = b / 4, m = n / 4;
    // A buffer that grew since its word view was made is copied bytewise past the view's end.
    if (s !== null && d !== null && i0 + m <= s.length && j0 + m <= d.length) {
      for (let k = 0; k < m; k++) d[j0 + k] = s[i0 + k]!;
      return;
    }
  }
  for (let i = 0; i < n; i++) dst[to + i] = src[at + i]!;
}
