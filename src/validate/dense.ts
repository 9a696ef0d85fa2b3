import { check, FlashMLAError } from '../errors.js';
import type { DensePlan } from '../plan.js';
import type { DecodeArgs } from '../types.js';
import {
  bind, expectContiguous, expectSoftmaxScale, expectLastDimContiguous, expectShape,
  expectIndexable, expectOptionalBoolean, expectRowsFit, expectTmaFriendly, hostData, isGiven, readInt32Vector, type Downloaded,
} from './common.js';

/** The dense kernel's fixed geometry (docs/flashmla-interface.md#dense-host-layer, docs/flashmla-interface.md#supported-shapes; `config.h`: HEAD_DIM_K 576, PAGE_BLOCK_SIZE 64). */
export const DENSE_D_QK = 576;
export const D_V = 512;
export const DENSE_PAGE_BLOCK_SIZE = 64;

const SPARSE_ONLY = ['attnSink', 'extraKCache', 'extraIndicesInKvcache', 'topkLength', 'extraTopkLength'] as const;

/**
 * Dense decode checks: FlashMLA's Python layer (docs/flashmla-interface.md#python-dispatch), host layer in its order (docs/flashmla-interface.md#dense-host-layer),
 * the dense launcher's exit(1) checks (d == 576) and TMA rules (docs/flashmla-interface.md#tma-alignment), and what FlashMLA
 * does not check: sequence lengths within the block table, used block ids inside the cache.
 * q's values come last, in `validateDecode`.
 */
