import { check, FlashMLAError } from '../errors.js';
import type { Bound, SparsePlan, SparseScope } from '../plan.js';
import type { DecodeArgs, KvLayout } from '../types.js';
import {
  bind, expectContiguous, expectSoftmaxScale, expectIndexable, expectIntStrides, expectLastDimContiguous,
  expectOptionalBoolean, expectRowsFit, expectShape, expectTmaFriendly, hostData, isGiven, readInt32Vector, type Downloaded,
} from './common.js';
import { D_V } from './dense.js';

/** docs/flashmla-interface.md#sparse-host-layer step 8: bytes per token by (d_qk, d_v). */
const LAYOUT_OF_D_QK: Readonly<Record<number, { layout: KvLayout; bytesPerToken: number }>> = {
  576: { layout: 'v32', bytesPerToken: 656 },
  512: { layout: 'model1', bytesPerToken: 584 },
};
/** Index blocks are 64 positions wide in every sparse kernel (docs/flashmla-interface.md#launcher-checks, docs/flashmla-interface.md#sparse-block-ranges, docs/flashmla-interface.md#extra-topk-multiple). */
const TOPK_MULTIPLE = 64;

/**
 * Sparse FP8 decode checks: Python layer (docs/flashmla-interface.md#python-checks), host layer in its order (docs/flashmla-interface.md#sparse-host-layer), the
 * launcher checks that hold on every architecture (docs/flashmla-interface.md#launcher-checks, docs/flashmla-interface.md#sm90-cache-loads, docs/flashmla-interface.md#extra-topk-multiple), and our range rules.
 * q's values come last, in `validateDecode`.
 */
