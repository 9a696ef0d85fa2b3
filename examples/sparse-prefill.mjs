// Token-sparse prefill (DeepSeek V3.2, d_qk 576): each prompt token attends to its own top-k tokens.
// Run after `npm install`: node examples/sparse-prefill.mjs
import { flashMlaSparseFwd } from 'flashmla-node';
import { f32ToBf16 } from 'flashmla-node/formats';
import { oraclePrefill, checkIsAllclose, TOLERANCES } from 'flashmla-node/testing';

const sQ = 4, sKv = 300, hQ = 64, d = 576, topk = 128;
const bf16 = (n) => Uint16Array.from({ length: n }, () => f32ToBf16((Math.random() - 0.5) / 5));

const q = { dtype: 'bf16', shape: [sQ, hQ, d], data: bf16(sQ * hQ * d) };
const kv = { dtype: 'bf16', shape: [sKv, 1, d], data: bf16(sKv * d) };
// Token s attends to the tokens up to its own position (causal, as in a prompt), at most topk of them;
// -1 (or any id outside [0, s_kv)) marks an unused slot.
const pos = (s) => sKv - sQ + s;
const indices = { dtype: 'int32', shape: [sQ, 1, topk], data: new Int32Array(sQ * topk) };
for (let s = 0; s < sQ; s++) {
  for (let p = 0; p < topk; p++) indices.data[s * topk + p] = p <= pos(s) ? pos(s) - 2 * p : -1;
}
const attnSink = { dtype: 'fp32', shape: [hQ], data: new Float32Array(hQ).fill(0.5) };

const args = { q, kv, indices, smScale: d ** -0.5, attnSink };
const { out, maxLogits, lse } = await flashMlaSparseFwd(args);
console.log(out.shape, maxLogits.shape, lse.shape);

// The same call in float64, judged with FlashMLA's own test tolerances.
const want = oraclePrefill(args);
const ok = checkIsAllclose('out', out, want.out, TOLERANCES.prefillOut).pass
  && checkIsAllclose('maxLogits', maxLogits, want.maxLogits, TOLERANCES.prefillMaxLogits).pass
  && checkIsAllclose('lse', lse, want.lse, TOLERANCES.prefillLse).pass;
console.log('matches the float64 oracle:', ok);
