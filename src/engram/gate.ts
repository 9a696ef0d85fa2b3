/**
 * The DeepSeek-V4.1 Engram gate on the CPU, with upstream's float32 dtype flow
 * (docs/engram-math.md#v41-gate): per token t and residual branch m,
 *
 *     dot  = Σᵢ h·w·key,  w = q_weight ⊙ k_weight (float32)
 *     s    = dot · rsqrt(mean(h²) + ε) · rsqrt(mean(key²) + ε) · d^(−1/2)
 *     gate = σ(copysign(√max(|s|, clamp), s))
 *     out  = h + gate · value            (float32, then h's dtype)
 *
 * and a masked token (tokenMask false) keeps h unchanged.
 */
import { check, FlashMLAError } from '../errors.js';
import { f32ArrayToBf16 } from '../formats/bf16.js';
import type { HostTensor } from '../tensor.js';
import { readArgs, readChoice, readFloat, readNumber, readOptions, readTokenMask, type FloatDType, type FloatInput } from './inputs.js';

/**
 * How the signed square root takes the sign of s (docs/engram-math.md#sign-at-zero).
 * - 'copysign': V4.1 and TileKernels' CUDA kernel; s = +0 gives σ(+√clamp).
 * - 'sign': TileKernels' torch reference and the paper demo (`x.sign()`); s = 0 gives σ(0) = 0.5.
 */
export type GateSign = 'copysign' | 'sign';

/**
 * The factor that gives √max(|s|, clamp) the sign of s (docs/engram-math.md#sign-at-zero): ±1 by
 * the sign bit for 'copysign' (+0 → +1), sign(s) for 'sign' (0 at ±0). @internal
 */
export function signFactor(s: number, sign: GateSign): number {
  if (sign === 'copysign') return s < 0 || Object.is(s, -0) ? -1 : 1;
  return s > 0 ? 1 : s < 0 ? -1 : 0;
}

/** Numbers of the gate. */
export interface GateOptions {
  /**
   * ε added to both mean squares. Default: 1e-20 (V4.1 passes its `rms_norm_eps`, 1e-20 in the
   * released config; TileKernels' gate test uses 1e-20 too). Must be a float32 normal number
   * (≥ 2^-126), so that rsqrt(ε)² stays finite in float32.
   */
  readonly eps?: number;
  /** Lower clamp of |s| before the square root. Default: 1e-6 (V4.1 and TileKernels). */
  readonly clamp?: number;
  /** Sign convention of the signed square root. Default: 'copysign' (V4.1). */
  readonly sign?: GateSign;
}

/** Inputs of {@link gate}. T tokens, M residual branches (hc_mult), d = hidden size. */
export interface GateArgs {
  /** Residual branches h, [T, M, d], bf16 or fp32; the output has h's dtype (V4.1 returns `x.dtype`). */
  readonly h: HostTensor;
  /** Keys, [T, M, d], bf16 (V4.1: a slice of the bf16 wkv output) or fp32. */
  readonly key: HostTensor;
  /** The value shared by the branches, [T, d], bf16 or fp32. */
  readonly value: HostTensor;
  /** q_weight, [M, d], bf16 or fp32. */
  readonly qWeight: HostTensor;
  /** k_weight, [M, d], bf16 or fp32. */
  readonly kWeight: HostTensor;
  /**
   * Per token: true (nonzero) = the token takes part, false (0) = its gate is shut and its output
   * is h, bit for bit (V4.1's `token_mask`, false inside image spans). Default: every token takes part.
   */
  readonly tokenMask?: Uint8Array | readonly boolean[];
}

/** What {@link gate} returns: the output and, per (token, branch), the intermediates TileKernels' test checks. */
export interface GateResult {
  /** h + gate·value, [T, M, d], h's dtype. */
  readonly out: HostTensor<'bf16'> | HostTensor<'fp32'>;
  /** The unnormalised Σ h·w·key, [T, M] fp32 (TileKernels' `dot`). */
  readonly dot: HostTensor<'fp32'>;
  /** rsqrt(mean(h²) + ε), [T, M] fp32. */
  readonly rstdH: HostTensor<'fp32'>;
  /** rsqrt(mean(key²) + ε), [T, M] fp32. */
  readonly rstdKey: HostTensor<'fp32'>;
  /** The gate σ(…), [T, M] fp32; 0 for masked tokens (as V4.1's masked_fill). */
  readonly gate: HostTensor<'fp32'>;
}

/** Validated numbers of the gate. @internal */
export interface GateParams {
  readonly eps: number;
  readonly clamp: number;
  readonly sign: GateSign;
}

/** The smallest normal float32. */
const F32_MIN_NORMAL = 2 ** -126;

/** Reads {@link GateOptions} with their defaults. @internal */
export function readGateOptions(options: GateOptions | undefined): GateParams {
  const o = readOptions(options);
  const eps = readNumber(o.eps, 'options.eps', 1e-20, 0, true);
  check(Math.fround(eps) >= F32_MIN_NORMAL, 'E_RANGE', 'options.eps',
    () => `options.eps must be at least 2^-126 (a normal float32) so that rsqrt(eps)^2 stays finite, got ${eps}`);
  return {
    eps,
    clamp: readNumber(o.clamp, 'options.clamp', 1e-6, 0, false),
    sign: readChoice(o.sign, 'options.sign', ['copysign', 'sign'] as const, 'copysign'),
  };
}

