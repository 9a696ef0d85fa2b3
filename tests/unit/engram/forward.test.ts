// The V4.1 module (FP8 wkv + gate) and the paper demo's module (projections, gate, ShortConv)
// against their float64 oracles, the e4m3 activation quantiser against an independent decode, and
// decode-state continuation == one prefill (docs/engram-math.md#tests).
import { describe, expect, it } from 'vitest';
import { ceilPow2, quantizeActivationE4m3 } from '../../../src/engram/act-quant.js';
import { demoConvState, forwardDemo, type ForwardDemoArgs } from '../../../src/engram/forward-demo.js';
import { forwardV41, type ForwardV41Args } from '../../../src/engram/forward-v41.js';
import { gate } from '../../../src/engram/gate.js';
import { calcDiff, forwardDemoOracle, forwardV41Oracle, quantizeActivationOracle, roundBf16 } from '../../../src/engram/oracle.js';
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

function randF32(rng: Rng, shape: number[], scale = 1): HostTensor<'fp32'> {
  const data = new Float32Array(numel(shape));
  for (let i = 0; i < data.length; i++) data[i] = rng.randn() * scale;
  return { dtype: 'fp32', shape, data };
}

/** An e4m3fn code that is not NaN (0x7F / 0xFF). */
function randE4m3(rng: Rng): number {
  for (;;) {
    const c = rng.int(0, 256);
    if ((c & 0x7f) !== 0x7f) return c;
  }
}

/** The e4m3fn value of a code from its bit fields: written here, independently of src/formats/fp8.ts. */
function decodeE4m3(code: number): number {
  const e = (code >> 3) & 15;
  const m = code & 7;
  const v = e === 0 ? (m / 8) * 2 ** -6 : (1 + m / 8) * 2 ** (e - 7);
  return code & 0x80 ? -v : v;
}

/**
 * A V4.1-shaped case: e are table rows (e4m3 · 2^(s−127), in bf16 as the embedding returns them),
 * wkv random e4m3 codes with e8m0 block scales near 2^-9 (so kv is O(1)).
 */
function v41Case(seed: number, T: number, M: number, d: number, K = 6144): ForwardV41Args {
  const rng = new Rng(seed);
  const N = d * (M + 1);
  const e = new Uint16Array(T * K);
  for (let i = 0; i < e.length; i += 32) {
    const scale = 2 ** (rng.int(118, 124) - 127);
    for (let j = 0; j < 32; j++) e[i + j] = f32ToBf16(decodeE4m3(randE4m3(rng)) * scale);
  }
  // xorshift32 for the weight bytes (up to 157 M of them at V4.1 size); NaN codes nudged off.
  const wkv = new Uint8Array(N * K);
  let state = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < wkv.length; i++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    const c = (state >>> 0) & 0xff;
    wkv[i] = (c & 0x7f) === 0x7f ? c ^ 1 : c;
  }
  const scales = new Uint8Array(Math.ceil(N / 32) * (K / 32));
  for (let i = 0; i < scales.length; i++) scales[i] = rng.int(115, 119);
  return {
    e: { dtype: 'bf16', shape: [T, K], data: e },
    h: randBf16(rng, [T, M, d]),
    wkv: { dtype: 'uint8', shape: [N, K], data: wkv },
    wkvScale: { dtype: 'uint8', shape: [Math.ceil(N / 32), K / 32], data: scales },
    qWeight: randBf16(rng, [M, d]),
    kWeight: randBf16(rng, [M, d]),
  };
}

const widenBf16 = (bits: Uint16Array): Float64Array => Float64Array.from(bits, bf16ToF32);
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

