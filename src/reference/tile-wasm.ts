import { existsSync, readFileSync } from 'node:fs';
import { E8M0_TO_F32 } from '../formats/fp8.js';
import { MODEL1, V32 } from '../kvcache/layout.js';
import type { KvLayout } from '../types.js';
import { copyBytes, TILE, type Workspace } from './workspace.js';

/** The two WebAssembly tiers: plain SIMD128 (mul + add) and relaxed SIMD (fused multiply-add). */
export type WasmTier = 'simd' | 'relaxed';

interface TileExports {
  cvt_bf16(src: number, ld: number, tokens: number, dim: number, dst: number): void;
  dq_fp8(src: number, ld: number, tokens: number, tiles: number, tile: number, scales: number, rope: number, dim: number, dst: number): void;
  qk(q: number, rows: number, k: number, tokens: number, dim: number, s: number, ldS: number): void;
  pv(p: number, rows: number, ldP: number, k: number, tokens: number, dim: number, dv: number, o: number): void;
  softmax(s: number, rows: number, ldS: number, tokens4: number, vis: number, scale: number, m: number, l: number, o: number, dv: number, roundP: number): void;
}

/** The parts of the WebAssembly JS API used here (the project's TS lib has no WebAssembly types). */
interface WasmApi {
  validate(bytes: Uint8Array): boolean;
  Module: new (bytes: Uint8Array) => WasmModule;
  Instance: new (module: WasmModule, imports: object) => { exports: object };
  Memory: new (desc: { initial: number }) => { buffer: ArrayBuffer };
}
export interface WasmModule { readonly __wasmModule?: never }
const wasm = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

const modules = new Map<WasmTier, WasmModule | null>();

/**
 * The compiled tile module of a tier, or null when its .wasm file was not built (`npm run build`)
 * or this runtime cannot validate it (relaxed SIMD is behind --experimental-wasm-relaxed-simd in
 * Node 20).
 */
export function wasmModule(tier: WasmTier): WasmModule | null {
  if (!modules.has(tier)) {
    // src/reference and dist/reference are both two levels below the package root.
    const file = new URL(`../../wasm/tile-${tier}.wasm`, import.meta.url);
    const bytes = existsSync(file) ? readFileSync(file) : null;
    modules.set(tier, bytes && wasm.validate(bytes) ? new wasm.Module(bytes) : null);
  }
  return modules.get(tier)!;
}

/**
 * Staged FP8 token records in wasm memory: V3.2 rows are copied as they are (656 bytes); MODEL1
 * records (576 bytes) get their 7 e8m0 scales appended as float32 (docs/flashmla-interface.md#model1-cache), so one dequantiser
 * serves both layouts.
 */
const STAGED = {
  v32: { ld: V32.bytesPerToken, tiles: V32.numTiles, tile: V32.tileSize, scales: V32.scalesAt, rope: V32.ropeAt },
  model1: { ld: 608, tiles: MODEL1.numTiles, tile: MODEL1.tileSize, scales: MODEL1.recordBytes, rope: MODEL1.ropeAt },
} as const;

const align16 = (n: number): number => (n + 15) & ~15;

/**
 * A workspace whose buffers live in the linear memory of its own instance of the tile module. Rows
 * are padded to a multiple of 4 and tokens to a multiple of 2 (qk) or 4 (softmax): the wasm loops
 * have no remainder code. Padded rows have zero queries and are never read back; padded tokens are
 * masked to −Infinity.
 */
export class WasmWorkspace implements Workspace {
  readonly q: Float32Array;
  readonly q32: Uint32Array;
  readonly k: Float32Array;
  readonly vis: Int32Array;
  readonly m: Float32Array;
  readonly l: Float32Array;
  readonly o: Float32Array;
  private readonly x: TileExports;
  private readonly rowsPad: number;
  private readonly at: { q: number; k: number; s: number; o: number; m: number; l: number; vis: number; raw: number };
  private readonly raw8: Uint8Array;
  private readonly raw16: Uint16Array;
  private readonly rawF32: Float32Array;

