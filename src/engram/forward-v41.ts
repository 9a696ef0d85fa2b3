/**
 * The DeepSeek-V4.1 Engram module after the table lookup (docs/engram-math.md#v41-forward):
 * kv = wkv(e) with an FP8 e4m3 weight (one ue8m0 or fp32 scale per 32×32 block, no bias) and an
 * activation quantised to e4m3 per 32 values; key⁽ᵐ⁾ = kv[m·d, (m+1)·d), value = kv[M·d, (M+1)·d);
 * then the gate (./gate.ts).
 */
import { check, FlashMLAError } from '../errors.js';
import { bf16ArrayToF32, f32ToBf16 } from '../formats/bf16.js';
import { E4M3_TO_F32, E8M0_TO_F32 } from '../formats/fp8.js';
import { viewOf, type HostTensor } from '../tensor.js';
import { FP8_BLOCK, quantizeActivationE4m3 } from './act-quant.js';
import { fusedWeight, readGateOptions, runGate, type GateArgs, type GateOptions, type GateResult } from './gate.js';
import { checkElements, findCode, readArgs, readBytes, readFloat, readTokenMask, type FloatInput } from './inputs.js';

/** Inputs of {@link forwardV41}: the gate's, with the concatenated rows e and the wkv weight in place of key and value. */
export interface ForwardV41Args extends Omit<GateArgs, 'key' | 'value'> {
  /**
   * The dequantised table rows of each token concatenated, [T, K], bf16 or fp32 (V4.1: K = 24·256 =
   * 6144, bf16); K must be a multiple of 32.
   */
  readonly e: HostTensor;
  /** wkv weight, [N, K] e4m3fn codes (uint8), N = d·(M+1): M key blocks of d rows, then the value's d rows. */
  readonly wkv: HostTensor<'uint8'>;
  /** wkv scales, one per 32×32 block, [⌈N/32⌉, K/32]: e8m0 codes (uint8) or fp32 values. */
  readonly wkvScale: HostTensor<'uint8'> | HostTensor<'fp32'>;
}

/** What {@link forwardV41} returns: the gate's result and the bf16 kv it was computed from. */
export interface ForwardV41Result extends GateResult {
  /** wkv(e), [T, N] bf16 (V4.1's Linear returns its input's dtype, bf16). */
  readonly kv: HostTensor<'bf16'>;
}

const F32_MAX = 3.4028234663852886e38;

/** Per-block weight scales as numbers, [⌈N/32⌉ · K/32]; e8m0 0xFF (NaN) is rejected. */
function readWeightScales(t: unknown, rowBlocks: number, colBlocks: number): Float64Array {
  const dims = [['⌈N/32⌉', rowBlocks], ['K/32', colBlocks]] as const;
  check(t !== undefined && t !== null, 'E_VALUE', 'wkvScale', 'wkvScale is required');
  const dtype = viewOf(t, 'wkvScale', 2).dtype;
  check(dtype === 'uint8' || dtype === 'fp32', 'E_DTYPE', 'wkvScale', () => `wkvScale must be uint8 (e8m0 codes) or fp32, got ${dtype}`);
  const out = new Float64Array(rowBlocks * colBlocks);
  if (dtype === 'fp32') {
    out.set(readFloat(t, 'wkvScale', dims, ['fp32']).values);
    return out;
  }
  const codes = readBytes(t, 'wkvScale', dims);
  const bad = findCode(codes, [rowBlocks, colBlocks], (c) => c === 0xff);
  if (bad !== null) throw new FlashMLAError('E_VALUE', `wkvScale[${bad}] is the e8m0 NaN code 0xFF`, 'wkvScale');
  for (let i = 0; i < out.length; i++) out[i] = E8M0_TO_F32[codes[i]!]!;
  return out;
}

/** The validated inputs of {@link forwardV41}. @internal */
export interface V41Inputs {
  readonly tokens: number;
  readonly branches: number;
  readonly dim: number;
  /** Row length of e (a multiple of 32). */
  readonly embed: number;
  /** wkv rows, d·(M+1). */
  readonly rows: number;
  readonly h: FloatInput;
  readonly e: Float32Array;
  /** wkv e4m3fn codes, [N, K]. */
  readonly wkv: Uint8Array;
  /** One scale per 32×32 block, [⌈N/32⌉, K/32], as numbers. */
  readonly scales: Float64Array;
  readonly weight: Float32Array;
  readonly tokenMask: Uint8Array | null;
}

