import { generateDenseCase, generateSparseCase, type DecodeCase, type DenseCaseParams, type SparseCaseParams, type SparseScopeParams } from './cases.js';

/** One case of a test matrix, before its tensors are generated. */
export type MatrixEntry =
  | { kind: 'dense'; params: DenseCaseParams }
  | { kind: 'sparse'; params: SparseCaseParams };

/** Named case matrices: 'quick' (a few seconds on a CPU) and 'full' (FlashMLA's test grids, for a GPU). */
export type MatrixName = 'quick' | 'full';
/** Every matrix name. */
export const MATRIX_NAMES: readonly MatrixName[] = ['quick', 'full'];

/** Generates an entry's tensors; entry i of a matrix run with seed s uses seed s + i. */
export function generateEntry(entry: MatrixEntry, seed: number): DecodeCase {
  return entry.kind === 'dense' ? generateDenseCase(entry.params, seed) : generateSparseCase(entry.params, seed);
}

const dense = (params: DenseCaseParams): MatrixEntry => ({ kind: 'dense', params });
const sparse = (params: SparseCaseParams): MatrixEntry => ({ kind: 'sparse', params });
const scope = (sK: number, topk: number, blockSize: number, extra: Partial<SparseScopeParams> = {}): SparseScopeParams =>
  ({ sK, topk, blockSize, ...extra });

/**
 * `quick`: every feature of docs/flashmla-interface.md#test-generators once, at sizes the float64 oracle runs in seconds on two
 * cores (dense h_k > 1, varlen, zero lengths, causal, fp16, strided q/cache; V3.2 and MODEL1 with
 * sinks, topk_length, extra caches, all-invalid rows, page sizes 2/53/61/64/69/576).
 */
function quickMatrix(): MatrixEntry[] {
  return [
    // docs/flashmla-interface.md#dense-generator dense: h_q from {1, 3, 9, 63, 64, 126, 128}, h_k from {1, 2, 3, 8}, s_k from {20, 140, 4096}.
    dense({ b: 2, sQ: 1, sK: 140, hQ: 64, hK: 1, varlen: false, causal: false }),
    dense({ b: 2, sQ: 1, sK: 20, hQ: 1, hK: 1, varlen: false, causal: false }),
    dense({ b: 2, sQ: 2, sK: 140, hQ: 16, hK: 2, varlen: true, causal: true }),
    dense({ b: 3, sQ: 4, sK: 140, hQ: 9, hK: 3, varlen: true, causal: true }),
    dense({ b: 1, sQ: 1, sK: 4096, hQ: 3, hK: 1, varlen: false, causal: false }),
    dense({ b: 4, sQ: 2, sK: 140, hQ: 8, hK: 8, varlen: true, causal: true, zeroSeqlen: true }),
    dense({ b: 6, sQ: 1, sK: 20, hQ: 126, hK: 2, varlen: true, causal: false }),
    dense({ b: 2, sQ: 2, sK: 300, hQ: 16, hK: 1, varlen: true, causal: true, dtype: 'fp16' }),
    dense({ b: 2, sQ: 1, sK: 140, hQ: 63, hK: 1, varlen: true, causal: false, nonContiguous: true }),
    // docs/flashmla-interface.md#sparse-generator V3.2 (d_qk 576): sinks; no topk_length or extra cache on this layout (docs/flashmla-interface.md#supported-shapes).
    sparse({ b: 2, sQ: 1, hQ: 64, dQK: 576, main: scope(512, 64, 2, { varlen: true }), sink: true }),
    sparse({ b: 2, sQ: 3, hQ: 128, dQK: 576, main: scope(512, 64, 69), sink: true }),
    sparse({ b: 1, sQ: 1, hQ: 64, dQK: 576, main: scope(1024, 576, 61, { varlen: true }), sink: true }),
    sparse({ b: 1, sQ: 1, hQ: 64, dQK: 576, main: scope(2046, 2048, 576) }),
    sparse({ b: 2, sQ: 1, hQ: 64, dQK: 576, main: scope(512, 64, 64, { allInvalid: true }), sink: true }),
    sparse({ b: 4, sQ: 1, hQ: 64, dQK: 576, main: scope(512, 64, 64, { varlen: true, zeroSeqlen: true }) }),
    // MODEL1 (d_qk 512): topk_length, extra cache + extra_topk_length, sinks.
    sparse({ b: 2, sQ: 1, hQ: 64, dQK: 512, main: scope(512, 64, 64, { withLength: true }), extra: scope(512, 64, 2, { withLength: true }), sink: true }),
    sparse({ b: 2, sQ: 3, hQ: 128, dQK: 512, main: scope(1024, 64, 61, { varlen: true }), extra: scope(512, 64, 69), sink: true }),
    sparse({ b: 2, sQ: 1, hQ: 64, dQK: 512, main: scope(650, 576, 53, { withLength: true }), sink: true }),
    sparse({ b: 2, sQ: 1, hQ: 64, dQK: 512, main: scope(512, 64, 2, { allInvalid: true }), extra: scope(1024, 128, 64, { varlen: true }), sink: true }),
    sparse({ b: 4, sQ: 1, hQ: 64, dQK: 512, main: scope(512, 64, 64, { varlen: true, zeroSeqlen: true, withLength: true }), extra: scope(512, 64, 2, { allInvalid: true }) }),
    sparse({ b: 1, sQ: 1, hQ: 64, dQK: 512, main: scope(2046, 2048, 576, { varlen: true }), extra: scope(1024, 576, 61, { withLength: true }), sink: true }),
  ];
}