/** The gate's float32 inputs, contiguous. @internal */
export interface GateInputs {
  readonly tokens: number;
  readonly branches: number;
  readonly dim: number;
  readonly h: FloatInput;
  /** Keys: element (t, m, i) at t·keyStride + m·d + i. */
  readonly key: Float32Array;
  readonly keyStride: number;
  /** Values: element (t, i) at valueOffset + t·valueStride + i (key and value may share one kv array). */
  readonly value: Float32Array;
  readonly valueStride: number;
  readonly valueOffset: number;
  /** q_weight ⊙ k_weight in float32, [M, d]. */
  readonly weight: Float32Array;
  readonly tokenMask: Uint8Array | null;
}

/** q_weight ⊙ k_weight rounded to float32 (exact for bf16 weights: 8 × 8 significant bits). @internal */
export function fusedWeight(q: FloatInput, k: FloatInput): Float32Array {
  const w = new Float32Array(q.values.length);
  for (let i = 0; i < w.length; i++) w[i] = q.values[i]! * k.values[i]!;
  return w;
}

/** Runs the gate on validated inputs (docs/engram-math.md#v41-gate). @internal */
export function runGate(x: GateInputs, p: GateParams): GateResult {
  const { tokens: T, branches: M, dim: d, h, key, value, weight, tokenMask, keyStride, valueStride, valueOffset } = x;
  const f = Math.fround;
  // Python scalars meet float32 tensors as float32 (docs/engram-math.md#dtype-flow).
  const eps = f(p.eps);
  const clamp = f(p.clamp);
  const scale = f(d ** -0.5);
  const hv = h.values;
  const out = new Float32Array(T * M * d);
  const dots = new Float32Array(T * M);
  const rstdH = new Float32Array(T * M);
  const rstdK = new Float32Array(T * M);
  const gates = new Float32Array(T * M);
  for (let t = 0; t < T; t++) {
    const vOff = valueOffset + t * valueStride;
    for (let m = 0; m < M; m++) {
      const r = t * M + m;
      const hOff = r * d;
      const kOff = t * keyStride + m * d;
      const wOff = m * d;
      // Sums accumulate in float64 and are rounded to float32 once (docs/engram-math.md#accumulation).
      let sh = 0;
      let sk = 0;
      let sd = 0;
      for (let i = 0; i < d; i++) {
        const a = hv[hOff + i]!;
        const b = key[kOff + i]!;
        sh += f(a * a);
        sk += f(b * b);
        sd += f(f(a * weight[wOff + i]!) * b);
      }
      const rh = f(1 / Math.sqrt(f(f(f(sh) / d) + eps)));
      const rk = f(1 / Math.sqrt(f(f(f(sk) / d) + eps)));
      const dot = f(sd);
      const s = f(f(dot * f(rh * rk)) * scale);
      if (Number.isNaN(s)) {
        throw new FlashMLAError('E_VALUE',
          `the gate score is NaN at token ${t}, branch ${m}: h and key are too large for float32 (h·w·key or their squares overflow)`, 'h');
      }
      dots[r] = dot;
      rstdH[r] = rh;
      rstdK[r] = rk;
      if (tokenMask !== null && tokenMask[t] === 0) {
        out.set(hv.subarray(hOff, hOff + d), hOff);
        continue;
      }
      const mag = f(Math.sqrt(Math.max(Math.abs(s), clamp)));
      const g = f(1 / (1 + Math.exp(-mag * signFactor(s, p.sign))));
      gates[r] = g;
      for (let i = 0; i < d; i++) out[hOff + i] = hv[hOff + i]! + f(g * value[vOff + i]!);
    }
  }
  const fp32 = (data: Float32Array): HostTensor<'fp32'> => ({ dtype: 'fp32', shape: [T, M], data });
  return { out: finish(out, h.dtype, [T, M, d]), dot: fp32(dots), rstdH: fp32(rstdH), rstdKey: fp32(rstdK), gate: fp32(gates) };
}

/** The float32 result as a tensor of `dtype` (one RNE rounding to bf16). */
function finish(values: Float32Array, dtype: FloatDType, shape: number[]): HostTensor<'bf16'> | HostTensor<'fp32'> {
  if (dtype === 'fp32') return { dtype, shape, data: values };
  const data = new Uint16Array(values.length);
  f32ArrayToBf16(values, data);
  return { dtype, shape, data };
}

/** Validates {@link GateArgs} against each other (shapes, dtypes, finite values, mask length). @internal */
export function readGateInputs(args: GateArgs): GateInputs {
  const a = readArgs(args);
  const h = readFloat(a.h, 'h', [null, null, null]);
  const [T, M, d] = h.shape as [number, number, number];
  check(M >= 1 && d >= 1, 'E_SHAPE', 'h', () => `h must have at least one branch and d ≥ 1, got (${h.shape.join(', ')})`);
  const tM = ['M', M] as const;
  const td = ['d', d] as const;
  const key = readFloat(a.key, 'key', [['T', T], tM, td]);
  const value = readFloat(a.value, 'value', [['T', T], td]);
  const q = readFloat(a.qWeight, 'qWeight', [tM, td]);
  const k = readFloat(a.kWeight, 'kWeight', [tM, td]);
  return {
    tokens: T, branches: M, dim: d, h, key: key.values, keyStride: M * d, value: value.values, valueStride: d, valueOffset: 0,
    weight: fusedWeight(q, k), tokenMask: readTokenMask(a.tokenMask, 'tokenMask', T),
  };
}

/**
 * The V4.1 Engram gate (docs/engram-math.md#v41-gate): h + σ(signed √ of the normalised
 * h·(q⊙k)·key dot product) · value per token and branch, in float32 with upstream's roundings.
 * Throws a FlashMLAError (naming the argument) for a missing, mis-shaped or mistyped tensor, a
 * NaN/Inf input, a token mask of the wrong length, or an option outside its domain.
 */
export function gate(args: GateArgs, options?: GateOptions): GateResult {
  const p = readGateOptions(options);
  return runGate(readGateInputs(args), p);
}