  constructor(module: WasmModule, readonly rows: number, readonly dim: number, readonly dv: number) {
    const rowsPad = (this.rowsPad = (rows + 3) & ~3);
    // Raw tile bytes: a bf16 page span with row stride up to 2·dim, or 64 staged FP8 records.
    const rawBytes = TILE * Math.max(4 * dim, V32.bytesPerToken);
    const sizes = { q: rowsPad * dim * 4, k: TILE * dim * 4, s: rowsPad * TILE * 4, o: rowsPad * dv * 4, m: rowsPad * 4, l: rowsPad * 4, vis: rowsPad * 4, raw: rawBytes };
    let end = 0;
    const at = {} as Record<keyof typeof sizes, number>;
    for (const [name, size] of Object.entries(sizes) as [keyof typeof sizes, number][]) {
      at[name] = end;
      end = align16(end + size);
    }
    this.at = at;
    const memory = new wasm.Memory({ initial: Math.ceil(end / 65536) });
    this.x = new wasm.Instance(module, { env: { mem: memory } }).exports as unknown as TileExports;
    const buf = memory.buffer;
    this.q = new Float32Array(buf, at.q, rowsPad * dim);
    this.q32 = new Uint32Array(buf, at.q, rowsPad * dim);
    this.k = new Float32Array(buf, at.k, TILE * dim);
    this.vis = new Int32Array(buf, at.vis, rowsPad);
    this.m = new Float32Array(buf, at.m, rowsPad);
    this.l = new Float32Array(buf, at.l, rowsPad);
    this.o = new Float32Array(buf, at.o, rowsPad * dv);
    this.raw8 = new Uint8Array(buf, at.raw, rawBytes);
    this.raw16 = new Uint16Array(buf, at.raw, rawBytes >>> 1);
    this.rawF32 = new Float32Array(buf, at.raw, rawBytes >>> 2);
  }

  reset(): void {
    this.m.fill(-Infinity);
    this.l.fill(0);
    this.o.fill(0);
  }

  loadBf16(src: Uint16Array, at: number, ld: number, tokens: number): void {
    const { dim, raw16 } = this;
    if (ld <= 2 * dim) {
      // One copy of the whole span (rows plus the gaps between them) beats one copy per token.
      raw16.set(src.subarray(at, at + (tokens - 1) * ld + dim));
    } else {
      for (let u = 0; u < tokens; u++) raw16.set(src.subarray(at + u * ld, at + u * ld + dim), u * dim);
      ld = dim;
    }
    this.x.cvt_bf16(this.at.raw, ld, tokens, dim, this.at.k);
  }

  tokenV32(bytes: Uint8Array, at: number, u: number): void {
    copyBytes(bytes, at, this.raw8, u * STAGED.v32.ld, V32.bytesPerToken);
  }

  tokenModel1(bytes: Uint8Array, blockAt: number, B: number, row: number, u: number): void {
    const to = u * STAGED.model1.ld;
    copyBytes(bytes, blockAt + row * MODEL1.recordBytes, this.raw8, to, MODEL1.recordBytes);
    const scales = blockAt + B * MODEL1.recordBytes + row * MODEL1.scaleRecordBytes;
    const f = (to + STAGED.model1.scales) >>> 2;
    for (let j = 0; j < MODEL1.numTiles; j++) this.rawF32[f + j] = E8M0_TO_F32[bytes[scales + j]!]!;
  }

  endTokens(layout: KvLayout, tokens: number): void {
    const s = STAGED[layout];
    this.x.dq_fp8(this.at.raw, s.ld, tokens, s.tiles, s.tile, s.scales, s.rope, this.dim, this.at.k);
  }

  step(tokens: number, scaleLog2: number, roundP = false): void {
    const { x, at, rows, rowsPad, dim, dv } = this;
    x.qk(at.q, rowsPad, at.k, (tokens + 1) & ~1, dim, at.s, TILE);
    x.softmax(at.s, rows, TILE, (tokens + 3) & ~3, at.vis, scaleLog2, at.m, at.l, at.o, dv, roundP ? 1 : 0);
    x.pv(at.s, rowsPad, TILE, at.k, tokens, dim, dv, at.o);
  }
}
