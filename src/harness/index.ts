export { compare, type CaseError, type CaseResult, type CompareOptions, type CompareProgress, type CompareReport, type CompareSide, type CustomSide, type MatrixSource } from './compare.js';
export { generateEntry, matrixEntries, MATRIX_NAMES, type MatrixEntry, type MatrixName } from './matrix.js';
export { generateDenseCase, generateSparseCase, UNUSED_BLOCK_ID, type DecodeCase, type DenseCaseParams, type SparseCaseParams, type SparseScopeParams } from './cases.js';
export { checkIsAllclose, toFloat64, TOLERANCES, type AllcloseResult, type Tolerance } from './metrics.js';
export { oracleDecode } from './oracle.js';
export { fuzz, type DecodeFn, type FuzzFailure, type FuzzOptions, type FuzzReport } from './fuzz.js';
