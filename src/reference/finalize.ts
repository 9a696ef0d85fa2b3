import { f32ToBf16 } from '../formats/bf16.js';
import { f32ToFp16 } from '../formats/fp16.js';
import type { DecodePlan, PrefillPlan } from '../plan.js';
import { zeros, type HostTensor } from '../tensor.js';
import type { DecodeResult, SparseFwdResult } from '../types.js';
import { rowLse, type Partial } from './partial.js';
import { nativeTileApi, type CpuTileApi } from './tile-native.js';

/** Output buffers of a decode: out (b, s_q, h_q, 512) in q's dtype, lse (b, h_q, s_q) fp32 (docs/architecture.md#public-api). */
export function allocateOutputs(plan: DecodePlan): DecodeResult<HostTensor> {
  const dtype = plan.kind === 'dense' ? plan.dtype : 'bf16';
  return {
    out: zeros(dtype, [plan.b, plan.sQ, plan.hQ, plan.dV]),
    lse: zeros('fp32', [plan.b, plan.hQ, plan.sQ]),
  };
}

/** Where a group's rows go: row r is query token s[r], head h[r] of request i, with sink[r] (sparse) or null. */
export interface RowPlaces {
  i: number;
  s: Int32Array;
  h: Int32Array;
  sink: Float32Array | null;
}

let nativeBf16: CpuTileApi['bf16Rows'] | null | undefined;

/**
 * Writes a group's rows: out = o / l rounded to q's dtype (RNE), lse natural log; lonely rows get
 * out 0 and lse +Infinity (docs/flashmla-interface.md#empty-rows). With an attention sink (sparse), out is scaled by
 * 1 / (1 + exp(sink − lse)); lse stays without the sink (docs/flashmla-interface.md#sparse-semantics). bf16 rows are rounded in the
 * addon when it is loaded (same bits as f32ToBf16): this runs on the calling thread after the
 * last item of a call, so it is serial time. The native runner writes the rows of calls without a
 * sink on its own threads the same way (binding/cpu_runner.cc `Finish`, tested against this).
 */
export function writeRows(res: DecodeResult<HostTensor>, plan: DecodePlan, p: Partial, at: RowPlaces, factors: Float64Array, bases: Float64Array): void {
  const { sQ, hQ, dV } = plan;
  const out = res.out.data as Uint16Array;
  const lse = res.lse.data as Float32Array;
  for (let r = 0; r < p.rows; r++) {
    const s = at.s[r]!, h = at.h[r]!;
    const lseValue = rowLse(p, r);
    lse[(at.i * hQ + h) * sQ + s] = lseValue;
    const base = ((at.i * sQ + s) * hQ + h) * dV;
    if (lseValue === Infinity) {
      out.fill(0, base, base + dV);
      bases[r] = -1;
      continue;
    }
    let factor = 1 / p.l[r]!;
    if (at.sink) factor /= 1 + Math.exp(at.sink[r]! - lseValue);
    factors[r] = factor;
    bases[r] = base;
  }
  scaleRows(p, out, factors, bases, plan.kind === 'dense' && plan.dtype === 'fp16');
}

/** out rows ← o · factors, rounded to bf16 (in the addon when loaded) or fp16; rows with bases[r] < 0 skipped. */
function scaleRows(p: Partial, out: Uint16Array, factors: Float64Array, bases: Float64Array, fp16: boolean): void {
  if (!fp16 && nativeBf16 === undefined) {
    const api = nativeTileApi();
    nativeBf16 = typeof api === 'string' ? null : (api.bf16Rows ?? null);
  }
  if (!fp16 && nativeBf16) nativeBf16(p.o, factors, out, bases, p.rows, p.dv);
  else encodeRows(p.o, factors, out, bases, p.rows, p.dv, fp16 ? f32ToFp16 : f32ToBf16);
}

/** Output buffers of a sparse prefill: out (s_q, h_q, 512) bf16, maxLogits and lse (s_q, h_q) fp32. */
export function allocatePrefillOutputs(plan: PrefillPlan): SparseFwdResult<HostTensor> {
  return {
    out: zeros('bf16', [plan.sQ, plan.hQ, plan.dV]),
    maxLogits: zeros('fp32', [plan.sQ, plan.hQ]),
    lse: zeros('fp32', [plan.sQ, plan.hQ]),
  };
}

const L2E = Math.fround(Math.LOG2E);
const LN2_F = Math.fround(Math.LN2);

/**
 * Writes the rows of prefill token s from its merged partial (base-2 max m, sum L, o), in float
 * as FlashMLA's prefill kernels finish (docs/reference-backend.md#prefill): out = o / (L +
 * 2^(sink·log2 e − m)) rounded to bf16, max_logits = m·ln 2, lse = ln L + m·ln 2; a row with L = 0
 * gets out 0 (whatever its sink), max_logits −Infinity and lse +Infinity. `sinks` holds attnSink
 * (null: none, as a −Infinity sink).
 */
export function writePrefillRows(
  res: SparseFwdResult<HostTensor>, s: number, p: Partial, sinks: Float32Array | null, factors: Float64Array, bases: Float64Array,
): void {
  const maxLogits = res.maxLogits.data as Float32Array;
  const lse = res.lse.data as Float32Array;
  const out = res.out.data as Uint16Array;
  for (let h = 0; h < p.rows; h++) {
    const row = s * p.rows + h;
    const m = p.m[h]!, L = p.l[h]!;
    if (L === 0) {
      maxLogits[row] = -Infinity;
      lse[row] = Infinity;
      out.fill(0, row * p.dv, (row + 1) * p.dv);
      bases[h] = -1;
      continue;
    }
    const sinkTerm = sinks ? Math.fround(2 ** Math.fround(Math.fround(sinks[h]! * L2E) - m)) : 0;
    factors[h] = Math.fround(1 / Math.fround(L + sinkTerm));
    bases[h] = row * p.dv;
    const mLn2 = Math.fround(m * LN2_F);
    maxLogits[row] = mLn2;
    lse[row] = Math.fround(Math.fround(Math.log(L)) + mLn2);
  }
  scaleRows(p, out, factors, bases, false);
}

/** out[at[r] + x] ← encode(o[r·dv + x] · factors[r]) for x < dv, rows with at[r] < 0 skipped (the addon's bf16Rows in TypeScript). */
export function encodeRows(
  o: Float32Array, factors: Float64Array, out: Uint16Array, at: Float64Array, rows: number, dv: number, encode: (x: number) => number,
): void {
  for (let r = 0; r < rows; r++) {
    const base = at[r]!, factor = factors[r]!;
    if (base < 0) continue;
    for (let x = 0; x < dv; x++) out[base + x] = encode(o[r * dv + x]! * factor);
  }
}
