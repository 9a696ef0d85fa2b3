export { FlashMLAError, type FlashMLAErrorCode } from './errors.js';
export {
  contiguousStrides, isHostTensor, tensor, zeros,
  type DType, type DeviceTensorMeta, type HostTensor, type Tensor, type TensorMeta,
} from './tensor.js';
export type { BackendChoice, BackendName, DecodeArgs, DecodeOptions, DecodeResult, KvLayout } from './types.js';
export { FlashMLASchedMeta, getMlaMetadata, type SchedConfig } from './sched-meta.js';
export { flashMlaWithKvCache } from './api.js';
export { quantizeKCache } from './kvcache/quantize.js';
export { dequantizeKCache } from './kvcache/dequantize.js';
export { absIndicesToKvcacheIndices } from './kvcache/indices.js';
export { bf16ToF32, f32ToBf16, bf16ArrayToF32, f32ArrayToBf16 } from './formats/bf16.js';
export { fp16ToF32, f32ToFp16, fp16ArrayToF32, f32ArrayToFp16 } from './formats/fp16.js';
export { e4m3ToF32, f32ToE4m3, e8m0ToF32, f32ToE8m0 } from './formats/fp8.js';
export { FlashMLA, type FlashMLAOpenOptions } from './flashmla.js';
export { DeviceTensor } from './native/device-tensor.js';
export {
  backendInfo, doctorReport, formatDoctor, type BackendInfo, type DeviceInfo, type FeatureStatus,
} from './backend-info.js';
export {
  compare, matrixEntries, generateEntry, MATRIX_NAMES, generateDenseCase, generateSparseCase, checkIsAllclose,
  TOLERANCES, oracleDecode, fuzz,
  type CompareOptions, type CompareReport, type CaseResult, type CompareSide, type CustomSide, type MatrixName,
  type DecodeCase, type AllcloseResult, type Tolerance, type FuzzReport,
} from './harness/index.js';