describe('e4m3 activation quantisation', () => {
  it('matches the float64 quantiser decoded independently, on random and edge blocks', () => {
    const rng = new Rng(17);
    const blocks: number[][] = [
      new Array<number>(32).fill(0), // amax floor 1e-4 → scale 2^-22
      [448 * 2 ** -3, ...new Array<number>(31).fill(1e-3)], // amax exactly 448·2^k → scale 2^k
      [Math.fround(448 * 2 ** -3 * (1 + 2 ** -20)), ...new Array<number>(31).fill(-5e-3)], // just above → 2^(k+1)
      Array.from({ length: 32 }, (_, j) => (j % 2 ? 1.0625 : -1.1875) * 2 ** -4), // ties between e4m3 neighbours
      Array.from({ length: 32 }, (_, j) => Math.fround(j * 1e-7)), // below the amax floor
      Array.from({ length: 32 }, () => Math.fround(rng.randn() * 1e30)),
    ];
    for (let b = 0; b < 40; b++) blocks.push(Array.from({ length: 32 }, () => Math.fround(rng.randn() * 2 ** rng.int(-20, 20))));
    const x = Float32Array.from(blocks.flat());
    const q = quantizeActivationE4m3(x);
    const o = quantizeActivationOracle(x);
    for (let b = 0; b < blocks.length; b++) {
      const s = q.scales[b]!;
      expect(s).toBe(o.scales[b]);
      expect(Number.isInteger(Math.log2(s))).toBe(true);
      const amax = Math.max(1e-4, ...blocks[b]!.map(Math.abs));
      expect(s * 448).toBeGreaterThanOrEqual(amax);
      expect((s / 2) * 448).toBeLessThan(amax);
    }
    expect(q.scales[0]).toBe(2 ** -22);
    expect(q.scales[1]).toBe(2 ** -3);
    expect(q.scales[2]).toBe(2 ** -2);
    for (let i = 0; i < x.length; i++) {
      const value = decodeE4m3(q.codes[i]!) * q.scales[(i / 32) | 0]!;
      expect(value).toBe(o.values[i]);
      // Round trip: within half an e4m3 step of the input (relative 2^-4, or the subnormal step).
      const step = Math.max(2 ** (Math.floor(Math.log2(Math.abs(x[i]!) || 1)) - 3), 2 ** -9 * q.scales[(i / 32) | 0]!);
      expect(Math.abs(value - x[i]!)).toBeLessThanOrEqual(step / 2 + 1e-300);
    }
    // Ties go to the even mantissa: block 3 has scale 2^-12, so x/scale = 272 and −304, midpoints
    // between e4m3 neighbours (256 | 288 and 288 | 320), round to 256 and −320.
    expect(o.values[3 * 32 + 1]).toBe(2 ** -4);
    expect(o.values[3 * 32]).toBe(-1.25 * 2 ** -4);
  });

  it('ceilPow2 keeps powers of two and bumps anything above them', () => {
    expect(ceilPow2(1)).toBe(1);
    expect(ceilPow2(2 ** -22)).toBe(2 ** -22);
    expect(ceilPow2(Math.fround(1 + 2 ** -23))).toBe(2);
    expect(ceilPow2(Math.fround(0.75))).toBe(1);
  });

  it('rejects a partial block and NaN', () => {
    expectError(() => quantizeActivationE4m3(new Float32Array(33)), 'E_SHAPE', 'x');
    expectError(() => quantizeActivationE4m3(new Float32Array(32).fill(NaN)), 'E_VALUE', 'x');
  });
});