/** Validates {@link ForwardV41Args} against each other. @internal */
export function readV41Inputs(args: ForwardV41Args): V41Inputs {
  const a = readArgs(args);
  const h = readFloat(a.h, 'h', [null, null, null]);
  const [T, M, d] = h.shape as [number, number, number];
  check(M >= 1 && d >= 1, 'E_SHAPE', 'h', () => `h must have at least one branch and d ≥ 1, got (${h.shape.join(', ')})`);
  const e = readFloat(a.e, 'e', [['T', T], null]);
  const K = e.shape[1]!;
  check(K >= 1 && K % FP8_BLOCK === 0, 'E_SHAPE', 'e', () => `e's row length K must be a positive multiple of ${FP8_BLOCK}, got ${K}`);
  const N = d * (M + 1);
  checkElements(T * N, 'wkv');
  const wkv = readBytes(a.wkv, 'wkv', [['N = d·(M+1)', N], ['K', K]]);
  const nan = findCode(wkv, [N, K], (c) => (c & 0x7f) === 0x7f);
  if (nan !== null) throw new FlashMLAError('E_VALUE', `wkv[${nan}] is an e4m3fn NaN code (0x7F/0xFF)`, 'wkv');
  const scales = readWeightScales(a.wkvScale, Math.ceil(N / FP8_BLOCK), K / FP8_BLOCK);
  const tM = ['M', M] as const;
  const td = ['d', d] as const;
  const q = readFloat(a.qWeight, 'qWeight', [tM, td]);
  const k = readFloat(a.kWeight, 'kWeight', [tM, td]);
  return {
    tokens: T, branches: M, dim: d, embed: K, rows: N, h, e: e.values, wkv, scales,
    weight: fusedWeight(q, k), tokenMask: readTokenMask(a.tokenMask, 'tokenMask', T),
  };
}

/**
 * kv = wkv(e) as V4.1's FP8 Linear computes it (docs/engram-math.md#v41-forward): e quantised per
 * 32 values, the weight dequantised to float32, products summed (each exactly representable;
 * summed in float64, rounded to float32 once), then rounded to bf16.
 */
function projectKv(x: V41Inputs): Uint16Array {
  const { tokens: T, embed: K, rows: N, wkv, scales } = x;
  // Local bindings: module imports may be namespace properties under test transforms (slow in hot loops).
  const e4m3 = E4M3_TO_F32;
  const toBf16 = f32ToBf16;
  const act = quantizeActivationE4m3(x.e);
  const xs = new Float64Array(T * K);
  for (let i = 0; i < xs.length; i++) xs[i] = e4m3[act.codes[i]!]! * act.scales[(i / FP8_BLOCK) | 0]!;
  const colBlocks = K / FP8_BLOCK;
  // One weight row: e4m3 values (unscaled) and its blocks' scales. Every product x·e4m3 and its
  // scaling by a power of two is exact, so summing a block first changes nothing but speed.
  const row = new Float64Array(K);
  const bits = new Uint16Array(T * N);
  for (let n = 0; n < N; n++) {
    const sOff = ((n / FP8_BLOCK) | 0) * colBlocks;
    const wOff = n * K;
    for (let k = 0; k < K; k++) row[k] = e4m3[wkv[wOff + k]!]!;
    for (let b = 0; b < colBlocks; b++) {
      // upstream dequantises the weight to float32 first: a value beyond its range would be ±Inf.
      if (scales[sOff + b]! * 448 <= F32_MAX) continue;
      for (let k = b * FP8_BLOCK; k < (b + 1) * FP8_BLOCK; k++) {
        if (!(Math.abs(row[k]! * scales[sOff + b]!) <= F32_MAX)) {
          throw new FlashMLAError('E_VALUE', `wkv[${n}, ${k}] times its block scale is beyond float32 range`, 'wkvScale');
        }
      }
    }
    for (let t = 0; t < T; t++) {
      const xOff = t * K;
      let s = 0;
      for (let b = 0; b < colBlocks; b++) {
        let acc = 0;
        const o = b * FP8_BLOCK;
        for (let j = 0; j < FP8_BLOCK; j++) acc += xs[xOff + o + j]! * row[o + j]!;
        s += acc * scales[sOff + b]!;
      }
      bits[t * N + n] = toBf16(s);
    }
  }
  return bits;
}

/**
 * The V4.1 Engram module from the looked-up rows on (docs/engram-math.md#v41-forward): kv = wkv(e)
 * with FP8 activation quantisation, key/value split, then {@link gate}'s math. Small d and M work
 * (tests); the real d = 5120, M = 4 works too, at about N·K multiply-adds per token in JavaScript.
 * Throws a FlashMLAError naming the argument for any malformed input.
 */
export function forwardV41(args: ForwardV41Args, options?: GateOptions): ForwardV41Result {
  const p = readGateOptions(options);
  const x = readV41Inputs(args);
  const bits = projectKv(x);
  const kv = new Float32Array(bits.length);
  bf16ArrayToF32(bits, kv);
  const { tokens: T, branches: M, dim: d, rows: N } = x;
  const result = runGate({
    tokens: T, branches: M, dim: d, h: x.h, key: kv, keyStride: N, value: kv, valueStride: N, valueOffset: M * d,
    weight: x.weight, tokenMask: x.tokenMask,
  }, p);
  return { ...result, kv: { dtype: 'bf16', shape: [T, N], data: bits } };
}
