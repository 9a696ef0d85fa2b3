import { check, FlashMLAError } from '../errors.js';
import { offsetAt, viewOf, zeros, type HostTensor } from '../tensor.js';

/**
 * FlashMLA's `abs_indices2indices_in_kvcache` (tests/lib.py, SPEC §7.3): turns positions inside each
 * request's sequence (b, s_q, topk) into flat cache token ids `blockTable[i][pos / B] · B + pos % B`;
 * −1 stays −1. Returns a new contiguous int32 tensor.
 */
export function absIndicesToKvcacheIndices(
  absIndices: HostTensor<'int32'>, blockTable: HostTensor<'int32'>, pageBlockSize: number,
): HostTensor<'int32'> {
  const iv = viewOf(absIndices, 'absIndices', 3);
  check(iv.dtype === 'int32', 'E_DTYPE', 'absIndices', `absIndices must be int32, got ${iv.dtype}`);
  const bv = viewOf(blockTable, 'blockTable', 2);
  check(bv.dtype === 'int32', 'E_DTYPE', 'blockTable', `blockTable must be int32, got ${bv.dtype}`);
  check(Number.isSafeInteger(pageBlockSize) && pageBlockSize > 0, 'E_VALUE', 'pageBlockSize',
    `pageBlockSize must be a positive integer, got ${String(pageBlockSize)}`);
  const [b, sQ, topk] = iv.shape as [number, number, number];
  check(bv.shape[0] === b, 'E_SHAPE', 'blockTable',
    () => `blockTable.shape[0] must equal absIndices.shape[0] (${b}), got ${bv.shape[0]}`);
  const cols = bv.shape[1]!;
  const out = zeros('int32', [b, sQ, topk]);
  for (let i = 0; i < b; i++) {
    for (let s = 0; s < sQ; s++) {
      for (let p = 0; p < topk; p++) {
        const pos = absIndices.data[offsetAt(iv, i, s, p)]!;
        let v = -1;
        if (pos !== -1) {
          const page = Math.floor(pos / pageBlockSize);
          if (pos < 0 || page >= cols) {
            throw new FlashMLAError('E_RANGE',
              `absIndices[${i}][${s}][${p}] = ${pos} must be -1 or a position in [0, ${cols * pageBlockSize})`, 'absIndices');
          }
          v = blockTable.data[offsetAt(bv, i, page)]! * pageBlockSize + (pos % pageBlockSize);
        }
        out.data[(i * sQ + s) * topk + p] = v;
      }
    }
  }
  return out;
}
