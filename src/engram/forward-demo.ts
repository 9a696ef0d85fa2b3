/**
 * The paper demo's Engram module after the table lookup (docs/engram-math.md#demo-forward), in
 * float32 as the demo runs it:
 *
 *     k⁽ᵐ⁾ = W_K⁽ᵐ⁾ e + b_K⁽ᵐ⁾,  v = W_V e + b_V
 *     s⁽ᵐ⁾ = Σ RMSNorm(h⁽ᵐ⁾)·RMSNorm(k⁽ᵐ⁾) / √D,   gate = σ(sign(s)·√max(|s|, 1e-6))
 *     Ṽ⁽ᵐ⁾ = gate⁽ᵐ⁾ · v
 *     Y = Ṽ + SiLU(causal depthwise conv(per-branch RMSNorm(Ṽ)))   (kernel 4, dilation 3)
 *
 * The block adds Y to h. A {@link DemoConvState} carries the conv's look-back across calls, so
 * prefill in pieces or token by token gives the same Y as one call over the whole sequence.
 */
import { check, FlashMLAError } from '../errors.js';
import type { HostTensor } from '../tensor.js';
import { signFactor, type GateSign } from './gate.js';
import { checkElements, rankOf, readArgs, readChoice, readCount, readFloat, readNumber, readOptions } from './inputs.js';

/** The short convolution's look-back: the last (kernel−1)·dilation normalised positions of every channel. */
export interface DemoConvState {
  /** Conv channels, M·D (branch-major: channel m·D + c is branch m, element c). */
  readonly channels: number;
  /** Conv kernel size (demo: 4). */
  readonly kernel: number;
  /** Conv dilation (demo: 3, its max n-gram size). */
  readonly dilation: number;
  /** [(kernel−1)·dilation, channels], oldest position first; zeros before the sequence start (the conv's zero padding). */
  readonly history: Float32Array;
}

/** The state at the start of a sequence: (kernel−1)·dilation positions of zeros, as the conv's padding. */
export function demoConvState(channels: number, kernel: number, dilation: number): DemoConvState {
  const c = readCount(channels, 'channels', 1);
  const k = readCount(kernel, 'kernel', 1);
  const dl = readCount(dilation, 'dilation', 1);
  checkElements((k - 1) * dl * c, 'dilation');
  return { channels: c, kernel: k, dilation: dl, history: new Float32Array((k - 1) * dl * c) };
}

/** Numbers of the demo module. */
export interface ForwardDemoOptions {
  /** ε of the key and query RMSNorms. Default: 2^-23 (float32 machine epsilon: the demo's `nn.RMSNorm` has eps=None). */
  readonly normEps?: number;
  /** ε of the ShortConv RMSNorms. Default: 1e-5 (the demo's `norm_eps`). */
  readonly convNormEps?: number;
  /** Conv dilation. Default: 3 (the demo passes its max n-gram size). */
  readonly dilation?: number;
  /** Lower clamp of |s| before the square root. Default: 1e-6. */
  readonly clamp?: number;
  /** Sign convention of the signed square root. Default: 'sign' (the demo's `gate.sign()`; σ(0) at s = 0). */
  readonly sign?: GateSign;
}

/** Inputs of {@link forwardDemo}. T tokens, M branches, D hidden size, Ke = (N−1)·n_embed_per_ngram. */
export interface ForwardDemoArgs {
  /** Concatenated embeddings, [T, Ke], fp32 or bf16. */
  readonly e: HostTensor;
  /** Hidden states, [T, M, D], fp32 or bf16. */
  readonly h: HostTensor;
  /** key_projs weights, [M, D, Ke]. */
  readonly keyWeight: HostTensor;
  /** key_projs biases, [M, D]. */
  readonly keyBias: HostTensor;
  /** value_proj weight, [D, Ke]. */
  readonly valueWeight: HostTensor;
  /** value_proj bias, [D]. */
  readonly valueBias: HostTensor;
  /** norm1 weights (RMSNorm of the keys), [M, D]. */
  readonly keyNormWeight: HostTensor;
  /** norm2 weights (RMSNorm of h), [M, D]. */
  readonly queryNormWeight: HostTensor;
  /** ShortConv norm weights, [M, D]. */
  readonly convNormWeight: HostTensor;
  /** Depthwise conv weight, [M·D, kernel] or torch's [M·D, 1, kernel]. */
  readonly convWeight: HostTensor;
  /** Look-back from the previous call of this sequence. Default: the start of a sequence ({@link demoConvState}). */
  readonly state?: DemoConvState;
}

/** What {@link forwardDemo} returns. */
export interface ForwardDemoResult {
  /** Y = Ṽ + SiLU(conv), [T, M, D] fp32 (the block adds it to h). */
  readonly out: HostTensor<'fp32'>;
  /** The gate per (token, branch), [T, M] fp32. */
  readonly gate: HostTensor<'fp32'>;
  /** The look-back after the last token, for the next call. */
  readonly state: DemoConvState;
}