describe('forwardV41', () => {
  it('kv within one bf16 ulp of the exact FP8 product; gate and output match the float64 oracle', () => {
    const args = v41Case(41, 6, 4, 64);
    const ref = forwardV41(args);
    const exact = forwardV41Oracle(args);
    expect(ref.kv.shape).toEqual([6, 320]);
    const kv = widenBf16(ref.kv.data);
    let kvFlips = 0;
    for (let i = 0; i < kv.length; i++) {
      expect(Math.abs(kv[i]! - exact.kv[i]!)).toBeLessThanOrEqual(bf16Ulp(exact.kv[i]!) / 2);
      if (kv[i] !== roundBf16(Math.fround(exact.kv[i]!))) kvFlips++;
    }
    const out = widenBf16(ref.out.data as Uint16Array);
    for (let i = 0; i < out.length; i++) expect(Math.abs(out[i]! - exact.out[i]!)).toBeLessThanOrEqual(bf16Ulp(exact.out[i]!));
    const diffs = { gate: calcDiff(ref.gate.data, exact.gate), dot: calcDiff(ref.dot.data, exact.dot), kv: calcDiff(kv, exact.kv) };
    console.log(`forwardV41 vs oracle (T=6, M=4, d=64, K=6144): ${JSON.stringify(diffs)}; kv values off the exact value cast to float32, then bf16: ${kvFlips} of ${kv.length}`);
    expect(diffs.gate).toBeLessThan(2e-10);
    expect(diffs.dot).toBeLessThan(2e-10);
    // kv is bf16: its calc_diff against the exact kv is that of one bf16 rounding (~1e-6), not 2e-10.
    expect(diffs.kv).toBeLessThan(2 ** -16);
  });

  it('is the gate applied to its own kv (key = kv[m·d…], value = kv[M·d…]), bit for bit', () => {
    const args = v41Case(42, 3, 2, 96, 256);
    const r = forwardV41(args);
    const [T, M, d, N] = [3, 2, 96, 288];
    const key = new Uint16Array(T * M * d);
    const value = new Uint16Array(T * d);
    for (let t = 0; t < T; t++) {
      key.set(r.kv.data.subarray(t * N, t * N + M * d), t * M * d);
      value.set(r.kv.data.subarray(t * N + M * d, (t + 1) * N), t * d);
    }
    const g = gate({
      h: args.h, key: { dtype: 'bf16', shape: [T, M, d], data: key }, value: { dtype: 'bf16', shape: [T, d], data: value },
      qWeight: args.qWeight, kWeight: args.kWeight,
    });
    expect(r.out.data).toEqual(g.out.data);
    expect(r.gate.data).toEqual(g.gate.data);
  });

  it('fp32 scales equal to the e8m0 codes give the same result; a masked token keeps h', () => {
    const args = v41Case(43, 4, 4, 64, 512);
    const codes = (args.wkvScale as HostTensor<'uint8'>);
    const f32: HostTensor<'fp32'> = { dtype: 'fp32', shape: codes.shape, data: Float32Array.from(codes.data, (c) => 2 ** (c - 127)) };
    const a = forwardV41({ ...args, tokenMask: [true, false, true, true] });
    const b = forwardV41({ ...args, wkvScale: f32, tokenMask: Uint8Array.from([1, 0, 1, 1]) });
    expect(a.out.data).toEqual(b.out.data);
    const row = 4 * 64;
    expect((a.out.data as Uint16Array).subarray(row, 2 * row)).toEqual((args.h as HostTensor<'bf16'>).data.subarray(row, 2 * row));
  });

  it('an fp32 e holding the same values as the bf16 e gives the same kv', () => {
    const args = v41Case(44, 2, 2, 32, 256);
    const e = args.e as HostTensor<'bf16'>;
    const e32: HostTensor<'fp32'> = { dtype: 'fp32', shape: e.shape, data: Float32Array.from(e.data, bf16ToF32) };
    expect(forwardV41({ ...args, e: e32 }).kv.data).toEqual(forwardV41(args).kv.data);
  });

  it('runs at V4.1 size (d = 5120, M = 4, K = 6144, T = 1)', () => {
    const args = v41Case(45, 1, 4, 5120);
    const t0 = performance.now();
    const r = forwardV41(args);
    const ms = performance.now() - t0;
    console.log(`forwardV41 at V4.1 size, T=1 (wkv 25600 x 6144): ${ms.toFixed(0)} ms (2 shared cores; noisy)`);
    expect(r.kv.shape).toEqual([1, 25600]);
    expect(r.out.shape).toEqual([1, 4, 5120]);
    for (const g of r.gate.data) expect(g > 0 && g < 1).toBe(true);
  }, 300_000);

  describe('rejects bad input with the argument named', () => {
    const args = v41Case(46, 2, 2, 32, 64);
    it.each<[string, () => unknown, string, string]>([
      ['wkv rows', () => forwardV41({ ...args, wkv: { dtype: 'uint8', shape: [95, 64], data: new Uint8Array(95 * 64) } }), 'E_SHAPE', 'wkv'],
      ['wkv dtype', () => forwardV41({ ...args, wkv: randBf16(new Rng(1), [96, 64]) as never }), 'E_DTYPE', 'wkv'],
      ['wkv NaN code', () => {
        const w = new Uint8Array(96 * 64);
        w[100] = 0xff;
        return forwardV41({ ...args, wkv: { dtype: 'uint8', shape: [96, 64], data: w } });
      }, 'E_VALUE', 'wkv'],
      ['wkvScale shape', () => forwardV41({ ...args, wkvScale: { dtype: 'uint8', shape: [3, 1], data: new Uint8Array(3) } }), 'E_SHAPE', 'wkvScale'],
      ['wkvScale bf16', () => forwardV41({ ...args, wkvScale: randBf16(new Rng(1), [3, 2]) as never }), 'E_DTYPE', 'wkvScale'],
      ['wkvScale e8m0 NaN', () => forwardV41({ ...args, wkvScale: { dtype: 'uint8', shape: [3, 2], data: Uint8Array.from([127, 127, 255, 127, 127, 127]) } }), 'E_VALUE', 'wkvScale'],
      ['wkvScale overflowing float32', () => forwardV41({ ...args, wkvScale: { dtype: 'uint8', shape: [3, 2], data: new Uint8Array(6).fill(254) } }), 'E_VALUE', 'wkvScale'],
      ['e row not whole blocks', () => forwardV41({ ...args, e: randBf16(new Rng(1), [2, 48]) }), 'E_SHAPE', 'e'],
      ['e tokens', () => forwardV41({ ...args, e: randBf16(new Rng(1), [3, 64]) }), 'E_SHAPE', 'e'],
      ['e NaN', () => {
        const e = randF32(new Rng(1), [2, 64]);
        e.data[5] = NaN;
        return forwardV41({ ...args, e });
      }, 'E_VALUE', 'e'],
      ['qWeight shape', () => forwardV41({ ...args, qWeight: randBf16(new Rng(1), [3, 32]) }), 'E_SHAPE', 'qWeight'],
      ['mask length', () => forwardV41({ ...args, tokenMask: new Uint8Array(3) }), 'E_SHAPE', 'tokenMask'],
      ['NaN eps', () => forwardV41(args, { eps: NaN }), 'E_VALUE', 'options.eps'],
    ])('%s', (_name, fn, code, argument) => expectError(fn, code, argument));
  });
});