/** The (s_k, topk, block_size) triples of FlashMLA's sparse decode grid (docs/flashmla-interface.md#sparse-generator). */
const SPARSE_TRIPLES: readonly [number, number, number][] = [
  [512, 64, 2], [512, 64, 64], [512, 64, 69], [1024, 576, 2], [1024, 576, 61], [2046, 2048, 2], [2046, 2048, 64], [2046, 2048, 576],
];

/**
 * `full`: FlashMLA's correctness grids (docs/flashmla-interface.md#dense-generator, docs/flashmla-interface.md#sparse-generator), thinned so the reference backend can
 * keep up with a GPU: every (h_q, h_k) pair of the dense grid at every s_k and s_q, plain and
 * varlen+causal; every sparse (s_k, topk, block) triple for both layouts and both head counts,
 * with an extra scope on MODEL1; the corner cases (b = 64/74/128, all-invalid × zero-length ×
 * sink combinations, blocks 53 and 61). Batch sizes shrink as the work per request grows.
 */
function fullMatrix(): MatrixEntry[] {
  const out: MatrixEntry[] = [];
  const hPairs: [number, number][] = [];
  for (const hQ of [1, 3, 9, 63, 64, 126, 128]) for (const hK of [1, 2, 3, 8]) if (hQ % hK === 0) hPairs.push([hQ, hK]);
  for (const [hQ, hK] of hPairs) {
    for (const sK of [20, 140, 4096]) {
      for (const sQ of [1, 2, 4]) {
        const b = sK === 4096 ? (hQ >= 63 ? 1 : 2) : 6;
        out.push(dense({ b, sQ, sK, hQ, hK, varlen: false, causal: false }));
        out.push(dense({ b, sQ, sK, hQ, hK, varlen: true, causal: true }));
      }
    }
  }
  // Corner cases (docs/flashmla-interface.md#dense-generator): many requests, zero lengths, fp16, strided inputs.
  out.push(dense({ b: 128, sQ: 2, sK: 140, hQ: 64, hK: 1, varlen: true, causal: true, zeroSeqlen: true }));
  out.push(dense({ b: 64, sQ: 1, sK: 140, hQ: 128, hK: 1, varlen: true, causal: false }));
  out.push(dense({ b: 4, sQ: 2, sK: 4096, hQ: 16, hK: 2, varlen: true, causal: true, zeroSeqlen: true }));
  for (const [hQ, hK] of [[128, 1], [9, 3], [64, 8]] as const) {
    out.push(dense({ b: 4, sQ: 2, sK: 140, hQ, hK, varlen: true, causal: true, dtype: 'fp16' }));
    out.push(dense({ b: 2, sQ: 2, sK: 140, hQ, hK, varlen: true, causal: true, nonContiguous: true }));
  }

  SPARSE_TRIPLES.forEach(([sK, topk, blockSize], t) => {
    const b = topk >= 2048 ? 2 : topk >= 576 ? 4 : 16;
    const sQ = t % 2 === 0 ? 1 : 3;
    const [eK, eTopk, eBlock] = SPARSE_TRIPLES[(t + 3) % SPARSE_TRIPLES.length]!;
    for (const hQ of [64, 128] as const) {
      out.push(sparse({ b, sQ, hQ, dQK: 576, main: scope(sK, topk, blockSize, { varlen: true }), sink: true }));
      out.push(sparse({
        b, sQ, hQ, dQK: 512,
        main: scope(sK, topk, blockSize, { varlen: true, withLength: t % 2 === 1 }),
        extra: scope(eK, Math.min(eTopk, 576), eBlock, { varlen: true, withLength: t % 2 === 0 }),
        sink: true,
      }));
    }
  });
  // b = 74 without varlen (docs/flashmla-interface.md#sparse-generator "non-varlen for b=74").
  out.push(sparse({ b: 74, sQ: 1, hQ: 64, dQK: 576, main: scope(512, 64, 64), sink: true }));
  out.push(sparse({ b: 74, sQ: 1, hQ: 128, dQK: 512, main: scope(512, 64, 2, { withLength: true }), extra: scope(512, 64, 64), sink: true }));
  // Corner cases: blocks 61 and 53, s_q = 3, every combination of all-invalid / zero length / sink.
  for (const dQK of [576, 512] as const) {
    for (const [sK, topk, blockSize] of [[512, 64, 61], [650, 576, 53]] as const) {
      out.push(sparse({ b: 4, sQ: 3, hQ: 64, dQK, main: scope(sK, topk, blockSize, { varlen: true }), sink: true }));
    }
    for (let combo = 1; combo < 8; combo++) {
      const allInvalid = (combo & 1) !== 0;
      const zeroSeqlen = (combo & 2) !== 0;
      const sink = (combo & 4) !== 0;
      const main = scope(512, 64, 64, { varlen: true, allInvalid, zeroSeqlen, withLength: dQK === 512 });
      out.push(sparse(dQK === 576
        ? { b: 4, sQ: 3, hQ: 128, dQK, main, sink }
        : { b: 4, sQ: 3, hQ: 128, dQK, main, extra: scope(512, 64, 2, { varlen: true, allInvalid, zeroSeqlen }), sink }));
    }
  }
  return out;
}

/** The entries of a named matrix (docs/flashmla-interface.md#test-generators). */
export function matrixEntries(name: MatrixName): MatrixEntry[] {
  return name === 'quick' ? quickMatrix() : fullMatrix();
}