export function validateSparse(args: DecodeArgs, downloaded: Downloaded | undefined): SparsePlan {
  expectOptionalBoolean(args.causal, 'causal');
  check(args.causal !== true, 'E_UNSUPPORTED', 'causal', 'causal must be false for sparse decode (indices given)');
  check(args.isFp8Kvcache === true, 'E_UNSUPPORTED', 'isFp8Kvcache',
    'sparse decode (indices given) needs an FP8 KV cache: pass isFp8Kvcache: true');

  // Step 1-2.
  const q = bind(args.q, 'q', 4, ['bf16']);
  const kv = bind(args.kCache, 'kCache', 4, ['uint8']);
  const indices = bind(args.indices, 'indices', 3, ['int32']);
  const [b, sQ, hQ, dQK] = q.view.shape as [number, number, number, number];
  const [, pageBlockSize, hKV] = kv.view.shape as [number, number, number, number];
  const topk = indices.view.shape[2]!;
  // Step 3.
  check(b > 0, 'E_SHAPE', 'q', 'batch size (q.shape[0]) must be > 0');
  check(sQ > 0, 'E_SHAPE', 'q', 's_q (q.shape[1]) must be > 0');
  check(hQ > 0, 'E_SHAPE', 'q', 'h_q (q.shape[2]) must be > 0');
  expectRowsFit(b, sQ, hQ);
  check(hKV === 1, 'E_UNSUPPORTED', 'kCache', `sparse decode supports only MQA: kCache.shape[2] must be 1, got ${hKV}`);
  const kind = LAYOUT_OF_D_QK[dQK];
  check(kind !== undefined, 'E_SHAPE', 'q', `q's head dim must be 576 (V3.2) or 512 (MODEL1), got ${dQK}`);
  check(args.headDimV === D_V, 'E_VALUE', 'headDimV', `headDimV must be 512, got ${String(args.headDimV)}`);
  check(topk > 0, 'E_SHAPE', 'indices', 'topk (indices.shape[2]) must be > 0');
  // Step 4.
  const hasExtra = isGiven(args.extraKCache);
  if (hasExtra) {
    check(isGiven(args.extraIndicesInKvcache), 'E_VALUE', 'extraIndicesInKvcache',
      'extraIndicesInKvcache is required with extraKCache');
  } else {
    check(!isGiven(args.extraIndicesInKvcache), 'E_VALUE', 'extraIndicesInKvcache',
      'extraIndicesInKvcache needs extraKCache');
    check(!isGiven(args.extraTopkLength), 'E_VALUE', 'extraTopkLength', 'extraTopkLength needs extraKCache');
  }
  // Step 6 (dtypes) and 7 (layouts).
  const topkLength = isGiven(args.topkLength) ? bind(args.topkLength, 'topkLength', 1, ['int32']) : null;
  const attnSink = isGiven(args.attnSink) ? bind(args.attnSink, 'attnSink', 1, ['fp32']) : null;
  const extraKv = hasExtra ? bind(args.extraKCache, 'extraKCache', 4, ['uint8']) : null;
  const extraIndices = hasExtra ? bind(args.extraIndicesInKvcache, 'extraIndicesInKvcache', 3, ['int32']) : null;
  const extraTopkLength = hasExtra && isGiven(args.extraTopkLength)
    ? bind(args.extraTopkLength, 'extraTopkLength', 1, ['int32']) : null;
  expectLastDimContiguous(q, 'q');
  expectLastDimContiguous(kv, 'kCache');
  expectLastDimContiguous(indices, 'indices');
  if (extraKv) expectLastDimContiguous(extraKv, 'extraKCache');
  if (extraIndices) expectLastDimContiguous(extraIndices, 'extraIndicesInKvcache');
  if (topkLength) expectContiguous(topkLength, 'topkLength');
  if (attnSink) expectContiguous(attnSink, 'attnSink');
  if (extraTopkLength) expectContiguous(extraTopkLength, 'extraTopkLength');

  // Step 8 (shapes) and 10 (h_q).
  const { layout, bytesPerToken } = kind;
  expectShape(indices, 'indices', [b, sQ, topk], '(b, s_q, topk)');
  expectIndexable(indices, 'indices');
  if (topkLength) expectShape(topkLength, 'topkLength', [b], '(b,)');
  if (attnSink) expectShape(attnSink, 'attnSink', [hQ], '(h_q,)');
  check(hQ === 64 || hQ === 128, 'E_UNSUPPORTED', 'q', `sparse decode supports h_q = 64 or 128, got ${hQ}`);
  // Launcher checks on every architecture (docs/flashmla-interface.md#launcher-checks, docs/flashmla-interface.md#extra-topk-multiple).
  check(topk % TOPK_MULTIPLE === 0, 'E_UNSUPPORTED', 'indices', `topk (indices.shape[2] = ${topk}) must be a multiple of 64`);
  expectIntStrides(q, 'q');
  expectIntStrides(indices, 'indices');
  // q is loaded by TMA on every sparse path (docs/flashmla-interface.md#tma-alignment).
  expectTmaFriendly(q, 'q', 2);

  const main = validateScope(kv, 'kCache', indices, 'indices', topkLength, 'topkLength', layout, bytesPerToken, downloaded);
  let extra: SparseScope | null = null;
  if (extraKv && extraIndices) {
    const extraTopk = extraIndices.view.shape[2]!;
    expectShape(extraIndices, 'extraIndicesInKvcache', [b, sQ, extraTopk], '(b, s_q, extra_topk)');
    expectIndexable(extraIndices, 'extraIndicesInKvcache');
    if (extraTopkLength) expectShape(extraTopkLength, 'extraTopkLength', [b], '(b,)');
    check(extraKv.view.shape[2] === 1, 'E_UNSUPPORTED', 'extraKCache', 'extraKCache.shape[2] must be 1 (MQA)');
    check(extraTopk > 0 && extraTopk % TOPK_MULTIPLE === 0, 'E_UNSUPPORTED', 'extraIndicesInKvcache',
      `extra_topk (extraIndicesInKvcache.shape[2] = ${extraTopk}) must be a positive multiple of 64`);
    expectIntStrides(extraIndices, 'extraIndicesInKvcache');
    extra = validateScope(extraKv, 'extraKCache', extraIndices, 'extraIndicesInKvcache', extraTopkLength,
      'extraTopkLength', layout, bytesPerToken, downloaded);
  }

  const softmaxScale = isGiven(args.softmaxScale) ? expectSoftmaxScale(args.softmaxScale, 'sparse') : dQK ** -0.5;
  if (attnSink) {
    // ±Infinity are meaningful sinks (docs/flashmla-interface.md#sparse-semantics); NaN would turn whole heads into NaN.
    const sink = hostData(attnSink, downloaded);
    if (sink !== null) {
      for (let h = 0; h < hQ; h++) {
        const v = sink.data[sink.view.offset + h * sink.view.strides[0]!]!;
        check(!Number.isNaN(v), 'E_VALUE', 'attnSink', `attnSink[${h}] is NaN`);
      }
    }
  }

  return {
    kind: 'sparse',
    config: Object.freeze({
      b, sQ, hQ, pageBlockSize, hK: hKV, causal: args.causal ?? false, isFp8Kvcache: true, topk,
      extraPageBlockSize: extra ? extra.pageBlockSize : null, extraTopk: extra ? extra.topk : null,
      schedule: Object.freeze({ cacheSeqlens: null, topkLength: main.lengths, extraTopkLength: extra?.lengths ?? null }),
    }),
    layout, b, sQ, hQ, dQK, dV: D_V, bytesPerToken, softmaxScale, q, main, extra, attnSink,
  };
}