/** A small demo-shaped case: fp32 like the demo, weights scaled as torch's default Linear init. */
function demoCase(seed: number, T: number, M: number, D: number, Ke: number, kernel = 4): ForwardDemoArgs {
  const rng = new Rng(seed);
  const w = Ke ** -0.5;
  return {
    e: randF32(rng, [T, Ke]), h: randF32(rng, [T, M, D]),
    keyWeight: randF32(rng, [M, D, Ke], w), keyBias: randF32(rng, [M, D], w),
    valueWeight: randF32(rng, [D, Ke], w), valueBias: randF32(rng, [D], w),
    keyNormWeight: randF32(rng, [M, D]), queryNormWeight: randF32(rng, [M, D]), convNormWeight: randF32(rng, [M, D]),
    convWeight: randF32(rng, [M * D, kernel], 0.5),
  };
}

/** Token rows [from, to) of a [T, …] fp32 tensor. */
function rows(t: HostTensor, from: number, to: number): HostTensor<'fp32'> {
  const per = numel(t.shape.slice(1));
  return { dtype: 'fp32', shape: [to - from, ...t.shape.slice(1)], data: (t.data as Float32Array).slice(from * per, to * per) };
}

describe('forwardDemo', () => {
  it('matches the float64 oracle (calc_diff < 2e-10 on Y and the gate)', () => {
    const args = demoCase(51, 13, 4, 32, 48);
    const ref = forwardDemo(args);
    const exact = forwardDemoOracle(args);
    const diffs = { out: calcDiff(ref.out.data, exact.out), gate: calcDiff(ref.gate.data, exact.gate) };
    console.log(`forwardDemo vs oracle (T=13, M=4, D=32, Ke=48): ${JSON.stringify(diffs)}`);
    expect(diffs.out).toBeLessThan(2e-10);
    expect(diffs.gate).toBeLessThan(2e-10);
  });

  it('prefill then token-by-token decode with the state equals one prefill, bit for bit', () => {
    const T = 17;
    const args = demoCase(52, T, 2, 16, 24);
    const whole = forwardDemo(args);
    const split = (from: number, to: number): ForwardDemoArgs => ({ ...args, e: rows(args.e, from, to), h: rows(args.h, from, to) });
    const parts: Float32Array[] = [];
    let r = forwardDemo(split(0, 5));
    parts.push(r.out.data);
    for (let t = 5; t < T; t++) {
      r = forwardDemo({ ...split(t, t + 1), state: r.state });
      parts.push(r.out.data);
    }
    const joined = new Float32Array(whole.out.data.length);
    let o = 0;
    for (const p of parts) {
      joined.set(p, o);
      o += p.length;
    }
    expect(joined).toEqual(whole.out.data);
    expect(r.state.history).toEqual(whole.state.history);
    // Chunks of 4 + 9 + 4 as well.
    const a = forwardDemo(split(0, 4));
    const b = forwardDemo({ ...split(4, 13), state: a.state });
    const c = forwardDemo({ ...split(13, T), state: b.state });
    expect(Float32Array.from([...a.out.data, ...b.out.data, ...c.out.data])).toEqual(whole.out.data);
  });

  it('the conv is causal with the look-back the state describes', () => {
    const args = demoCase(53, 12, 2, 8, 16);
    const base = forwardDemo(args);
    const e = rows(args.e, 0, 12);
    e.data.fill(0.5, 7 * 16, 8 * 16); // change token 7's embeddings
    const changed = forwardDemo({ ...args, e });
    const C = 16;
    expect(changed.out.data.subarray(0, 7 * C)).toEqual(base.out.data.subarray(0, 7 * C));
    // Token 7 reaches tokens 7, 10 (one dilation later) and beyond; tokens 8 and 9 read it only
    // through their own gates, which it does not touch.
    expect(changed.out.data.subarray(8 * C, 10 * C)).toEqual(base.out.data.subarray(8 * C, 10 * C));
    expect(changed.out.data.subarray(10 * C, 11 * C)).not.toEqual(base.out.data.subarray(10 * C, 11 * C));
    expect(base.state.history.length).toBe(9 * C);
  });

  it('the start state is the conv zero padding; torch\'s [C, 1, k] conv weight reads as [C, k]', () => {
    const args = demoCase(54, 5, 2, 8, 16);
    const base = forwardDemo(args);
    expect(forwardDemo({ ...args, state: demoConvState(16, 4, 3) }).out.data).toEqual(base.out.data);
    const cw = args.convWeight as HostTensor<'fp32'>;
    expect(forwardDemo({ ...args, convWeight: { dtype: 'fp32', shape: [16, 1, 4], data: cw.data } }).out.data).toEqual(base.out.data);
  });

  it('s = 0 (zero h) gives σ(0) = 0.5 with the demo\'s sign(), σ(√1e-6) with copysign', () => {
    const args = demoCase(55, 2, 2, 8, 16);
    const h: HostTensor<'fp32'> = { dtype: 'fp32', shape: [2, 2, 8], data: new Float32Array(32) };
    expect(Array.from(forwardDemo({ ...args, h }).gate.data)).toEqual([0.5, 0.5, 0.5, 0.5]);
    const g = Math.fround(1 / (1 + Math.exp(-Math.fround(Math.sqrt(Math.fround(1e-6))))));
    expect(Array.from(forwardDemo({ ...args, h }, { sign: 'copysign' }).gate.data)).toEqual([g, g, g, g]);
  });

  describe('rejects bad input with the argument named', () => {
    const args = demoCase(56, 3, 2, 8, 16);
    it.each<[string, () => unknown, string, string]>([
      ['keyWeight shape', () => forwardDemo({ ...args, keyWeight: randF32(new Rng(1), [2, 8, 15]) }), 'E_SHAPE', 'keyWeight'],
      ['valueBias dtype', () => forwardDemo({ ...args, valueBias: { dtype: 'int32', shape: [8], data: new Int32Array(8) } as never }), 'E_DTYPE', 'valueBias'],
      ['convWeight channels', () => forwardDemo({ ...args, convWeight: randF32(new Rng(1), [15, 4]) }), 'E_SHAPE', 'convWeight'],
      ['state channels', () => forwardDemo({ ...args, state: demoConvState(8, 4, 3) }), 'E_SHAPE', 'state'],
      ['state dilation', () => forwardDemo({ ...args, state: demoConvState(16, 4, 2) }), 'E_SHAPE', 'state'],
      ['state history length', () => forwardDemo({ ...args, state: { channels: 16, kernel: 4, dilation: 3, history: new Float32Array(3) } }), 'E_SHAPE', 'state'],
      ['state NaN', () => forwardDemo({ ...args, state: { ...demoConvState(16, 4, 3), history: new Float32Array(144).fill(NaN) } }), 'E_VALUE', 'state'],
      ['dilation 0', () => forwardDemo(args, { dilation: 0 }), 'E_VALUE', 'options.dilation'],
      ['NaN normEps', () => forwardDemo(args, { normEps: NaN }), 'E_VALUE', 'options.normEps'],
      ['negative convNormEps', () => forwardDemo(args, { convNormEps: -1 }), 'E_RANGE', 'options.convNormEps'],
      ['h NaN', () => {
        const h = randF32(new Rng(1), [3, 2, 8]);
        h.data[0] = Infinity;
        return forwardDemo({ ...args, h });
      }, 'E_VALUE', 'h'],
      ['a dilation whose look-back cannot be held', () => forwardDemo(args, { dilation: 2 ** 30 }), 'E_UNSUPPORTED', 'options.dilation'],
      ['demoConvState look-back too large', () => demoConvState(16, 4, 2 ** 30), 'E_UNSUPPORTED', 'dilation'],
      ['demoConvState channels', () => demoConvState(0, 4, 3), 'E_VALUE', 'channels'],
    ])('%s', (_name, fn, code, argument) => expectError(fn, code, argument));
  });
});
