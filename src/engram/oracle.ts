/**
 * Float64 oracles of the Engram math (docs/engram-math.md#oracles): the same formulas as
 * ./gate.ts, ./forward-v41.ts and ./forward-demo.ts evaluated in float64 without the float32
 * roundings, keeping only the format conversions that define the model (V4.1's e4m3 activation
 * and its bf16 kv, a float32 result cast to bf16), each written here independently of
 * src/formats. Outputs are left unrounded.
 */
import { check } from '../errors.js';
import { readDemoInputs, readDemoOptions, type ForwardDemoArgs, type ForwardDemoOptions } from './forward-demo.js';
import { readV41Inputs, type ForwardV41Args } from './forward-v41.js';
import { readGateInputs, readGateOptions, signFactor, type GateArgs, type GateInputs, type GateOptions, type GateParams } from './gate.js';

/** What {@link gateOracle} returns, all float64, row-major. */
export interface GateOracleResult {
  /** h + gate·value, [T·M·d], unrounded (masked tokens: h). */
  readonly out: Float64Array;
  /** Σ h·w·key, [T·M]. */
  readonly dot: Float64Array;
  /** 1/√(mean(h²) + ε), [T·M]. */
  readonly rstdH: Float64Array;
  /** 1/√(mean(key²) + ε), [T·M]. */
  readonly rstdKey: Float64Array;
  /** The gate, [T·M]; 0 for masked tokens. */
  readonly gate: Float64Array;
}

/** What {@link forwardV41Oracle} returns. */
export interface ForwardV41OracleResult extends GateOracleResult {
  /** wkv(e) of the e4m3-quantised activation, [T·N], exact (before the bf16 rounding the gate then reads). */
  readonly kv: Float64Array;
}

/** What {@link forwardDemoOracle} returns. */
export interface ForwardDemoOracleResult {
  /** Y = Ṽ + SiLU(conv), [T·M·D]. */
  readonly out: Float64Array;
  /** The gate, [T·M]. */
  readonly gate: Float64Array;
}

/**
 * TileKernels' `calc_diff` in float64 (docs/engram-math.md#tolerances): 1 − 2Σxy / Σ(x² + y²),
 * 0 when both are all zeros. 0 means identical; it grows like the squared relative error.
 */
export function calcDiff(x: ArrayLike<number>, y: ArrayLike<number>): number {
  check(x.length === y.length, 'E_SHAPE', 'y', () => `x and y must have the same length, got ${x.length} and ${y.length}`);
  let xy = 0;
  let sq = 0;
  for (let i = 0; i < x.length; i++) {
    const a = x[i]!;
    const b = y[i]!;
    xy += a * b;
    sq += a * a + b * b;
  }
  return sq === 0 ? 0 : 1 - (2 * xy) / sq;
}

/** 2^⌊log2 a⌋ for a > 0 (exact, by correcting Math.log2's estimate). */
function floorPow2(a: number): number {
  let p = 2 ** Math.floor(Math.log2(a));
  if (p > a) p /= 2;
  else if (p * 2 <= a) p *= 2;
  return p;
}

/** n rounded to an integer, ties to even. */
function roundHalfEven(n: number): number {
  const fl = Math.floor(n);
  const diff = n - fl;
  return diff > 0.5 || (diff === 0.5 && fl % 2 !== 0) ? fl + 1 : fl;
}

/** x rounded to nearest on a grid with `mantissaBits` fraction bits and smallest exponent `minExp` (ties to even). */
function roundToGrid(x: number, mantissaBits: number, minExp: number): number {
  if (x === 0) return x;
  const a = Math.abs(x);
  const step = Math.max(floorPow2(a), 2 ** minExp) * 2 ** -mantissaBits;
  const r = roundHalfEven(a / step) * step;
  return x < 0 ? -r : r;
}

/** The bf16 value nearest to x, in one rounding (ties to even; ±Infinity beyond bf16's range). */
export function roundBf16(x: number): number {
  const r = roundToGrid(x, 7, -126);
  return Math.abs(r) >= 2 ** 128 ? (r < 0 ? -Infinity : Infinity) : r;
}

/** The e4m3fn value nearest to x for |x| ≤ 448 (ties to even; 2^-9 subnormal step). */
export function roundE4m3(x: number): number {
  return roundToGrid(x, 3, -6);
}

