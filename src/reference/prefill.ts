import { bf16ToF32, f32ToBf16 } from '../formats/bf16.js';
import { FlashMLAError } from '../errors.js';
import type { PrefillPlan } from '../plan.js';
import { softmaxScaleLog2 } from '../softmax-scale.js';
import { isHostTensor, zeros, type HostTensor } from '../tensor.js';
import type { CallOptions, SparseFwdArgs, SparseFwdResult } from '../types.js';
import { readDecodeOptions, readSparseFwdArgs } from '../validate/args.js';
import { usedIndex, validateSparseFwd } from '../validate/prefill.js';

/**
 * Sparse prefill on the CPU with the kernels' arithmetic (docs/flashmla-interface.md#sparse-prefill):
 * per query token, positions in blocks of 64; logits in float times smScale·log2(e); an online
 * base-2 softmax whose max starts at −1e30; probabilities rounded to bf16 before they weight V;
 * out = acc / (L + 2^(sink·log2(e) − m)), 0 when L = 0; max_logits = m·ln 2, lse = ln L + m·ln 2.
 */
export async function referenceSparseFwd(callerArgs: SparseFwdArgs, callerOptions?: CallOptions): Promise<SparseFwdResult<HostTensor>> {
  const args = readSparseFwdArgs(callerArgs);
  readDecodeOptions(callerOptions);
  const plan = validateSparseFwd(args);
  for (const [name, b] of [['q', plan.q], ['kv', plan.kv], ['indices', plan.indices], ['attnSink', plan.attnSink], ['topkLength', plan.topkLength]] as const) {
    if (b && !isHostTensor(b.tensor)) {
      throw new FlashMLAError('E_DEVICE', `${name} is a device tensor; the reference backend takes host tensors (download it first)`, name);
    }
  }
  return prefillRows(plan);
}

const BLOCK = 64;
const MAX_INIT = -1e30;
const L2E = Math.fround(Math.LOG2E);
const LN2 = Math.fround(Math.LN2);

function prefillRows(plan: PrefillPlan): SparseFwdResult<HostTensor> {
  const { sQ, hQ, dQK, dV, topk } = plan;
  const out = zeros('bf16', [sQ, hQ, dV]);
  const maxLogits = zeros('fp32', [sQ, hQ]);
  const lse = zeros('fp32', [sQ, hQ]);
  const scale = softmaxScaleLog2('sparse', plan.smScale);
  const idx = { data: (plan.indices.tensor as HostTensor).data, view: plan.indices.view };
  const qData = (plan.q.tensor as HostTensor).data;
  const kvData = (plan.kv.tensor as HostTensor).data;
  const qv = plan.q.view;
  const kvv = plan.kv.view;
  const sinkT = plan.attnSink ? (plan.attnSink.tensor as HostTensor).data : null;
  const keys = new Float32Array(BLOCK * dQK);
  const valid = new Uint8Array(BLOCK);
  const qRow = new Float32Array(dQK);
  const acc = new Float64Array(dV);
  const logits = new Float32Array(BLOCK);
  for (let s = 0; s < sQ; s++) {
    for (let h = 0; h < hQ; h++) {
      const qBase = qv.offset + s * qv.strides[0]! + h * qv.strides[1]!;
      for (let d = 0; d < dQK; d++) qRow[d] = bf16ToF32(qData[qBase + d * qv.strides[2]!]!);
      let m = MAX_INIT;
      let L = 0;
      acc.fill(0);
      const blocks = Math.ceil((plan.lengths ? plan.lengths[s]! : topk) / BLOCK);
      for (let b = 0; b < blocks; b++) {
        let blockMax = -Infinity;
        for (let j = 0; j < BLOCK; j++) {
          const t = usedIndex(plan, idx, s, b * BLOCK + j);
          valid[j] = t >= 0 ? 1 : 0;
          if (t < 0) { logits[j] = -Infinity; continue; }
          const kBase = kvv.offset + t * kvv.strides[0]!;
          let dot = 0;
          for (let d = 0; d < dQK; d++) {
            const k = bf16ToF32(kvData[kBase + d * kvv.strides[2]!]!);
            keys[j * dQK + d] = k;
            dot += qRow[d]! * k;
          }
          logits[j] = dot;
          if (dot > blockMax) blockMax = dot;
        }
        const newM = Math.max(m, Math.fround(blockMax * scale));
        const rescale = Math.fround(2 ** (m - newM));
        for (let x = 0; x < dV; x++) acc[x] = acc[x]! * rescale;
        let sum = 0;
        for (let j = 0; j < BLOCK; j++) {
          if (valid[j] === 0) continue;
          const p = Math.fround(2 ** Math.fround(Math.fround(logits[j]! * scale) - newM));
          sum += p;
          const w = bf16ToF32(f32ToBf16(p));
          for (let x = 0; x < dV; x++) acc[x] = acc[x]! + w * keys[j * dQK + x]!;
        }
        L = Math.fround(Math.fround(L * rescale) + sum);
        m = newM;
      }
      const r = s * hQ + h;
      if (L === 0) {
        maxLogits.data[r] = -Infinity;
        lse.data[r] = Infinity;
        continue;
      }
      const sink = sinkT ? Math.fround(sinkT[plan.attnSink!.view.offset + h * plan.attnSink!.view.strides[0]!]! * L2E) : -Infinity;
      const factor = Math.fround(1 / Math.fround(L + Math.fround(2 ** (sink - m))));
      for (let x = 0; x < dV; x++) out.data[r * dV + x] = f32ToBf16(acc[x]! * factor);
      maxLogits.data[r] = Math.fround(m * LN2);
      lse.data[r] = Math.fround(Math.fround(Math.log(L)) + Math.fround(m * LN2));
    }
  }
  return { out, maxLogits, lse };
}
