import { prefillTestGrid, type PrefillCaseParams } from './prefill-cases.js';

/**
 * Named sparse prefill matrices: 'prefill' (FlashMLA's prefill grid cut to CPU size) and
 * 'prefill-full' (the grid at FlashMLA's sizes, for a GPU).
 */
export type PrefillMatrixName = 'prefill' | 'prefill-full';
/** Every prefill matrix name. */
export const PREFILL_MATRIX_NAMES: readonly PrefillMatrixName[] = ['prefill', 'prefill-full'];

/** Whether a matrix name is a prefill matrix's. */
export const isPrefillMatrix = (name: string): name is PrefillMatrixName => (PREFILL_MATRIX_NAMES as readonly string[]).includes(name);

/** (s_kv, topk) pairs of FlashMLA's prefill grid: regular, irregular, and s_kv < topk (indices past the end). */
const REGULAR: readonly [number, number][] = [[128, 128], [256, 256], [512, 512]];
const IRREGULAR: readonly [number, number][] = [[592, 128], [1840, 256], [1592, 384], [1521, 512]];
const OUT_OF_BOUNDS: readonly [number, number][] = [[95, 128], [153, 256], [114, 384]];

/**
 * `prefill-full`: FlashMLA's sparse prefill correctness grid at its own sizes
 * (`tests/test_flash_mla_sparse_prefill.py` @ 9241ae3, docs/flashmla-interface.md#sparse-prefill):
 * both d_qk and h_q; every (s_kv, topk) pair at s_q 1, 62 and 213; the featured pairs with every
 * sink / topk_length combination at s_q 62 and 213 (FlashMLA's extra `have_sink_lse` loop changes
 * no input, so each case appears once here); the all-invalid corner cases up to s_q 4096 and topk
 * 4096, and s_kv far below topk (32 of 2048, 64 of 8192) at s_q 1 and 1024. Left out: FlashMLA's
 * s_q = 70000 case, which it runs without a correctness check. 376 cases, up to ~2.3 TFLOP each.
 */
function prefillFullMatrix(): PrefillCaseParams[] {
  const out: PrefillCaseParams[] = [];
  for (const dQK of [512, 576] as const) {
    for (const hQ of [128, 64] as const) {
      for (const [sKv, topk] of [...REGULAR, ...IRREGULAR, ...OUT_OF_BOUNDS]) {
        for (const sQ of [1, 62, 213]) out.push({ sQ, sKv, topk, hQ, dQK });
      }
    }
  }
  for (const dQK of [512, 576] as const) {
    for (const hQ of [128, 64] as const) {
      for (const [sKv, topk] of [...IRREGULAR, ...OUT_OF_BOUNDS]) {
        for (const sQ of [62, 213]) {
          for (const sink of [false, true]) for (const withLength of [false, true]) out.push({ sQ, sKv, topk, hQ, dQK, sink, withLength });
        }
      }
    }
  }
  for (const dQK of [512, 576] as const) {
    for (const hQ of [128, 64] as const) {
      for (const [sQ, sKv, topk] of [[1, 128, 128], [1, 256, 256], [1234, 4321, 4096], [4096, 2048, 2048]] as const) {
        out.push({ sQ, sKv, topk, hQ, dQK, allInvalid: true, sink: true, withLength: true });
      }
    }
  }
  for (const dQK of [512, 576] as const) {
    for (const hQ of [128, 64] as const) {
      for (const [sKv, topk] of [[32, 2048], [64, 8192]] as const) {
        for (const sQ of [1, 1024]) out.push({ sQ, sKv, topk, hQ, dQK, sink: true, withLength: true });
      }
    }
  }
  return out;
}

/** The case parameters of a named prefill matrix; entry i of a run with seed s is generated with seed s + i. */
export function prefillMatrixEntries(name: PrefillMatrixName): PrefillCaseParams[] {
  return name === 'prefill' ? prefillTestGrid() : prefillFullMatrix();
}