/**
 * V4.1's activation quantisation in float64 (docs/engram-math.md#activation-fp8): per block of 32,
 * scale = the smallest power of two ≥ max(amax, 1e-4)/448, value = e4m3(clamp(x/scale, ±448))·scale.
 * Returns the dequantised values and the scales.
 */
export function quantizeActivationOracle(x: ArrayLike<number>): { values: Float64Array; scales: Float64Array } {
  check(x.length % 32 === 0, 'E_SHAPE', 'x', () => `x must hold whole blocks of 32 values, got ${x.length}`);
  const values = new Float64Array(x.length);
  const scales = new Float64Array(x.length / 32);
  for (let b = 0; b < scales.length; b++) {
    let amax = 1e-4;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[b * 32 + j]!));
    // Smallest 2^k with 2^k·448 ≥ amax (products by 448 are exact; amax/448 would round).
    let scale = floorPow2(amax / 448);
    while (scale * 448 < amax) scale *= 2;
    while ((scale / 2) * 448 >= amax) scale /= 2;
    scales[b] = scale;
    for (let j = 0; j < 32; j++) {
      const q = Math.min(448, Math.max(-448, x[b * 32 + j]! / scale));
      values[b * 32 + j] = roundE4m3(q) * scale;
    }
  }
  return { values, scales };
}

/** The e4m3fn value of a code, from its fields (NaN codes excluded by the caller). */
function decodeE4m3(code: number): number {
  const e = (code >> 3) & 15;
  const m = code & 7;
  const v = e === 0 ? m * 2 ** -9 : (1 + m / 8) * 2 ** (e - 7);
  return code & 0x80 ? -v : v;
}

function gateF64(x: GateInputs, p: GateParams): GateOracleResult {
  const { tokens: T, branches: M, dim: d, key, value, weight, tokenMask, keyStride, valueStride, valueOffset } = x;
  const h = x.h.values;
  const out = new Float64Array(T * M * d);
  const dots = new Float64Array(T * M);
  const rstdH = new Float64Array(T * M);
  const rstdKey = new Float64Array(T * M);
  const gates = new Float64Array(T * M);
  for (let t = 0; t < T; t++) {
    for (let m = 0; m < M; m++) {
      const r = t * M + m;
      const hOff = r * d;
      const kOff = t * keyStride + m * d;
      let sh = 0;
      let sk = 0;
      let sd = 0;
      for (let i = 0; i < d; i++) {
        sh += h[hOff + i]! * h[hOff + i]!;
        sk += key[kOff + i]! * key[kOff + i]!;
        sd += h[hOff + i]! * weight[m * d + i]! * key[kOff + i]!;
      }
      rstdH[r] = 1 / Math.sqrt(sh / d + p.eps);
      rstdKey[r] = 1 / Math.sqrt(sk / d + p.eps);
      dots[r] = sd;
      const s = sd * rstdH[r]! * rstdKey[r]! / Math.sqrt(d);
      const masked = tokenMask !== null && tokenMask[t] === 0;
      const mag = Math.sqrt(Math.max(Math.abs(s), p.clamp));
      const signed = mag * signFactor(s, p.sign);
      const g = masked ? 0 : 1 / (1 + Math.exp(-signed));
      gates[r] = g;
      const vOff = valueOffset + t * valueStride;
      for (let i = 0; i < d; i++) out[hOff + i] = masked ? h[hOff + i]! : h[hOff + i]! + g * value[vOff + i]!;
    }
  }
  return { out, dot: dots, rstdH, rstdKey, gate: gates };
}

/** The V4.1 gate ({@link gate} in ./gate.ts) in float64 with the same arguments and options. */
export function gateOracle(args: GateArgs, options?: GateOptions): GateOracleResult {
  const p = readGateOptions(options);
  return gateF64(readGateInputs(args), p);
}

/**
 * {@link forwardV41} in float64: the activation quantised to e4m3 (float64 rules above), kv exact,
 * the gate fed with kv as V4.1 casts it: the float32 result rounded to bf16.
 */
