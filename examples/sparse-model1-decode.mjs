// Token-sparse decode over an FP8 MODEL1 (DeepSeek V4) KV cache, with an extra cache and a sink.
// Run after `npm install`: node examples/sparse-model1-decode.mjs
import { flashMlaWithKvCache, getMlaMetadata, quantizeKCache } from 'flashmla-node';
import { f32ToBf16 } from 'flashmla-node/formats';
import { oracleDecode, checkIsAllclose, TOLERANCES } from 'flashmla-node/testing';

const b = 1, sQ = 1, hQ = 64, d = 512, B = 64, numBlocks = 8, topk = 128;
const bf16 = (n) => Uint16Array.from({ length: n }, () => f32ToBf16((Math.random() - 0.5) / 5));

// Quantize a bf16 cache (num_blocks, B, 1, 512) into MODEL1's FP8 blocks (docs/flashmla-interface.md#model1-cache).
const kCache = quantizeKCache({ dtype: 'bf16', shape: [numBlocks, B, 1, d], data: bf16(numBlocks * B * d) }, 'model1');
const extraKCache = quantizeKCache({ dtype: 'bf16', shape: [2, B, 1, d], data: bf16(2 * B * d) }, 'model1');

// Flat token ids (block * B + row); -1 = unused slot.
const indices = { dtype: 'int32', shape: [b, sQ, topk], data: Int32Array.from({ length: topk }, (_, p) => (p < 100 ? p * 5 : -1)) };
const extraIndicesInKvcache = { dtype: 'int32', shape: [b, sQ, 64], data: Int32Array.from({ length: 64 }, (_, p) => p) };
const q = { dtype: 'bf16', shape: [b, sQ, hQ, d], data: bf16(b * sQ * hQ * d) };
const attnSink = { dtype: 'fp32', shape: [hQ], data: new Float32Array(hQ).fill(0.5) };

const args = {
  q, kCache, indices, extraKCache, extraIndicesInKvcache, attnSink,
  topkLength: { dtype: 'int32', shape: [b], data: Int32Array.from([100]) },
  headDimV: 512, isFp8Kvcache: true,
};
const { out, lse } = await flashMlaWithKvCache({ ...args, schedMeta: getMlaMetadata() });
console.log(out.shape, lse.shape);

// The same call in float64, judged with FlashMLA's own test tolerances.
const want = oracleDecode({ ...args, schedMeta: getMlaMetadata() });
const ok = checkIsAllclose('out', out, want.out, TOLERANCES.sparseOut).pass && checkIsAllclose('lse', lse, want.lse, TOLERANCES.sparseLse).pass;
console.log('matches the float64 oracle:', ok);
