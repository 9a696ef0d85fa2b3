// The V4.1 Engram gate (src/engram/gate.ts) against its float64 oracle (src/engram/oracle.ts) with
// TileKernels' calc_diff bound, plus the exact properties: masked tokens, s = 0 under both sign
// conventions, defaults, strided inputs and every bad-input path (docs/engram-math.md#tests).
import { describe, expect, it } from 'vitest';
import { gate, type GateArgs } from '../../../src/engram/gate.js';
import { calcDiff, gateOracle, roundBf16 } from '../../../src/engram/oracle.js';
import { FlashMLAError } from '../../../src/errors.js';
import { bf16ToF32, f32ToBf16 } from '../../../src/formats/bf16.js';
import { Rng } from '../../../src/harness/random.js';
import type { HostTensor } from '../../../src/tensor.js';

const numel = (shape: number[]): number => shape.reduce((a, b) => a * b, 1);

function randBf16(rng: Rng, shape: number[], scale = 1): HostTensor<'bf16'> {
  const data = new Uint16Array(numel(shape));
  for (let i = 0; i < data.length; i++) data[i] = f32ToBf16(rng.randn() * scale);
  return { dtype: 'bf16', shape, data };
}

function randF32(rng: Rng, shape: number[]): HostTensor<'fp32'> {
  const data = new Float32Array(numel(shape));
  for (let i = 0; i < data.length; i++) data[i] = rng.randn();
  return { dtype: 'fp32', shape, data };
}

/** TileKernels' test inputs: every tensor bf16 randn (tests/engram/test_engram_gate_fwd.py). */
function gateCase(seed: number, T: number, M: number, d: number): GateArgs {
  const rng = new Rng(seed);
  return {
    h: randBf16(rng, [T, M, d]), key: randBf16(rng, [T, M, d]), value: randBf16(rng, [T, d]),
    qWeight: randBf16(rng, [M, d]), kWeight: randBf16(rng, [M, d]),
  };
}

const widen = (t: HostTensor): Float64Array =>
  Float64Array.from(t.dtype === 'bf16' ? Array.from(t.data as Uint16Array, bf16ToF32) : (t.data as Float32Array));

/** The bf16 unit in the last place at |x| (normal range). */
const bf16Ulp = (x: number): number => 2 ** (Math.floor(Math.log2(Math.max(Math.abs(x), 2 ** -126))) - 7);

function expectError(fn: () => unknown, code: string, argument: string): void {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(FlashMLAError);
  expect((caught as FlashMLAError).code).toBe(code);
  expect((caught as FlashMLAError).argument).toBe(argument);
}

describe('gate vs float64 oracle', () => {
  // Small cases: the float32 intermediates within TileKernels' calc_diff bound (2e-10) and every
  // bf16 output within one ulp of the exact value. calc_diff of a bf16 output is dominated by
  // rounding flips (one flip among 9k values already gives ~1e-9), so its bound is checked on an
  // upstream-sized tensor below, against the exact value cast as the module casts its float32
  // result: to float32, then to bf16 (docs/engram-math.md#tolerances).
  it.each([
    [1, 9, 4, 256],
    [2, 5, 4, 512],
    [3, 3, 2, 128],
  ])('seed %i: T=%i M=%i d=%i: intermediates within calc_diff 2e-10, outputs within one bf16 ulp', (seed, T, M, d) => {
    const args = gateCase(seed, T, M, d);
    const ref = gate(args);
    const exact = gateOracle(args);
    expect(ref.out.dtype).toBe('bf16');
    expect(ref.out.shape).toEqual([T, M, d]);
    const diffs = {
      dot: calcDiff(ref.dot.data, exact.dot),
      gate: calcDiff(ref.gate.data, exact.gate),
      rstdH: calcDiff(ref.rstdH.data, exact.rstdH),
      rstdKey: calcDiff(ref.rstdKey.data, exact.rstdKey),
    };
    for (const v of Object.values(diffs)) expect(v).toBeLessThan(2e-10);
    const out = widen(ref.out);
    for (let i = 0; i < out.length; i++) expect(Math.abs(out[i]! - exact.out[i]!)).toBeLessThanOrEqual(bf16Ulp(exact.out[i]!));
  });

  it('TileKernels-sized case (T=1125, M=4, d=2048: 9.2 M values): out, dot, gate, rstd within calc_diff 2e-10', () => {
    const args = gateCase(4001, 1125, 4, 2048);
    const ref = gate(args);
    const exact = gateOracle(args);
    const out = widen(ref.out);
    let flips = 0;
    const rounded = exact.out.map((x) => roundBf16(Math.fround(x)));
    for (let i = 0; i < out.length; i++) if (out[i] !== rounded[i]) flips++;
    const diffs = {
      out: calcDiff(out, rounded),
      dot: calcDiff(ref.dot.data, exact.dot),
      gate: calcDiff(ref.gate.data, exact.gate),
      rstdH: calcDiff(ref.rstdH.data, exact.rstdH),
      rstdKey: calcDiff(ref.rstdKey.data, exact.rstdKey),
    };
    console.log(`gate vs oracle, T=1125 M=4 d=2048: calc_diff ${JSON.stringify(diffs)}; ${flips} of ${out.length} bf16 outputs differ from the exact value cast to float32, then bf16`);
    for (const v of Object.values(diffs)) expect(v).toBeLessThan(2e-10);
  });

  it('fp32 h gives an fp32 output (V4.1 returns x.dtype) matching the oracle to float32 precision', () => {
    const rng = new Rng(7);
    const [T, M, d] = [4, 4, 192];
    const args: GateArgs = {
      h: randF32(rng, [T, M, d]), key: randF32(rng, [T, M, d]), value: randF32(rng, [T, d]),
      qWeight: randBf16(rng, [M, d]), kWeight: randBf16(rng, [M, d]),
    };
    const ref = gate(args);
    expect(ref.out.dtype).toBe('fp32');
    const diff = calcDiff(ref.out.data as Float32Array, gateOracle(args).out);
    expect(diff).toBeLessThan(1e-12);
  });

  it('a strided key view reads the same elements as its contiguous copy', () => {
    const args = gateCase(11, 3, 2, 128);
    const key = args.key as HostTensor<'bf16'>;
    // Interleave the key with junk along the last dim: stride 2.
    const wide = new Uint16Array(key.data.length * 2).fill(0x7fc0);
    for (let i = 0; i < key.data.length; i++) wide[2 * i] = key.data[i]!;
    const strided: HostTensor<'bf16'> = { dtype: 'bf16', shape: [3, 2, 128], strides: [512, 256, 2], data: wide };
    expect(gate({ ...args, key: strided }).out.data).toEqual(gate(args).out.data);
  });
});

