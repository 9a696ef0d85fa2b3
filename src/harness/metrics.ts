import { bf16ToF32 } from '../formats/bf16.js';
import { fp16ToF32 } from '../formats/fp16.js';
import { contiguousStrides, viewOf, type HostTensor } from '../tensor.js';

/** Tolerances of FlashMLA's `check_is_allclose` (docs/flashmla-interface.md#tolerances). */
export interface Tolerance {
  /** Largest allowed |a − b| where a value fails the relative test. */
  absTol: number;
  /** Largest allowed |a − b| / |b|. */
  relTol: number;
  /** Largest allowed 1 − cos(a, b) over the whole tensor. */
  cosDiffTol: number;
}

/** docs/flashmla-interface.md#tolerances table: decode `out` and `lse`, dense and sparse. */
export const TOLERANCES = {
  denseOut: { absTol: 8e-4, relTol: 2.01 / 128, cosDiffTol: 5e-6 },
  denseLse: { absTol: 1e-6, relTol: 8.01 / 65536, cosDiffTol: 1e-7 },
  sparseOut: { absTol: 1e-3, relTol: 2.01 / 128, cosDiffTol: 5e-6 },
  sparseLse: { absTol: 1e-6, relTol: 8.01 / 65536, cosDiffTol: 1e-7 },
  /** Sparse prefill (`tests/test_flash_mla_sparse_prefill.py`): out, and max_logits / lse with the default cos tolerance. */
  prefillOut: { absTol: 8e-4, relTol: 3.01 / 128, cosDiffTol: 7e-6 },
  prefillMaxLogits: { absTol: 1e-6, relTol: 2.01 / 65536, cosDiffTol: 1e-7 },
  prefillLse: { absTol: 1e-6, relTol: 2.01 / 65536, cosDiffTol: 1e-7 },
} as const satisfies Record<string, Tolerance>;

/** The verdict of FlashMLA's `check_is_allclose` on one tensor. */
export interface AllcloseResult {
  /** The tensor. */
  name: string;
  /** Within tolerance, with NaN/Inf in the same places. */
  pass: boolean;
  /** Why it failed, in one line; '' when it passed. */
  reason: string;
  /** Largest |a − b| over finite pairs. */
  maxAbsErr: number;
  /** Largest |a − r| / (|r| + 1e-6) over elements. */
  maxRelErr: number;
  /** 1 − cos(a, b) over the whole tensor. */
  cosDiff: number;
  /** Elements failing both the abs and the rel rule. */
  failed: number;
  /** First failing element: flat index, ans and ref values. */
  firstFailure: { index: number; ans: number; ref: number } | null;
  /** Positions where one side has +inf / −inf / NaN and the other does not. */
  anomalyMismatches: number;
}

/** Elements of a host tensor as float64, in row-major order of its shape (any strides). */
export function toFloat64(t: HostTensor): Float64Array {
  const view = viewOf(t, 'tensor');
  const decode = view.dtype === 'bf16' ? bf16ToF32 : view.dtype === 'fp16' ? fp16ToF32 : (x: number) => x;
  const n = view.shape.reduce((a, b) => a * b, 1);
  const out = new Float64Array(n);
  const cs = contiguousStrides(view.shape);
  for (let e = 0; e < n; e++) {
    let o = view.offset;
    let rem = e;
    for (let d = 0; d < view.shape.length; d++) {
      const k = Math.floor(rem / cs[d]!);
      rem -= k * cs[d]!;
      o += k * view.strides[d]!;
    }
    out[e] = decode(t.data[o]!);
  }
  return out;
}

const anomalyClass = (x: number): number => (Number.isNaN(x) ? 1 : x === Infinity ? 2 : x === -Infinity ? 3 : 0);

/**
 * FlashMLA's `check_is_allclose` (docs/flashmla-interface.md#tolerances): same shape and dtype; ±inf/NaN at the same
 * positions (then zeroed); every element within abs_tol or rel_tol; |cos_diff| ≤ cos_diff_tol.
 */
export function checkIsAllclose(name: string, ans: HostTensor, ref: HostTensor, tol: Tolerance): AllcloseResult {
  const res: AllcloseResult = {
    name, pass: false, reason: '', maxAbsErr: 0, maxRelErr: 0, cosDiff: 0, failed: 0, firstFailure: null, anomalyMismatches: 0,
  };
  if (ans.dtype !== ref.dtype || ans.shape.length !== ref.shape.length || ans.shape.some((d, i) => d !== ref.shape[i])) {
    res.reason = `shape/dtype mismatch: ${ans.dtype}(${ans.shape.join(',')}) vs ${ref.dtype}(${ref.shape.join(',')})`;
    return res;
  }
  const a = toFloat64(ans);
  const r = toFloat64(ref);
  let dot = 0;
  let norms = 0;
  let refNorm = 0;
  for (let i = 0; i < a.length; i++) {
    let x = a[i]!;
    let y = r[i]!;
    const ca = anomalyClass(x);
    const cr = anomalyClass(y);
    if (ca !== cr) res.anomalyMismatches++;
    if (ca !== 0 || cr !== 0) {
      if (ca === cr) continue;
      // Mismatched anomaly: counted above; compare the finite side against 0 like FlashMLA (both zeroed).
      x = 0; y = 0;
    }
    const abs = Math.abs(x - y);
    const rel = abs / (Math.abs(y) + 1e-6);
    if (abs > res.maxAbsErr) res.maxAbsErr = abs;
    if (rel > res.maxRelErr) res.maxRelErr = rel;
    if (!(abs < tol.absTol || rel < tol.relTol)) {
      if (res.failed === 0) res.firstFailure = { index: i, ans: x, ref: y };
      res.failed++;
    }
    dot += x * y;
    norms += x * x + y * y;
    refNorm += y * y;
  }
  res.cosDiff = refNorm < 1e-12 ? 0 : 1 - (2 * dot) / norms;
  if (res.anomalyMismatches > 0) res.reason = `${res.anomalyMismatches} positions where inf/NaN differ`;
  else if (res.failed > 0) {
    const f = res.firstFailure!;
    res.reason = `${res.failed} elements out of tolerance (first at ${f.index}: ${f.ans} vs ${f.ref})`;
  } else if (Math.abs(res.cosDiff) > tol.cosDiffTol) res.reason = `cos_diff ${res.cosDiff.toExponential(3)} > ${tol.cosDiffTol}`;
  res.pass = res.reason === '';
  return res;
}
