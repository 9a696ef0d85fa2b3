import { dequantTokenModel1, dequantTokenV32 } from '../kvcache/token.js';
import { RowState } from './softmax.js';
import { TILE, type Workspace } from './workspace.js';

/**
 * s[r·ldS + t] = Σ_d q[r·dim + d] · k[t·dim + d]; register-blocked 4 rows × 2 tokens (each loaded
 * value serves 2 or 4 products), then 2 × 2 and single rows for the remainder.
 */
export function qkJs(q: Float32Array, rows: number, k: Float32Array, tokens: number, dim: number, s: Float32Array, ldS: number): void {
  let r = 0;
  for (; r + 3 < rows && tokens % 2 === 0; r += 4) {
    const q0 = r * dim, q1 = q0 + dim, q2 = q1 + dim, q3 = q2 + dim;
    for (let t = 0; t < tokens; t += 2) {
      const k0 = t * dim;
      const k1 = k0 + dim;
      let a00 = 0, a01 = 0, a10 = 0, a11 = 0, a20 = 0, a21 = 0, a30 = 0, a31 = 0;
      for (let d = 0; d < dim; d++) {
        const y0 = k[k0 + d]!, y1 = k[k1 + d]!;
        const x0 = q[q0 + d]!, x1 = q[q1 + d]!, x2 = q[q2 + d]!, x3 = q[q3 + d]!;
        a00 += x0 * y0; a01 += x0 * y1; a10 += x1 * y0; a11 += x1 * y1;
        a20 += x2 * y0; a21 += x2 * y1; a30 += x3 * y0; a31 += x3 * y1;
      }
      const o = r * ldS + t;
      s[o] = a00; s[o + 1] = a01;
      s[o + ldS] = a10; s[o + ldS + 1] = a11;
      s[o + 2 * ldS] = a20; s[o + 2 * ldS + 1] = a21;
      s[o + 3 * ldS] = a30; s[o + 3 * ldS + 1] = a31;
    }
  }
  for (; r + 1 < rows; r += 2) {
    const q0 = r * dim;
    const q1 = q0 + dim;
    let t = 0;
    for (; t + 1 < tokens; t += 2) {
      const k0 = t * dim;
      const k1 = k0 + dim;
      let a00 = 0, a01 = 0, a10 = 0, a11 = 0;
      for (let d = 0; d < dim; d++) {
        const x0 = q[q0 + d]!, x1 = q[q1 + d]!, y0 = k[k0 + d]!, y1 = k[k1 + d]!;
        a00 += x0 * y0; a01 += x0 * y1; a10 += x1 * y0; a11 += x1 * y1;
      }
      s[r * ldS + t] = a00; s[r * ldS + t + 1] = a01;
      s[(r + 1) * ldS + t] = a10; s[(r + 1) * ldS + t + 1] = a11;
    }
    if (t < tokens) {
      const k0 = t * dim;
      let a0 = 0, a1 = 0;
      for (let d = 0; d < dim; d++) { const y = k[k0 + d]!; a0 += q[q0 + d]! * y; a1 += q[q1 + d]! * y; }
      s[r * ldS + t] = a0; s[(r + 1) * ldS + t] = a1;
    }
  }
  if (r < rows) {
    const q0 = r * dim;
    for (let t = 0; t < tokens; t++) {
      const k0 = t * dim;
      let a = 0;
      for (let d = 0; d < dim; d++) a += q[q0 + d]! * k[k0 + d]!;
      s[r * ldS + t] = a;
    }
  }
}

/**
 * o[r·dv + x] += Σ_t p[r·ldP + t] · k[t·dim + x]; 2 rows × 4 tokens per pass (each V value loaded
 * serves both rows), all-zero groups skipped; single rows for the remainder.
 */