describe('gate exact properties', () => {
  it('masked tokens pass h through bit for bit (-0 included) and leave the other tokens unchanged', () => {
    const args = gateCase(5, 6, 4, 128);
    const h = args.h as HostTensor<'bf16'>;
    h.data[2 * 4 * 128 + 3] = 0x8000; // -0 in a masked token
    const mask = [true, true, false, true, false, true];
    const masked = gate({ ...args, tokenMask: mask });
    const plain = gate(args);
    const row = 4 * 128;
    for (let t = 0; t < 6; t++) {
      const got = (masked.out.data as Uint16Array).subarray(t * row, (t + 1) * row);
      const want = mask[t] ? (plain.out.data as Uint16Array).subarray(t * row, (t + 1) * row) : h.data.subarray(t * row, (t + 1) * row);
      expect(got).toEqual(want);
      for (let m = 0; m < 4; m++) expect(masked.gate.data[t * 4 + m]).toBe(mask[t] ? plain.gate.data[t * 4 + m] : 0);
    }
    const bytes = Uint8Array.from(mask, Number);
    expect(gate({ ...args, tokenMask: bytes }).out.data).toEqual(masked.out.data);
  });

  it('s = 0: copysign gives σ(+√clamp), sign gives σ(0) = 0.5 (zero h and an exactly cancelling dot)', () => {
    const d = 64;
    const rng = new Rng(3);
    const h = new Uint16Array(2 * d);
    // Token 1: h = (1, -1, 0, …), key = (1, 1, …), weights 1 → Σ h·w·key = 0 exactly.
    h[d] = f32ToBf16(1);
    h[d + 1] = f32ToBf16(-1);
    const ones = new Uint16Array(d).fill(f32ToBf16(1));
    const args: GateArgs = {
      h: { dtype: 'bf16', shape: [2, 1, d], data: h },
      key: { dtype: 'bf16', shape: [2, 1, d], data: new Uint16Array(2 * d).fill(f32ToBf16(1)) },
      value: randBf16(rng, [2, d]),
      qWeight: { dtype: 'bf16', shape: [1, d], data: ones },
      kWeight: { dtype: 'bf16', shape: [1, d], data: ones },
    };
    const sigmoid = (x: number): number => Math.fround(1 / (1 + Math.exp(-x)));
    const viaCopysign = gate(args);
    const viaSign = gate(args, { sign: 'sign' });
    for (const t of [0, 1]) {
      expect(viaCopysign.dot.data[t]).toBe(0);
      expect(viaCopysign.gate.data[t]).toBe(sigmoid(Math.fround(Math.sqrt(Math.fround(1e-6)))));
      expect(viaSign.gate.data[t]).toBe(0.5);
    }
    // Zero h: mean(h²) = 0, so rstd(h) = 1/√ε with the default ε = 1e-20.
    expect(viaCopysign.rstdH.data[0]).toBe(Math.fround(1 / Math.sqrt(Math.fround(1e-20))));
    expect(gateOracle(args, { sign: 'sign' }).gate[0]).toBe(0.5);
  });

  it('a clamp above |s| gives σ(±√clamp) by the sign of s; the options default to eps 1e-20, clamp 1e-6, copysign', () => {
    const args = gateCase(9, 4, 4, 128);
    const base = gate(args);
    const explicit = gate(args, { eps: 1e-20, clamp: 1e-6, sign: 'copysign' });
    expect(base.out.data).toEqual(explicit.out.data);
    // A huge clamp makes every gate σ(±√clamp): the sign of s decides which.
    const clamped = gate(args, { clamp: 4 });
    for (let r = 0; r < 16; r++) {
      const s = base.dot.data[r]!;
      expect(clamped.gate.data[r]).toBe(Math.fround(1 / (1 + Math.exp(s < 0 ? 2 : -2))));
    }
  });
});

