import { MODEL1, V32 } from '../kvcache/layout.js';
import { loadAddon } from '../addon.js';
import type { KvLayout } from '../types.js';
import { TILE, type Workspace } from './workspace.js';

/** Instruction sets of the native tile loops (binding/cpu_kernels.cc), chosen at run time. */
export type NativeIsa = 'avx512' | 'avx2';

/** One workspace of binding/cpu_tile_wrap.cc: its buffers in one aligned block, `layout` in bytes. */
interface CpuTile {
  readonly buffer: ArrayBuffer;
  readonly isa: NativeIsa;
  readonly rowsPad: number;
  readonly layout: { q: number; k: number; m: number; l: number; o: number; vis: number; rec: number; scl: number };
  /** q → its transposed copy; m = −Infinity, l = 0, o = 0. */
  reset(): void;
  bf16(src: Uint16Array, at: number, ld: number, tokens: number): void;
  /** Slots [u0, u1) ← the FP8 tokens of `src` at the byte offsets in rec / scl; layout 0 = V32, 1 = MODEL1. */
  fp8(src: Uint8Array, u0: number, u1: number, layout: 0 | 1): void;
  step(tokens: number, scaleLog2: number, roundP?: boolean): void;
}

/** The runner's finishing arguments (out, lse, sums, carryIn, carryOut, flags; runner.ts `RunnerFinish`); none or nulls: partials only. */
type RunnerFinishArgs = readonly [Uint16Array, Float32Array, Float32Array, Float32Array, Float32Array, number]
  | readonly [null, null, null, null, null, 0] | readonly [];

/** `cpuTile` of the addon (binding/addon.cc). */
export interface CpuTileApi {
  /** The best instruction set this CPU runs, null without AVX2 + FMA or off x86-64. */
  readonly isa: NativeIsa | null;
  readonly Tile: new (rows: number, dim: number, dv: number, isa?: NativeIsa) => CpuTile;
  /** partial.ts `mergeInto` on the arrays of two partials (absent from addons built before it). */
  /** finalize.ts `writeRows`' bf16 rounding: dst[at[r] + x] ← bf16(o[r·dv + x] · factors[r]), rows with at[r] < 0 skipped. */
  readonly bf16Rows?: (o: Float32Array, factors: Float64Array, dst: Uint16Array, at: Float64Array, rows: number, dv: number) => void;
  /** share.ts staging: for each of `count` (srcAt, dstAt, bytes) triples in runs, dst[dstAt …] ← src[srcAt …]. */
  readonly gather?: (src: Uint8Array, dst: Uint8Array, runs: Float64Array, count: number) => void;
  readonly merge?: (dm: Float32Array, dl: Float32Array, dO: Float32Array, sm: Float32Array, sl: Float32Array, sO: Float32Array, rows: number, dv: number) => void;
  /**
   * runner.ts: a dense call's `count` items into `results` (one partial per `slot` floats) on the
   * calling thread and up to `threads − 1` of the addon's helper threads; returns when all are done.
   * With `out` (not null), the same threads then finish the rows (runner.ts `RunnerFinish`).
   * Returns the flat index of the first non-finite q element the items read, or −1.
   */
  readonly runDense?: (params: Float64Array, q: Uint16Array, kCache: Uint16Array, blockTable: Int32Array, seqlens: Int32Array,
    items: Int32Array, count: number, results: Float32Array, slot: number, threads: number, ...finish: RunnerFinishArgs) => number;
  /** The same for a sparse call: per scope (main, then extra or nulls) its cache, indices and topk lengths (or null). */
  readonly runSparse?: (params: Float64Array, q: Uint16Array,
    cache0: Uint8Array, indices0: Int32Array, lengths0: Int32Array | null,
    cache1: Uint8Array | null, indices1: Int32Array | null, lengths1: Int32Array | null,
    items: Int32Array, count: number, results: Float32Array, slot: number, threads: number, ...finish: RunnerFinishArgs) => number;
  /**
   * The same for a sparse prefill (src/reference/prefill.ts): partials only, whose rows prefill.ts
   * finishes; lengths null without topkLength. Returns the flat index (s·h_q + h)·d_qk + d of the
   * first non-finite q element the items read, or −1.
   */
  readonly runPrefill?: (params: Float64Array, q: Uint16Array, kv: Uint16Array, indices: Int32Array, lengths: Int32Array | null,
    items: Int32Array, count: number, results: Float32Array, slot: number, threads: number) => number;
  /** Starts the runner's helper threads up to n (they then sleep until a call); returns how many there are. */
  readonly startHelpers?: (n: number) => number;
  /** Wakes the runner's helpers (starting up to n) to spin for the next call's items for up to `micros` µs (≤ 10,000). */
  readonly prime?: (n: number, micros: number) => void;
}