/** One FP8 cache with its indices and optional lengths (main or extra scope). */
function validateScope(
  cache: Bound, cacheName: string, indices: Bound, indicesName: string, lengths: Bound | null, lengthsName: string,
  layout: KvLayout, bytesPerToken: number, downloaded: Downloaded | undefined,
): SparseScope {
  const [numBlocks, pageBlockSize] = cache.view.shape as [number, number];
  expectShape(cache, cacheName, [numBlocks, pageBlockSize, 1, bytesPerToken],
    `(num_blocks, page_block_size, 1, ${bytesPerToken}) for the ${layout === 'v32' ? 'V3.2' : 'MODEL1'} layout`);
  check(pageBlockSize >= 1, 'E_SHAPE', cacheName, `${cacheName}.shape[1] (page block size) must be >= 1`);
  // Invalid (-1) entries are read from block 0 (docs/flashmla-interface.md#sm90-cache-loads).
  check(numBlocks >= 1, 'E_SHAPE', cacheName, `${cacheName} needs at least one block (FlashMLA reads block 0 for -1 indices)`);
  const [stride0, stride1] = cache.view.strides as [number, number];
  check(stride1 === bytesPerToken, 'E_STRIDE', cacheName,
    () => `${cacheName}.strides[1] must be ${bytesPerToken} bytes, got ${stride1}`);
  expectIntStrides(cache, cacheName);
  // A block holds B tokens of 656 bytes (V3.2) or B·576 + B·8 bytes (MODEL1, docs/flashmla-interface.md#model1-cache): a smaller
  // block stride makes blocks overlap.
  check(numBlocks === 1 || stride0 >= pageBlockSize * bytesPerToken, 'E_STRIDE', cacheName,
    () => `${cacheName}.strides[0] = ${stride0} is smaller than one block (${pageBlockSize} × ${bytesPerToken} bytes): blocks would overlap`);
  // 128-bit loads / TMA on every architecture: 16-byte aligned base and block stride (docs/flashmla-interface.md#sm90-cache-loads).
  check(cache.view.offset % 16 === 0, 'E_STRIDE', cacheName,
    () => `${cacheName}.offset must be a multiple of 16 bytes, got ${cache.view.offset}`);
  check(numBlocks === 1 || stride0 % 16 === 0, 'E_STRIDE', cacheName,
    () => `${cacheName}.strides[0] must be a multiple of 16 bytes, got ${stride0}` +
      (layout === 'model1' ? ` (use quantizeKCache's block stride ceil(B·584/576)·576)` : ''));

  const topk = indices.view.shape[2]!;
  const b = indices.view.shape[0]!;
  const sQ = indices.view.shape[1]!;
  const lens = lengths ? readInt32Vector(lengths, downloaded) : null;
  if (lens !== null) {
    for (let i = 0; i < lens.length; i++) {
      const l = lens[i]!;
      if (l < 0 || l > topk) {
        throw new FlashMLAError('E_RANGE', `${lengthsName}[${i}] = ${l} must be in [0, ${topk}]`, lengthsName);
      }
    }
  }
  // Only exactly -1 is invalid; any other value inside the used length is dereferenced (docs/flashmla-interface.md#sparse-semantics).
  const idx = hostData(indices, downloaded);
  if (idx !== null && (lengths === null || lens !== null)) {
    const tokens = numBlocks * pageBlockSize;
    const [s0, s1, s2] = idx.view.strides as [number, number, number];
    for (let i = 0; i < b; i++) {
      const used = lens !== null ? lens[i]! : topk;
      for (let s = 0; s < sQ; s++) {
        const base = idx.view.offset + i * s0 + s * s1;
        for (let p = 0; p < used; p++) {
          const v = idx.data[base + p * s2]!;
          if (v !== -1 && (v < 0 || v >= tokens)) {
            throw new FlashMLAError('E_RANGE',
              `${indicesName}[${i}][${s}][${p}] = ${v} must be -1 or a token of ${cacheName} in [0, ${tokens})`, indicesName);
          }
        }
      }
    }
  }
  return {
    cache, numBlocks, pageBlockSize, blockStride: stride0, indices, topk,
    topkLength: lengths, lengths: lens,
  };
}