describe('gate rejects bad input with the argument named', () => {
  const args = gateCase(21, 2, 2, 64);
  it.each<[string, () => unknown, string, string]>([
    ['missing h', () => gate({ ...args, h: undefined as never }), 'E_VALUE', 'h'],
    ['key shape', () => gate({ ...args, key: randBf16(new Rng(1), [2, 2, 32]) }), 'E_SHAPE', 'key'],
    ['value T', () => gate({ ...args, value: randBf16(new Rng(1), [3, 64]) }), 'E_SHAPE', 'value'],
    ['value dtype', () => gate({ ...args, value: { dtype: 'int32', shape: [2, 64], data: new Int32Array(128) } as never }), 'E_DTYPE', 'value'],
    ['qWeight dtype/data mismatch', () => gate({ ...args, qWeight: { dtype: 'bf16', shape: [2, 64], data: new Float32Array(128) } as never }), 'E_DTYPE', 'qWeight'],
    ['kWeight short buffer', () => gate({ ...args, kWeight: { dtype: 'bf16', shape: [2, 64], data: new Uint16Array(100) } }), 'E_BUFFER', 'kWeight'],
    ['NaN eps', () => gate(args, { eps: NaN }), 'E_VALUE', 'options.eps'],
    ['zero eps', () => gate(args, { eps: 0 }), 'E_RANGE', 'options.eps'],
    ['eps below float32 normal', () => gate(args, { eps: 1e-40 }), 'E_RANGE', 'options.eps'],
    ['negative clamp', () => gate(args, { clamp: -1 }), 'E_RANGE', 'options.clamp'],
    ['unknown sign', () => gate(args, { sign: 'abs' as never }), 'E_VALUE', 'options.sign'],
    ['mask length', () => gate({ ...args, tokenMask: [true] }), 'E_SHAPE', 'tokenMask'],
    ['mask entry', () => gate({ ...args, tokenMask: [true, 1 as never] }), 'E_VALUE', 'tokenMask[1]'],
    ['mask type', () => gate({ ...args, tokenMask: 'yes' as never }), 'E_VALUE', 'tokenMask'],
    ['NaN in h', () => {
      const h = randBf16(new Rng(2), [2, 2, 64]);
      h.data[70] = 0x7fc0;
      return gate({ ...args, h });
    }, 'E_VALUE', 'h'],
    ['Inf in key', () => {
      const key = randBf16(new Rng(2), [2, 2, 64]);
      key.data[3] = 0x7f80;
      return gate({ ...args, key });
    }, 'E_VALUE', 'key'],
    ['+Inf and -Inf terms of the dot', () => {
      const big = (v: number[]): HostTensor<'fp32'> => ({ dtype: 'fp32', shape: [1, 1, 2], data: Float32Array.from(v) });
      const one: HostTensor<'fp32'> = { dtype: 'fp32', shape: [1, 2], data: Float32Array.from([1, 1]) };
      return gate({ h: big([1e30, 1e30]), key: big([1e30, -1e30]), value: one, qWeight: one, kWeight: one });
    }, 'E_VALUE', 'h'],
    ['a zero-stride h claiming 2^30 elements', () => gate({ ...args, h: { dtype: 'bf16', shape: [2 ** 24, 2, 32], strides: [0, 0, 0], data: new Uint16Array(1) } }), 'E_UNSUPPORTED', 'h'],
    ['args not an object', () => gate(null as never), 'E_VALUE', 'args'],
    ['options not an object', () => gate(args, 3 as never), 'E_VALUE', 'options'],
  ])('%s', (_name, fn, code, argument) => expectError(fn, code, argument));
});
