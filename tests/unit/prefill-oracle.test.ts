// The float64 prefill oracle on hand-made cases. The reference against it over FlashMLA's grid, on
// every tier, is in reference-prefill.test.ts.
import { describe, expect, it } from 'vitest';
import { oraclePrefill64 } from '../../src/harness/prefill-oracle.js';
import { f32ToBf16 } from '../../src/formats/bf16.js';
import type { HostSparseFwdArgs } from '../../src/types.js';

/** One query token, one head row per head, hand-made rows. */
function tiny(values: number[][], indices: number[], opts: { sink?: number[]; hQ?: 64 | 128 } = {}): HostSparseFwdArgs {
  const hQ = opts.hQ ?? 64;
  const dQK = 512;
  const q = new Uint16Array(hQ * dQK).fill(f32ToBf16(0.5));
  const kv = new Uint16Array(values.length * dQK);
  values.forEach((row, t) => { for (let d = 0; d < dQK; d++) kv[t * dQK + d] = f32ToBf16(row[d % row.length]!); });
  const idx = new Int32Array(64).fill(-1);
  indices.forEach((v, i) => { idx[i] = v; });
  return {
    q: { dtype: 'bf16', shape: [1, hQ, dQK], data: q },
    kv: { dtype: 'bf16', shape: [values.length, 1, dQK], data: kv },
    indices: { dtype: 'int32', shape: [1, 1, 64], data: idx },
    smScale: 1 / 64,
    attnSink: opts.sink ? { dtype: 'fp32', shape: [hQ], data: Float32Array.from({ length: hQ }, (_, h) => opts.sink![h % opts.sink!.length]!) } : null,
  };
}

describe('sparse prefill float64 oracle', () => {
  it('one valid token: out is its value row, lse and max are its logit', () => {
    const o = oraclePrefill64(tiny([[1], [0.25]], [1, 7, -5]));
    // logit = smScale · Σ 0.5 · 0.25 over 512 dims = 1/64 · 64 = 1.
    expect(o.maxLogits[0]).toBeCloseTo(1, 12);
    expect(o.lse[0]).toBeCloseTo(1, 12);
    expect(o.out[0]).toBeCloseTo(0.25, 12);
  });
  it('nothing valid: out 0, maxLogits −Infinity, lse +Infinity', () => {
    const o = oraclePrefill64(tiny([[1]], [1, 2147483647, -1, -2147483648]));
    expect(o.maxLogits[0]).toBe(-Infinity);
    expect(o.lse[0]).toBe(Infinity);
    expect(o.out.every((x) => x === 0)).toBe(true);
  });
  it('the sink scales out only: +Infinity sends out to 0, a finite sink by exp(lse)/(exp(lse)+exp(sink))', () => {
    const args = tiny([[0.25], [0.5]], [0, 1], { sink: [Infinity, 0] });
    const o = oraclePrefill64(args);
    const plain = oraclePrefill64({ ...args, attnSink: null });
    expect(o.out[0]).toBe(0);
    expect(o.lse[0]).toBe(plain.lse[0]);
    const lse = plain.lse[1]!;
    expect(o.out[512]).toBeCloseTo(plain.out[512]! * Math.exp(lse) / (Math.exp(lse) + 1), 12);
  });
});