/** Validated demo options. @internal */
export interface DemoParams {
  readonly normEps: number;
  readonly convNormEps: number;
  readonly dilation: number;
  readonly clamp: number;
  readonly sign: GateSign;
}

/** Reads {@link ForwardDemoOptions} with their defaults. @internal */
export function readDemoOptions(options: ForwardDemoOptions | undefined): DemoParams {
  const o = readOptions(options);
  return {
    normEps: readNumber(o.normEps, 'options.normEps', 2 ** -23, 0, true),
    convNormEps: readNumber(o.convNormEps, 'options.convNormEps', 1e-5, 0, true),
    dilation: readCount(o.dilation, 'options.dilation', 3),
    clamp: readNumber(o.clamp, 'options.clamp', 1e-6, 0, false),
    sign: readChoice(o.sign, 'options.sign', ['copysign', 'sign'] as const, 'sign'),
  };
}

/** The demo's inputs, validated, as contiguous float32 arrays. @internal */
export interface DemoInputs {
  readonly tokens: number;
  readonly branches: number;
  readonly dim: number;
  readonly embed: number;
  readonly kernel: number;
  readonly e: Float32Array;
  readonly h: Float32Array;
  readonly keyWeight: Float32Array;
  readonly keyBias: Float32Array;
  readonly valueWeight: Float32Array;
  readonly valueBias: Float32Array;
  readonly keyNormWeight: Float32Array;
  readonly queryNormWeight: Float32Array;
  readonly convNormWeight: Float32Array;
  /** [M·D, kernel]. */
  readonly convWeight: Float32Array;
  /** [(kernel−1)·dilation · M·D] look-back, oldest first. */
  readonly history: Float32Array;
}

/** Validates the demo's arguments against each other (shapes, dtypes, finite values, the state). @internal */
export function readDemoInputs(args: ForwardDemoArgs, p: DemoParams): DemoInputs {
  const a = readArgs(args);
  const h = readFloat(a.h, 'h', [null, null, null]);
  const [T, M, D] = h.shape as [number, number, number];
  check(M >= 1 && D >= 1, 'E_SHAPE', 'h', () => `h must have at least one branch and D ≥ 1, got (${h.shape.join(', ')})`);
  const e = readFloat(a.e, 'e', [['T', T], null]);
  const Ke = e.shape[1]!;
  check(Ke >= 1, 'E_SHAPE', 'e', 'e must have at least one column');
  const tM = ['M', M] as const;
  const tD = ['D', D] as const;
  const tK = ['Ke', Ke] as const;
  const C = M * D;
  const convDims = rankOf(a.convWeight) === 3 ? [['M·D', C], ['1', 1], null] as const : [['M·D', C], null] as const;
  const convWeight = readFloat(a.convWeight, 'convWeight', convDims);
  const kernel = convWeight.shape[convWeight.shape.length - 1]!;
  check(kernel >= 1, 'E_SHAPE', 'convWeight', 'convWeight must have a kernel of at least 1');
  checkElements(((kernel - 1) * p.dilation + T) * C, 'options.dilation');
  return {
    tokens: T, branches: M, dim: D, embed: Ke, kernel,
    e: e.values, h: h.values,
    keyWeight: readFloat(a.keyWeight, 'keyWeight', [tM, tD, tK]).values,
    keyBias: readFloat(a.keyBias, 'keyBias', [tM, tD]).values,
    valueWeight: readFloat(a.valueWeight, 'valueWeight', [tD, tK]).values,
    valueBias: readFloat(a.valueBias, 'valueBias', [tD]).values,
    keyNormWeight: readFloat(a.keyNormWeight, 'keyNormWeight', [tM, tD]).values,
    queryNormWeight: readFloat(a.queryNormWeight, 'queryNormWeight', [tM, tD]).values,
    convNormWeight: readFloat(a.convNormWeight, 'convNormWeight', [tM, tD]).values,
    convWeight: convWeight.values,
    history: readState(a.state, C, kernel, p.dilation),
  };
}

function readState(s: unknown, channels: number, kernel: number, dilation: number): Float32Array {
  const length = (kernel - 1) * dilation * channels;
  if (s === undefined) return new Float32Array(length);
  check(s !== null && typeof s === 'object', 'E_VALUE', 'state', 'state must be a DemoConvState (see demoConvState)');
  const st = s as DemoConvState;
  check(st.channels === channels && st.kernel === kernel && st.dilation === dilation, 'E_SHAPE', 'state',
    () => `state is for ${st.channels} channels, kernel ${st.kernel}, dilation ${st.dilation}; this call has ${channels}, ${kernel}, ${dilation}`);
  check(st.history instanceof Float32Array && st.history.length === length, 'E_SHAPE', 'state',
    () => `state.history must be a Float32Array of (kernel−1)·dilation·channels = ${length} values`);
  for (let i = 0; i < length; i++) {
    const v = st.history[i]!;
    if (v - v !== 0) throw new FlashMLAError('E_VALUE', `state.history[${i}] is not finite (${v})`, 'state');
  }
  return st.history;
}

