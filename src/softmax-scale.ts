/**
 * The factor FlashMLA multiplies raw logits by before its base-2 softmax, computed exactly as its
 * host code does (docs/flashmla-interface.md#softmax-scale): both backends use it.
 *
 * - dense (`csrc/api/dense_decode.h`): `softmax_scale` arrives as a float, then
 *   `float(softmax_scale * M_LOG2E)` multiplies it by the double log2(e) and rounds once to float.
 *   Rounding the double scale only after the product differs by 1 ulp for about a quarter of
 *   scales (192^-0.5 is one).
 * - sparse (`csrc/api/sparse_decode.h`): float scale times the float constant 1.44269504.
 */
export function softmaxScaleLog2(kind: 'dense' | 'sparse', softmaxScale: number): number {
  const scale = Math.fround(softmaxScale);
  return kind === 'dense' ? Math.fround(scale * Math.LOG2E) : Math.fround(scale * SPARSE_LOG2E);
}

const SPARSE_LOG2E = Math.fround(1.44269504);