export function validateDense(args: DecodeArgs, downloaded: Downloaded | undefined): DensePlan {
  for (const k of SPARSE_ONLY) {
    check(!isGiven(args[k]), 'E_UNSUPPORTED', k, `${k} is only for sparse decode (pass indices), it must be omitted for dense decode`);
  }
  check(isGiven(args.blockTable), 'E_VALUE', 'blockTable', 'blockTable is required for dense decode');
  check(isGiven(args.cacheSeqlens), 'E_VALUE', 'cacheSeqlens', 'cacheSeqlens is required for dense decode');

  // docs/flashmla-interface.md#dense-host-layer steps 2-4: dtypes, then layouts.
  const q = bind(args.q, 'q', 4, ['bf16', 'fp16']);
  const dtype = q.view.dtype as 'bf16' | 'fp16';
  const kCache = bind(args.kCache, 'kCache', 4, [dtype]);
  const cacheSeqlens = bind(args.cacheSeqlens, 'cacheSeqlens', 1, ['int32']);
  const blockTable = bind(args.blockTable, 'blockTable', 2, ['int32']);
  expectLastDimContiguous(q, 'q');
  expectLastDimContiguous(kCache, 'kCache');
  expectContiguous(cacheSeqlens, 'cacheSeqlens');
  expectLastDimContiguous(blockTable, 'blockTable');

  // Step 5-6.
  const [b, sQ, hQ, d] = q.view.shape as [number, number, number, number];
  check(d === 576 || d === 512, 'E_SHAPE', 'q', `q's head dim must be 576 or 512, got ${d}`);
  check(d === DENSE_D_QK, 'E_UNSUPPORTED', 'q',
    `dense decode supports d_qk = 576 only (FlashMLA's dense launcher exits the process for ${d})`);
  check(args.headDimV === D_V, 'E_VALUE', 'headDimV', `headDimV must be 512, got ${String(args.headDimV)}`);
  const [numBlocks, pageBlockSize, hK] = kCache.view.shape as [number, number, number, number];
  check(pageBlockSize === DENSE_PAGE_BLOCK_SIZE, 'E_UNSUPPORTED', 'kCache',
    `dense decode needs a page block size of 64 (kCache.shape[1]), got ${pageBlockSize}`);
  check(b > 0, 'E_SHAPE', 'q', 'batch size (q.shape[0]) must be > 0');
  // s_q == 0 or h_q == 0 would make FlashMLA's num_sm_parts divide by zero (docs/flashmla-interface.md#dense-host-layer).
  check(sQ > 0, 'E_SHAPE', 'q', 's_q (q.shape[1]) must be > 0');
  check(hQ > 0, 'E_SHAPE', 'q', 'h_q (q.shape[2]) must be > 0');
  check(hK > 0 && hQ % hK === 0, 'E_SHAPE', 'kCache',
    () => `h_q (${hQ}) must be a multiple of h_k = kCache.shape[2] (${hK})`);
  expectRowsFit(b, sQ, hQ);

  // Step 8.
  expectShape(kCache, 'kCache', [null, DENSE_PAGE_BLOCK_SIZE, hK, d], '(num_blocks, 64, h_k, d_qk)');
  // The kernel reads block 0 for unused table entries and entry 0 of empty requests (docs/flashmla-interface.md#dense-kernel-assumptions).
  check(numBlocks >= 1, 'E_SHAPE', 'kCache', 'kCache needs at least one block (FlashMLA reads block 0 for unused entries)');
  expectShape(cacheSeqlens, 'cacheSeqlens', [b], '(b,)');
  check(blockTable.view.shape[0] === b, 'E_SHAPE', 'blockTable',
    () => `blockTable must have shape (b, max_num_blocks_per_seq) with b = ${b}, got (${blockTable.view.shape.join(', ')})`);
  const maxBlocksPerSeq = blockTable.view.shape[1]!;
  expectIndexable(blockTable, 'blockTable');
  check(maxBlocksPerSeq >= 1, 'E_SHAPE', 'blockTable', 'blockTable needs at least one column');

  // TMA operands of the dense kernel: q, k_cache (and out, which we allocate) (docs/flashmla-interface.md#tma-alignment).
  expectTmaFriendly(q, 'q', 2);
  expectTmaFriendly(kCache, 'kCache', 2);

  const softmaxScale = isGiven(args.softmaxScale) ? expectSoftmaxScale(args.softmaxScale, 'dense') : d ** -0.5;
  expectOptionalBoolean(args.causal, 'causal');
  expectOptionalBoolean(args.isFp8Kvcache, 'isFp8Kvcache');
  const causalArg = args.causal ?? false;

  // What FlashMLA does not check: every used block id and every length must be inside the cache.
  const seqlens = readInt32Vector(cacheSeqlens, downloaded);
  if (seqlens !== null) {
    const capacity = maxBlocksPerSeq * DENSE_PAGE_BLOCK_SIZE;
    for (let i = 0; i < b; i++) {
      const L = seqlens[i]!;
      if (L < 0 || L > capacity) {
        throw new FlashMLAError('E_RANGE',
          `cacheSeqlens[${i}] = ${L} must be in [0, ${capacity}] (blockTable has ${maxBlocksPerSeq} pages of 64 tokens)`, 'cacheSeqlens');
      }
    }
    const table = hostData(blockTable, downloaded);
    if (table !== null) {
      const [s0, s1] = table.view.strides as [number, number];
      for (let i = 0; i < b; i++) {
        const used = Math.ceil(seqlens[i]! / DENSE_PAGE_BLOCK_SIZE);
        for (let j = 0; j < used; j++) {
          const id = table.data[table.view.offset + i * s0 + j * s1]!;
          if (id < 0 || id >= numBlocks) {
            throw new FlashMLAError('E_RANGE',
              `blockTable[${i}][${j}] = ${id} is used (cacheSeqlens[${i}] = ${seqlens[i]}) but outside [0, ${numBlocks})`, 'blockTable');
          }
        }
      }
    }
  }
  return {
    kind: 'dense',
    config: Object.freeze({
      b, sQ, hQ, pageBlockSize, hK, causal: causalArg, isFp8Kvcache: args.isFp8Kvcache ?? false,
      topk: null, extraPageBlockSize: null, extraTopk: null,
      schedule: Object.freeze({ cacheSeqlens: seqlens, topkLength: null, extraTopkLength: null }),
    }),
    dtype, b, sQ, hQ, hK, dQK: d, dV: D_V, numBlocks, pageBlockSize, maxBlocksPerSeq,
    causal: causalArg && sQ > 1, // docs/flashmla-interface.md#dense-host-layer step 7
    softmaxScale, q, kCache, blockTable, cacheSeqlens, seqlens,
  };
}
