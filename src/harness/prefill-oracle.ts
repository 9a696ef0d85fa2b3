import { bf16ToF32, f32ToBf16 } from '../formats/bf16.js';
import type { PrefillPlan } from '../plan.js';
import { zeros, type HostTensor } from '../tensor.js';
import type { SparseFwdArgs, SparseFwdResult } from '../types.js';
import { readSparseFwdArgs } from '../validate/args.js';
import { usedIndex, validateSparseFwd } from '../validate/prefill.js';

/** The oracle's outputs in float64 before rounding: what FlashMLA's test compares `out` against. */
export interface PrefillOracle {
  /** s_q, h_q, d_v. */
  shape: [number, number, number];
  /** (s_q, h_q, 512) row-major. */
  out: Float64Array;
  /** (s_q, h_q). */
  maxLogits: Float64Array;
  /** (s_q, h_q), natural log, +Infinity for rows with nothing valid. */
  lse: Float64Array;
}

/**
 * A float64 oracle of sparse prefill (docs/flashmla-interface.md#sparse-prefill), written like
 * FlashMLA's `tests/ref.py` `ref_sparse_attn_fwd`: for each query token the used positions (inside
 * topkLength, index in [0, s_kv)), logits smScale·q·k, max, natural-log LSE, and out =
 * Σ exp(logit − lse') · v[:512] where lse' merges the LSE with the head's sink (the sink scales
 * out only; a row with nothing valid gives 0). Straight loops, no tiling: slow by design.
 */
export function oraclePrefill64(callerArgs: SparseFwdArgs): PrefillOracle {
  const plan = validateSparseFwd(readSparseFwdArgs(callerArgs));
  const { sQ, hQ, dQK, dV } = plan;
  const res: PrefillOracle = {
    shape: [sQ, hQ, dV],
    out: new Float64Array(sQ * hQ * dV), maxLogits: new Float64Array(sQ * hQ), lse: new Float64Array(sQ * hQ),
  };
  const idx = { data: (plan.indices.tensor as HostTensor).data, view: plan.indices.view };
  const sinks = sinkValues(plan);
  for (let s = 0; s < sQ; s++) {
    const rows: Float64Array[] = [];
    for (let p = 0; p < plan.topk; p++) {
      const t = usedIndex(plan, idx, s, p);
      if (t >= 0) rows.push(row(plan, 'kv', [t, 0]));
    }
    for (let h = 0; h < hQ; h++) {
      const qr = row(plan, 'q', [s, h]);
      const logits = rows.map((k) => {
        let dot = 0;
        for (let d = 0; d < dQK; d++) dot += qr[d]! * k[d]!;
        return plan.smScale * dot;
      });
      const r = s * hQ + h;
      if (logits.length === 0) {
        res.maxLogits[r] = -Infinity;
        res.lse[r] = Infinity;
        continue;
      }
      const m = Math.max(...logits);
      let sum = 0;
      for (const l of logits) sum += Math.exp(l - m);
      const lse = m + Math.log(sum);
      res.maxLogits[r] = m;
      res.lse[r] = lse;
      const sink = sinks ? sinks[h]! : -Infinity;
      // log(exp(lse) + exp(sink)); a +Infinity sink sends every weight to 0.
      const lseForOut = sink === -Infinity ? lse : Math.max(lse, sink) + Math.log1p(Math.exp(-Math.abs(lse - sink)));
      if (lseForOut === Infinity) continue;
      const o = res.out.subarray(r * dV, (r + 1) * dV);
      logits.forEach((l, j) => {
        const w = Math.exp(l - lseForOut);
        const v = rows[j]!;
        for (let x = 0; x < dV; x++) o[x] = o[x]! + w * v[x]!;
      });
    }
  }
  return res;
}

/** The oracle rounded to the kernels' output dtypes: out bf16, maxLogits and lse fp32. */
export function oraclePrefill(args: SparseFwdArgs): SparseFwdResult<HostTensor> {
  const o = oraclePrefill64(args);
  const [sQ, hQ, dV] = o.shape;
  const out = zeros('bf16', [sQ, hQ, dV]);
  for (let i = 0; i < o.out.length; i++) out.data[i] = f32ToBf16(o.out[i]!);
  const maxLogits = zeros('fp32', [sQ, hQ]);
  const lse = zeros('fp32', [sQ, hQ]);
  maxLogits.data.set(o.maxLogits);
  lse.data.set(o.lse);
  return { out, maxLogits, lse };
}

function sinkValues(plan: PrefillPlan): Float64Array | null {
  if (!plan.attnSink) return null;
  const t = plan.attnSink.tensor as HostTensor;
  const v = plan.attnSink.view;
  return Float64Array.from({ length: plan.hQ }, (_, h) => t.data[v.offset + h * v.strides[0]!]!);
}

/** Row [a, b, :] of q or kv as float64. */
function row(plan: PrefillPlan, which: 'q' | 'kv', [a, b]: [number, number]): Float64Array {
  const bound = plan[which];
  const t = bound.tensor as HostTensor;
  const v = bound.view;
  const base = v.offset + a * v.strides[0]! + b * v.strides[1]!;
  const r = new Float64Array(plan.dQK);
  for (let d = 0; d < plan.dQK; d++) r[d] = bf16ToF32(t.data[base + d * v.strides[2]!]!);
  return r;
}