export function pvJs(p: Float32Array, rows: number, ldP: number, k: Float32Array, tokens: number, dim: number, dv: number, o: Float32Array): void {
  let r = 0;
  for (; r + 1 < rows; r += 2) {
    const pa = r * ldP, pb = pa + ldP;
    const oa = r * dv, ob = oa + dv;
    let t = 0;
    for (; t + 3 < tokens; t += 4) {
      const a0 = p[pa + t]!, a1 = p[pa + t + 1]!, a2 = p[pa + t + 2]!, a3 = p[pa + t + 3]!;
      const b0 = p[pb + t]!, b1 = p[pb + t + 1]!, b2 = p[pb + t + 2]!, b3 = p[pb + t + 3]!;
      if (a0 === 0 && a1 === 0 && a2 === 0 && a3 === 0 && b0 === 0 && b1 === 0 && b2 === 0 && b3 === 0) continue;
      const v0 = t * dim, v1 = v0 + dim, v2 = v1 + dim, v3 = v2 + dim;
      for (let x = 0; x < dv; x++) {
        const w0 = k[v0 + x]!, w1 = k[v1 + x]!, w2 = k[v2 + x]!, w3 = k[v3 + x]!;
        o[oa + x] = o[oa + x]! + a0 * w0 + a1 * w1 + a2 * w2 + a3 * w3;
        o[ob + x] = o[ob + x]! + b0 * w0 + b1 * w1 + b2 * w2 + b3 * w3;
      }
    }
    for (; t < tokens; t++) {
      const a = p[pa + t]!, b = p[pb + t]!;
      if (a === 0 && b === 0) continue;
      const v0 = t * dim;
      for (let x = 0; x < dv; x++) {
        const w = k[v0 + x]!;
        o[oa + x] = o[oa + x]! + a * w;
        o[ob + x] = o[ob + x]! + b * w;
      }
    }
  }
  for (; r < rows; r++) {
    const pr = r * ldP;
    const or = r * dv;
    let t = 0;
    for (; t + 3 < tokens; t += 4) {
      const p0 = p[pr + t]!, p1 = p[pr + t + 1]!, p2 = p[pr + t + 2]!, p3 = p[pr + t + 3]!;
      if (p0 === 0 && p1 === 0 && p2 === 0 && p3 === 0) continue;
      const v0 = t * dim, v1 = v0 + dim, v2 = v1 + dim, v3 = v2 + dim;
      for (let x = 0; x < dv; x++) {
        o[or + x] = o[or + x]! + p0 * k[v0 + x]! + p1 * k[v1 + x]! + p2 * k[v2 + x]! + p3 * k[v3 + x]!;
      }
    }
    for (; t < tokens; t++) {
      const pt = p[pr + t]!;
      if (pt === 0) continue;
      const v0 = t * dim;
      for (let x = 0; x < dv; x++) o[or + x] = o[or + x]! + pt * k[v0 + x]!;
    }
  }
}

/** The portable tier: plain TypeScript loops over fp32 typed arrays. */
export class JsWorkspace implements Workspace {
  readonly q: Float32Array;
  readonly q32: Uint32Array;
  readonly k: Float32Array;
  readonly vis: Int32Array;
  readonly m: Float32Array;
  readonly l: Float32Array;
  readonly o: Float32Array;
  private readonly k32: Uint32Array;
  private readonly s: Float32Array;
  private readonly state: RowState;

  constructor(readonly rows: number, readonly dim: number, readonly dv: number) {
    this.q = new Float32Array(rows * dim);
    this.q32 = new Uint32Array(this.q.buffer);
    this.k = new Float32Array(TILE * dim);
    this.k32 = new Uint32Array(this.k.buffer);
    this.s = new Float32Array(rows * TILE);
    this.vis = new Int32Array(rows);
    this.state = new RowState(rows, new Float32Array(rows * dv), dv);
    this.m = this.state.m;
    this.l = this.state.l;
    this.o = this.state.o;
  }

  reset(): void {
    this.state.reset(this.rows);
  }

  loadBf16(src: Uint16Array, at: number, ld: number, tokens: number): void {
    const { k32, dim } = this;
    for (let u = 0; u < tokens; u++) {
      const from = at + u * ld;
      const to = u * dim;
      for (let d = 0; d < dim; d++) k32[to + d] = src[from + d]! << 16;
    }
  }

  tokenV32(bytes: Uint8Array, at: number, u: number): void {
    dequantTokenV32(bytes, at, this.k, u * this.dim);
  }

  tokenModel1(bytes: Uint8Array, blockAt: number, B: number, row: number, u: number): void {
    dequantTokenModel1(bytes, blockAt, B, row, this.k, u * this.dim);
  }

  endTokens(): void {
    // Tokens were dequantised as they were gathered.
  }

  step(tokens: number, scaleLog2: number, roundP = false): void {
    const { rows, q, k, s, dim, dv, vis, state } = this;
    qkJs(q, rows, k, tokens, dim, s, TILE);
    for (let r = 0; r < rows; r++) {
      const base = r * TILE;
      const visible = vis[r]!;
      for (let t = 0; t < tokens; t++) s[base + t] = t < visible ? s[base + t]! * scaleLog2 : -Infinity;
    }
    state.absorb(s, rows, TILE, tokens, roundP);
    pvJs(s, rows, TILE, k, tokens, dim, dv, state.o);
  }
}
