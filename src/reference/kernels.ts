/**
 * The two matrix products of one attention tile, behind an interface so the reference backend can
 * run them in plain TypeScript or in a WebAssembly SIMD core with identical semantics. Buffers
 * come from `alloc` so a core can keep them in its own linear memory.
 *
 * Layouts (row-major, fp32): q [rows × dim], k [tokens × dim] (V = the first dv columns of k),
 * s [rows × ldS], o [rows × dv].
 */
export interface TileKernels {
  readonly name: string;
  alloc(n: number): Float32Array;
  /** s[r·ldS + t] = Σ_d q[r·dim + d] · k[t·dim + d] for r < rows, t < tokens. */
  qk(q: Float32Array, rows: number, k: Float32Array, tokens: number, dim: number, s: Float32Array, ldS: number): void;
  /** o[r·dv + x] += Σ_t p[r·ldP + t] · k[t·dim + x] for r < rows, t < tokens, x < dv. */
  pv(p: Float32Array, rows: number, ldP: number, k: Float32Array, tokens: number, dim: number, dv: number, o: Float32Array): void;
}

/** Portable tier: register-blocked 2 rows × 2 tokens for Q·Kᵀ, 4 tokens per pass for P·V. */
export const jsKernels: TileKernels = {
  name: 'js',
  alloc: (n) => new Float32Array(n),
  qk(q, rows, k, tokens, dim, s, ldS) {
    let r = 0;
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
  },
  pv(p, rows, ldP, k, tokens, dim, dv, o) {
    for (let r = 0; r < rows; r++) {
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
  },
};
