import { bf16ToF32, f32ToBf16 } from '../formats/bf16.js';
import { fp16ToF32, f32ToFp16 } from '../formats/fp16.js';
import { dequantizeKCache } from '../kvcache/dequantize.js';
import type { DensePlan, DecodePlan, SparsePlan, SparseScope } from '../plan.js';
import { offsetAt, viewOf, zeros, type HostTensor, type View } from '../tensor.js';
import type { DecodeArgs, DecodeResult } from '../types.js';
import { validateDecode } from '../validate/index.js';

/**
 * A float64 oracle of docs/flashmla-interface.md#reference-semantics: straightforward loops, one query row at a time, no tiling, no
 * online softmax, the FP8 caches dequantised whole by `dequantizeKCache`. Slow by design: it is
 * the yardstick the reference and the CUDA backend are judged against.
 */
export function oracleDecode(args: DecodeArgs): DecodeResult<HostTensor> {
  const plan = validateDecode(args);
  return plan.kind === 'dense' ? oracleDense(plan) : oracleSparse(plan);
}

function outputs(plan: DecodePlan, dtype: 'bf16' | 'fp16'): DecodeResult<HostTensor> {
  return { out: zeros(dtype, [plan.b, plan.sQ, plan.hQ, plan.dV]), lse: zeros('fp32', [plan.b, plan.hQ, plan.sQ]) };
}

/** softmax-weighted sum of value rows in float64; returns natural-log lse (+inf when empty). */
function attend(logits: number[], values: Float64Array[], dV: number, outRow: Float64Array): number {
  if (logits.length === 0) { outRow.fill(0); return Infinity; }
  const m = Math.max(...logits);
  let sum = 0;
  for (const w of logits) sum += Math.exp(w - m);
  outRow.fill(0);
  logits.forEach((w, t) => {
    const p = Math.exp(w - m) / sum;
    const v = values[t]!;
    for (let x = 0; x < dV; x++) outRow[x] = outRow[x]! + p * v[x]!;
  });
  return m + Math.log(sum);
}

function readRow(t: HostTensor, decode: (x: number) => number, base: number, n: number): Float64Array {
  const r = new Float64Array(n);
  for (let d = 0; d < n; d++) r[d] = decode(t.data[base + d]!);
  return r;
}

function oracleDense(plan: DensePlan): DecodeResult<HostTensor> {
  const res = outputs(plan, plan.dtype);
  const decode = plan.dtype === 'fp16' ? fp16ToF32 : bf16ToF32;
  const encode = plan.dtype === 'fp16' ? f32ToFp16 : f32ToBf16;
  const q = plan.q.tensor as HostTensor;
  const kc = plan.kCache.tensor as HostTensor;
  const bt = plan.blockTable.tensor as HostTensor;
  const hpk = plan.hQ / plan.hK;
  const outRow = new Float64Array(plan.dV);
  for (let i = 0; i < plan.b; i++) {
    const L = plan.seqlens![i]!;
    for (let kh = 0; kh < plan.hK; kh++) {
      const keys: Float64Array[] = [];
      for (let t = 0; t < L; t++) {
        const block = bt.data[offsetAt(plan.blockTable.view, i, Math.floor(t / 64))]!;
        keys.push(readRow(kc, decode, offsetAt(plan.kCache.view, block, t % 64, kh, 0), plan.dQK));
      }
      for (let j = 0; j < hpk; j++) {
        const h = kh * hpk + j;
        for (let s = 0; s < plan.sQ; s++) {
          const qr = readRow(q, decode, offsetAt(plan.q.view, i, s, h, 0), plan.dQK);
          const visible = plan.causal ? Math.max(0, Math.min(L, L - plan.sQ + s + 1)) : L;
          const logits: number[] = [];
          for (let t = 0; t < visible; t++) {
            let dot = 0;
            for (let d = 0; d < plan.dQK; d++) dot += qr[d]! * keys[t]![d]!;
            logits.push(plan.softmaxScale * dot);
          }
          const lse = attend(logits, keys, plan.dV, outRow);
          (res.lse.data as Float32Array)[(i * plan.hQ + h) * plan.sQ + s] = lse;
          const o = ((i * plan.sQ + s) * plan.hQ + h) * plan.dV;
          for (let x = 0; x < plan.dV; x++) (res.out.data as Uint16Array)[o + x] = encode(outRow[x]!);
        }
      }
    }
  }
  return res;
}

interface Dequantized { scope: SparseScope; deq: HostTensor; view: View }

function dequantized(plan: SparsePlan, scope: SparseScope): Dequantized {
  const deq = dequantizeKCache(scope.cache.tensor as HostTensor<'uint8'>, plan.layout);
  return { scope, deq, view: viewOf(deq, 'dequantized') };
}

function gatherScope(plan: SparsePlan, { scope, deq, view }: Dequantized, i: number, s: number): Float64Array[] {
  const idx = scope.indices.tensor as HostTensor;
  const used = scope.lengths ? scope.lengths[i]! : scope.topk;
  const rows: Float64Array[] = [];
  for (let p = 0; p < used; p++) {
    const v = idx.data[offsetAt(scope.indices.view, i, s, p)]!;
    if (v === -1) continue;
    const block = Math.floor(v / scope.pageBlockSize);
    rows.push(readRow(deq, bf16ToF32, offsetAt(view, block, v % scope.pageBlockSize, 0, 0), plan.dQK));
  }
  return rows;
}

function oracleSparse(plan: SparsePlan): DecodeResult<HostTensor> {
  const res = outputs(plan, 'bf16');
  const q = plan.q.tensor as HostTensor;
  const sink = plan.attnSink ? (plan.attnSink.tensor as HostTensor) : null;
  const outRow = new Float64Array(plan.dV);
  const main = dequantized(plan, plan.main);
  const extra = plan.extra ? dequantized(plan, plan.extra) : null;
  for (let i = 0; i < plan.b; i++) {
    for (let s = 0; s < plan.sQ; s++) {
      const keys = gatherScope(plan, main, i, s);
      if (extra) keys.push(...gatherScope(plan, extra, i, s));
      for (let h = 0; h < plan.hQ; h++) {
        const qr = readRow(q, bf16ToF32, offsetAt(plan.q.view, i, s, h, 0), plan.dQK);
        const logits = keys.map((k) => {
          let dot = 0;
          for (let d = 0; d < plan.dQK; d++) dot += qr[d]! * k[d]!;
          return plan.softmaxScale * dot;
        });
        const lse = attend(logits, keys, plan.dV, outRow);
        (res.lse.data as Float32Array)[(i * plan.hQ + h) * plan.sQ + s] = lse;
        // Sink: out *= 1 / (1 + exp(sink − lse)); lonely rows stay 0 (docs/flashmla-interface.md#sparse-semantics).
        const sv = sink ? sink.data[offsetAt(plan.attnSink!.view, h)]! : -Infinity;
        const factor = lse === Infinity ? 0 : 1 / (1 + Math.exp(sv - lse));
        const o = ((i * plan.sQ + s) * plan.hQ + h) * plan.dV;
        for (let x = 0; x < plan.dV; x++) (res.out.data as Uint16Array)[o + x] = f32ToBf16(outRow[x]! * factor);
      }
    }
  }
  return res;
}
