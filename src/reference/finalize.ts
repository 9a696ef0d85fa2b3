import { f32ToBf16 } from '../formats/bf16.js';
import { f32ToFp16 } from '../formats/fp16.js';
import type { DecodePlan } from '../plan.js';
import { zeros, type HostTensor } from '../tensor.js';
import type { DecodeResult } from '../types.js';
import { rowLse, type Partial } from './partial.js';

/** Output buffers of a decode: out (b, s_q, h_q, 512) in q's dtype, lse (b, h_q, s_q) fp32 (DESIGN §3). */
export function allocateOutputs(plan: DecodePlan): DecodeResult<HostTensor> {
  const dtype = plan.kind === 'dense' ? plan.dtype : 'bf16';
  return {
    out: zeros(dtype, [plan.b, plan.sQ, plan.hQ, plan.dV]),
    lse: zeros('fp32', [plan.b, plan.hQ, plan.sQ]),
  };
}

/**
 * Writes one query row: out = o / l rounded to q's dtype (RNE), lse natural log; lonely rows get
 * out 0 and lse +Infinity (SPEC §6.2–6.3). With an attention sink (sparse), out is scaled by
 * 1 / (1 + exp(sink − lse)); lse stays without the sink (SPEC §6.3).
 */
export function writeRow(
  res: DecodeResult<HostTensor>, plan: DecodePlan, p: Partial, r: number,
  i: number, s: number, h: number, sink: number | null,
): void {
  const { sQ, hQ, dV } = plan;
  const out = res.out.data as Uint16Array;
  const lse = res.lse.data as Float32Array;
  const lseValue = rowLse(p, r);
  lse[(i * hQ + h) * sQ + s] = lseValue;
  const base = ((i * sQ + s) * hQ + h) * dV;
  if (lseValue === Infinity) {
    out.fill(0, base, base + dV);
    return;
  }
  let factor = 1 / p.l[r]!;
  if (sink !== null) factor /= 1 + Math.exp(sink - lseValue);
  const encode = plan.kind === 'dense' && plan.dtype === 'fp16' ? f32ToFp16 : f32ToBf16;
  const o = p.o;
  for (let x = 0; x < dV; x++) out[base + x] = encode(o[r * dV + x]! * factor);
}
