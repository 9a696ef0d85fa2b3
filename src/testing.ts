/**
 * `flashmla-node/testing`: what checks FlashMLA semantics, for your own tests and benchmarks. The
 * case generators of FlashMLA's decode and prefill tests, the matrices the `compare` CLI runs, a float64 oracle of
 * FlashMLA's semantics, its `check_is_allclose` metrics and tolerances, and the seeded fuzzer of
 * hostile calls.
 */
export { generateEntry, matrixEntries, MATRIX_NAMES, type MatrixEntry, type MatrixName } from './harness/matrix.js';
export {
  generateDenseCase, generateSparseCase, UNUSED_BLOCK_ID,
  type DecodeCase, type DenseCaseParams, type SparseCaseParams, type SparseScopeParams,
} from './harness/cases.js';
export { checkIsAllclose, toFloat64, TOLERANCES, type AllcloseResult, type Tolerance } from './harness/metrics.js';
export { oracleDecode } from './harness/oracle.js';
export {
  generatePrefillCase, invalidIndexCandidates, prefillTestGrid, type PrefillCase, type PrefillCaseParams,
} from './harness/prefill-cases.js';
export { oraclePrefill, oraclePrefill64, type PrefillOracle } from './harness/prefill-oracle.js';
export { prefillMatrixEntries, PREFILL_MATRIX_NAMES, type PrefillMatrixName } from './harness/prefill-matrix.js';
export { fuzzSparseFwd, type PrefillArch, type SparseFwdFn, type SparseFwdFuzzOptions } from './harness/prefill-fuzz.js';
export { fuzz, type DecodeFn, type FuzzDevice, type FuzzFailure, type FuzzOptions, type FuzzReport } from './harness/fuzz.js';