const f = Math.fround;

/** torch's RMSNorm in float32: x · rsqrt(mean(x²) + ε) · w, one row of n values. */
function rmsNorm(x: Float32Array, xOff: number, w: Float32Array, wOff: number, n: number, eps: number, out: Float32Array, oOff: number): void {
  let ss = 0;
  for (let i = 0; i < n; i++) ss += f(x[xOff + i]! * x[xOff + i]!);
  const r = f(1 / Math.sqrt(f(f(f(ss) / n) + eps)));
  for (let i = 0; i < n; i++) out[oOff + i] = f(x[xOff + i]! * r) * w[wOff + i]!;
}

/** out[o + c] = fp32(fp32(W[c]·x) + b[c]) for the n rows of W (a Linear with bias; sums in float64). */
function linear(x: Float32Array, xOff: number, w: Float32Array, wOff: number, b: Float32Array, bOff: number, n: number, k: number, out: Float32Array, oOff: number): void {
  for (let c = 0; c < n; c++) {
    const r = wOff + c * k;
    let s = 0;
    for (let i = 0; i < k; i++) s += x[xOff + i]! * w[r + i]!;
    out[oOff + c] = f(s) + b[bOff + c]!;
  }
}

/** Runs the demo module on validated inputs (docs/engram-math.md#demo-forward). @internal */
export function runDemo(x: DemoInputs, p: DemoParams): ForwardDemoResult {
  const { tokens: T, branches: M, dim: D, embed: Ke, kernel } = x;
  const C = M * D;
  const H = (kernel - 1) * p.dilation;
  const normEps = f(p.normEps);
  const convNormEps = f(p.convNormEps);
  const clamp = f(p.clamp);
  const sqrtD = f(Math.sqrt(D));
  // Normalised conv inputs with the look-back in front: row H + t is token t.
  const xhat = new Float32Array((H + T) * C);
  xhat.set(x.history);
  const tilde = new Float32Array(T * C);
  const gates = new Float32Array(T * M);
  const key = new Float32Array(D);
  const value = new Float32Array(D);
  const nk = new Float32Array(D);
  const nq = new Float32Array(D);
  for (let t = 0; t < T; t++) {
    linear(x.e, t * Ke, x.valueWeight, 0, x.valueBias, 0, D, Ke, value, 0);
    for (let m = 0; m < M; m++) {
      linear(x.e, t * Ke, x.keyWeight, m * D * Ke, x.keyBias, m * D, D, Ke, key, 0);
      rmsNorm(key, 0, x.keyNormWeight, m * D, D, normEps, nk, 0);
      rmsNorm(x.h, (t * M + m) * D, x.queryNormWeight, m * D, D, normEps, nq, 0);
      let sd = 0;
      for (let i = 0; i < D; i++) sd += f(nk[i]! * nq[i]!);
      const s = f(f(sd) / sqrtD);
      const mag = f(Math.sqrt(Math.max(Math.abs(s), clamp)));
      const g = f(1 / (1 + Math.exp(-mag * signFactor(s, p.sign))));
      gates[t * M + m] = g;
      const o = t * C + m * D;
      for (let i = 0; i < D; i++) tilde[o + i] = g * value[i]!;
      rmsNorm(tilde, o, x.convNormWeight, m * D, D, convNormEps, xhat, (H + t) * C + m * D);
    }
  }
  // y[t, ch] = Σⱼ w[ch, j] · x̂[t − (kernel−1−j)·dilation, ch] (causal, zero/look-back before 0).
  const out = new Float32Array(T * C);
  for (let t = 0; t < T; t++) {
    for (let ch = 0; ch < C; ch++) {
      let y = 0;
      for (let j = 0; j < kernel; j++) y += x.convWeight[ch * kernel + j]! * xhat[(H + t - (kernel - 1 - j) * p.dilation) * C + ch]!;
      const yf = f(y);
      const silu = f(yf / (1 + Math.exp(-yf)));
      out[t * C + ch] = tilde[t * C + ch]! + silu;
    }
  }
  const state: DemoConvState = { channels: C, kernel, dilation: p.dilation, history: xhat.slice(T * C) };
  return { out: { dtype: 'fp32', shape: [T, M, D], data: out }, gate: { dtype: 'fp32', shape: [T, M], data: gates }, state };
}

/**
 * The paper demo's Engram module from the looked-up embeddings on (docs/engram-math.md#demo-forward),
 * in float32: key/value projections, the RMSNorm'd sqrt-sigmoid gate, and the ShortConv. Pass the
 * returned state to the next call to continue the same sequence. Throws a FlashMLAError naming
 * the argument for any malformed input or state.
 */
export function forwardDemo(args: ForwardDemoArgs, options?: ForwardDemoOptions): ForwardDemoResult {
  const p = readDemoOptions(options);
  return runDemo(readDemoInputs(args, p), p);
}
