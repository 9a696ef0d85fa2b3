import { check, FlashMLAError } from '../errors.js';
import { INT32_MAX, isHostTensor, offsetAt, viewOf, zeros, type HostTensor } from '../tensor.js';
import { readTensor } from '../validate/args.js';


/**
 * FlashMLA's `abs_indices2indices_in_kvcache` (tests/lib.py, docs/flashmla-interface.md#sparse-generator): turns positions inside each
 * request's sequence (b, s_q, topk) into flat cache token ids `blockTable[i][pos / B] · B + pos % B`;
 * −1 stays −1. Returns a new contiguous int32 tensor.
 */
export function absIndicesToKvcacheIndices(
  absIndices: HostTensor<'int32'>, blockTable: HostTensor<'int32'>, pageBlockSize: number,
): HostTensor<'int32'> {
  // Read once: the arguments are snapshots from here on (docs/robustness.md#read-once).
  const abs = readTensor(absIndices, 'absIndices') as HostTensor<'int32'>;
  const bt = readTensor(blockTable, 'blockTable') as HostTensor<'int32'>;
  check(isHostTensor(abs) && isHostTensor(bt), 'E_DEVICE', 'absIndices', 'absIndices and blockTable must be host tensors');
  const iv = viewOf(abs, 'absIndices', 3);
  check(iv.dtype === 'int32', 'E_DTYPE', 'absIndices', `absIndices must be int32, got ${iv.dtype}`);
  const bv = viewOf(bt, 'blockTable', 2);
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
        const pos = abs.data[offsetAt(iv, i, s, p)]!;
        let v = -1;
        if (pos !== -1) {
          const page = Math.floor(pos / pageBlockSize);
          if (pos < 0 || page >= cols) {
            throw new FlashMLAError('E_RANGE',
              `absIndices[${i}][${s}][${p}] = ${pos} must be -1 or a position in [0, ${cols * pageBlockSize})`, 'absIndices');
          }
          const block = bt.data[offsetAt(bv, i, page)]!;
          v = block * pageBlockSize + (pos % pageBlockSize);
          // A negative block id or one whose token ids pass int32 would wrap into a valid-looking id.
          if (block < 0 || v > INT32_MAX) {
            throw new FlashMLAError('E_RANGE',
              `blockTable[${i}][${page}] = ${block} (used by absIndices[${i}][${s}][${p}]) must be a block id in [0, ${Math.floor(INT32_MAX / pageBlockSize)}] ` +
                `so that block · ${pageBlockSize} + row fits int32`, 'blockTable');
          }
        }
        out.data[(i * sQ + s) * topk + p] = v;
      }
    }
  }
  return out;
}