let api: CpuTileApi | string | undefined;

/**
 * The addon's native tile loops, or why this process cannot use them: the addon is not built or
 * does not load, predates them (rebuild it), or the CPU lacks AVX2 + FMA.
 */
export function nativeTileApi(): CpuTileApi | string {
  if (api === undefined) {
    const loaded = loadAddon();
    const cpuTile = loaded.ok ? (loaded.addon as unknown as { cpuTile?: CpuTileApi }).cpuTile : undefined;
    if (!loaded.ok) api = loaded.reason;
    else if (!cpuTile) api = `the native addon at ${loaded.path} has no tile loops; rebuild it (\`npm rebuild flashmla-node\`)`;
    else if (cpuTile.isa === null) api = 'this CPU lacks AVX2 and FMA (or is not x86-64)';
    else api = cpuTile;
  }
  return api;
}

/**
 * A workspace whose buffers are views of the native tile's block, so every call passes only
 * numbers and the source array: no copy per tile. FP8 tokens are not copied either: tokenV32 and
 * tokenModel1 record where each token lies, and endTokens dequantises them from their cache.
 */
export class NativeWorkspace implements Workspace {
  readonly q: Float32Array;
  readonly q32: Uint32Array;
  readonly k: Float32Array;
  readonly vis: Int32Array;
  readonly m: Float32Array;
  readonly l: Float32Array;
  readonly o: Float32Array;
  readonly isa: NativeIsa;
  private readonly tile: CpuTile;
  /** Per slot: the token's record and scales (byte offsets in its source), and that source. */
  private readonly rec: Float64Array;
  private readonly scl: Float64Array;
  private readonly srcs: (Uint8Array | null)[] = new Array<Uint8Array | null>(TILE).fill(null);

  constructor(api: CpuTileApi, readonly rows: number, readonly dim: number, readonly dv: number, isa?: NativeIsa) {
    const tile = (this.tile = new api.Tile(rows, dim, dv, isa));
    const { buffer, layout, rowsPad } = tile;
    this.isa = tile.isa;
    this.q = new Float32Array(buffer, layout.q, rowsPad * dim);
    this.q32 = new Uint32Array(buffer, layout.q, rowsPad * dim);
    this.k = new Float32Array(buffer, layout.k, TILE * dim);
    this.vis = new Int32Array(buffer, layout.vis, rowsPad);
    this.m = new Float32Array(buffer, layout.m, rowsPad);
    this.l = new Float32Array(buffer, layout.l, rowsPad);
    this.o = new Float32Array(buffer, layout.o, rowsPad * dv);
    this.rec = new Float64Array(buffer, layout.rec, TILE);
    this.scl = new Float64Array(buffer, layout.scl, TILE);
  }

  /** Also takes q in: callers fill q before reset (workspace.ts). */
  reset(): void {
    this.tile.reset();
  }

  loadBf16(src: Uint16Array, at: number, ld: number, tokens: number): void {
    this.tile.bf16(src, at, ld, tokens);
  }

  tokenV32(bytes: Uint8Array, at: number, u: number): void {
    this.srcs[u] = bytes;
    this.rec[u] = at;
    this.scl[u] = at + V32.scalesAt;
  }

  tokenModel1(bytes: Uint8Array, blockAt: number, B: number, row: number, u: number): void {
    this.srcs[u] = bytes;
    this.rec[u] = blockAt + row * MODEL1.recordBytes;
    this.scl[u] = blockAt + B * MODEL1.recordBytes + row * MODEL1.scaleRecordBytes;
  }

  /** One native call per run of slots from the same cache (two runs when a tile spans main and extra). */
  endTokens(layout: KvLayout, tokens: number): void {
    const { srcs } = this;
    for (let u0 = 0; u0 < tokens;) {
      const src = srcs[u0]!;
      let u1 = u0 + 1;
      while (u1 < tokens && srcs[u1] === src) u1++;
      this.tile.fp8(src, u0, u1, layout === 'v32' ? 0 : 1);
      u0 = u1;
    }
    // Holding a cache past its call would keep it alive with this cached workspace.
    srcs.fill(null, 0, tokens);
  }

  step(tokens: number, scaleLog2: number, roundP = false): void {
    this.tile.step(tokens, scaleLog2, roundP);
  }
}
