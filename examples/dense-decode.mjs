// Dense BF16 decode over a paged KV cache (DeepSeek V3-style MLA, d_qk 576, d_v 512).
// Run after `npm install`: node examples/dense-decode.mjs
import { flashMlaWithKvCache, getMlaMetadata, backendInfo } from 'flashmla-node';
import { f32ToBf16 } from 'flashmla-node/formats';
import { oracleDecode, checkIsAllclose, TOLERANCES } from 'flashmla-node/testing';

const b = 2, sQ = 1, hQ = 16, hK = 1, d = 576, page = 64;
const seqlens = Int32Array.from([100, 300]);
const pagesPerSeq = Math.ceil(Math.max(...seqlens) / page);
const numBlocks = b * pagesPerSeq;

const bf16 = (n) => Uint16Array.from({ length: n }, () => f32ToBf16((Math.random() - 0.5) / 5));
const q = { dtype: 'bf16', shape: [b, sQ, hQ, d], data: bf16(b * sQ * hQ * d) };
const kCache = { dtype: 'bf16', shape: [numBlocks, page, hK, d], data: bf16(numBlocks * page * hK * d) };
// Request i owns pages i*pagesPerSeq ... (any permutation works).
const blockTable = { dtype: 'int32', shape: [b, pagesPerSeq], data: Int32Array.from({ length: b * pagesPerSeq }, (_, j) => j) };
const cacheSeqlens = { dtype: 'int32', shape: [b], data: seqlens };

const args = { q, kCache, blockTable, cacheSeqlens, headDimV: 512, causal: true };
const schedMeta = getMlaMetadata(); // one per decoding step, shared by all layers
const { out, lse } = await flashMlaWithKvCache({ ...args, schedMeta });
console.log((await backendInfo()).backend, out.dtype, out.shape, lse.dtype, lse.shape);

// The same call in float64, judged with FlashMLA's own test tolerances.
const want = oracleDecode({ ...args, schedMeta: getMlaMetadata() });
const ok = checkIsAllclose('out', out, want.out, TOLERANCES.denseOut).pass && checkIsAllclose('lse', lse, want.lse, TOLERANCES.denseLse).pass;
console.log('matches the float64 oracle:', ok);
