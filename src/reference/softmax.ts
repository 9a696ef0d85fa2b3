import { bf16ToF32, f32ToBf16 } from '../formats/bf16.js';

/**
 * Online softmax over tiles (base 2, like FlashMLA's kernels, docs/flashmla-interface.md#split-kv): per query row a running
 * max `m`, a running sum `l` of exp2(x − m) and an unnormalised output row in `o`.
 * Masked logits are −Infinity; a row that has seen no key keeps m = −Infinity and l = 0.
 */
export class RowState {
  readonly m: Float32Array;
  readonly l: Float32Array;
  constructor(rows: number, readonly o: Float32Array, readonly dv: number) {
    this.m = new Float32Array(rows);
    this.l = new Float32Array(rows);
  }

  reset(rows: number): void {
    this.m.fill(-Infinity, 0, rows);
    this.l.fill(0, 0, rows);
    this.o.fill(0, 0, rows * this.dv);
  }

  /**
   * Turns the scaled logits of one tile (s[r·ldS + t], already × scale·log2 e, −Infinity where
   * masked) into probabilities in place and rescales the row's running sum and output. With
   * `roundP`, the probabilities left in `s` are rounded to bf16 and the sum takes them unrounded.
   */
  absorb(s: Float32Array, rows: number, ldS: number, tokens: number, roundP = false): void {
    const { m, l, o, dv } = this;
    for (let r = 0; r < rows; r++) {
      const base = r * ldS;
      let mt = -Infinity;
      for (let t = 0; t < tokens; t++) { const x = s[base + t]!; if (x > mt) mt = x; }
      if (mt === -Infinity) {
        // Nothing visible in this tile for this row: contribute exact zeros.
        s.fill(0, base, base + tokens);
        continue;
      }
      const mOld = m[r]!;
      const mNew = mt > mOld ? mt : mOld;
      let sum = 0;
      for (let t = 0; t < tokens; t++) {
        const p = 2 ** (s[base + t]! - mNew);
        s[base + t] = roundP ? bf16ToF32(f32ToBf16(p)) : p;
        sum += p;
      }
      if (mNew !== mOld) {
        const alpha = 2 ** (mOld - mNew); // 0 when mOld = −Infinity
        l[r] = l[r]! * alpha;
        if (alpha === 0) o.fill(0, r * dv, (r + 1) * dv);
        else for (let x = r * dv, e = x + dv; x < e; x++) o[x] = o[x]! * alpha;
        m[r] = mNew;
      }
      l[r] = l[r]! + sum;
    }
  }
}

export const LN2 = Math.LN2;