export function forwardV41Oracle(args: ForwardV41Args, options?: GateOptions): ForwardV41OracleResult {
  const p = readGateOptions(options);
  const x = readV41Inputs(args);
  const { tokens: T, branches: M, dim: d, embed: K, rows: N } = x;
  const act = quantizeActivationOracle(x.e).values;
  const kv = new Float64Array(T * N);
  const kvBf16 = new Float32Array(T * N);
  for (let n = 0; n < N; n++) {
    for (let t = 0; t < T; t++) {
      let s = 0;
      for (let k = 0; k < K; k++) {
        const w = decodeE4m3(x.wkv[n * K + k]!) * x.scales[Math.floor(n / 32) * (K / 32) + Math.floor(k / 32)]!;
        s += act[t * K + k]! * w;
      }
      kv[t * N + n] = s;
      // The Linear's float32 result cast to bf16 (torch's .to(bfloat16) of a float32 tensor).
      kvBf16[t * N + n] = roundBf16(Math.fround(s));
    }
  }
  const g = gateF64({
    tokens: T, branches: M, dim: d, h: x.h, key: kvBf16, keyStride: N, value: kvBf16, valueStride: N, valueOffset: M * d,
    weight: x.weight, tokenMask: x.tokenMask,
  }, p);
  return { ...g, kv };
}

function rmsNormF64(x: ArrayLike<number>, xOff: number, w: ArrayLike<number>, wOff: number, n: number, eps: number, out: Float64Array, oOff: number): void {
  let ss = 0;
  for (let i = 0; i < n; i++) ss += x[xOff + i]! * x[xOff + i]!;
  const r = 1 / Math.sqrt(ss / n + eps);
  for (let i = 0; i < n; i++) out[oOff + i] = x[xOff + i]! * r * w[wOff + i]!;
}

/** {@link forwardDemo} in float64 with the same arguments (state included) and options. */
export function forwardDemoOracle(args: ForwardDemoArgs, options?: ForwardDemoOptions): ForwardDemoOracleResult {
  const p = readDemoOptions(options);
  const x = readDemoInputs(args, p);
  const { tokens: T, branches: M, dim: D, embed: Ke, kernel } = x;
  const C = M * D;
  const H = (kernel - 1) * p.dilation;
  const xhat = new Float64Array((H + T) * C);
  xhat.set(x.history);
  const tilde = new Float64Array(T * C);
  const gates = new Float64Array(T * M);
  const v = new Float64Array(D);
  const key = new Float64Array(D);
  const nk = new Float64Array(D);
  const nq = new Float64Array(D);
  const project = (w: Float32Array, wOff: number, b: Float32Array, bOff: number, t: number, out: Float64Array): void => {
    for (let c = 0; c < D; c++) {
      let s = b[bOff + c]!;
      for (let i = 0; i < Ke; i++) s += x.e[t * Ke + i]! * w[wOff + c * Ke + i]!;
      out[c] = s;
    }
  };
  for (let t = 0; t < T; t++) {
    project(x.valueWeight, 0, x.valueBias, 0, t, v);
    for (let m = 0; m < M; m++) {
      project(x.keyWeight, m * D * Ke, x.keyBias, m * D, t, key);
      rmsNormF64(key, 0, x.keyNormWeight, m * D, D, p.normEps, nk, 0);
      rmsNormF64(x.h, (t * M + m) * D, x.queryNormWeight, m * D, D, p.normEps, nq, 0);
      let s = 0;
      for (let i = 0; i < D; i++) s += nk[i]! * nq[i]!;
      s /= Math.sqrt(D);
      const mag = Math.sqrt(Math.max(Math.abs(s), p.clamp));
      const signed = mag * signFactor(s, p.sign);
      const g = 1 / (1 + Math.exp(-signed));
      gates[t * M + m] = g;
      for (let i = 0; i < D; i++) tilde[t * C + m * D + i] = g * v[i]!;
      rmsNormF64(tilde, t * C + m * D, x.convNormWeight, m * D, D, p.convNormEps, xhat, (H + t) * C + m * D);
    }
  }
  const out = new Float64Array(T * C);
  for (let t = 0; t < T; t++) {
    for (let ch = 0; ch < C; ch++) {
      let y = 0;
      for (let j = 0; j < kernel; j++) y += x.convWeight[ch * kernel + j]! * xhat[(H + t - (kernel - 1 - j) * p.dilation) * C + ch]!;
      out[t * C + ch] = tilde[t * C + ch]! + y / (1 + Math.exp(-y));
    }
  }
  return { out, gate: gates };
}
