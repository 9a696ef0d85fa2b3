/**
 * flashmla-node: DeepSeek's FlashMLA decode attention for Node.js.
 *
 * The root export is the decode API: the call, its sched meta, backends and instances, device
 * tensors, errors, reports, tensors and KV-cache helpers. Number-format conversions are in
 * `flashmla-node/formats`; case generators, the float64 oracle, FlashMLA's tolerances and the
 * fuzzer in `flashmla-node/testing`.
 *
 * Names follow FlashMLA's Python API in camelCase (`flash_mla_with_kvcache` → `flashMlaWithKvCache`,
 * `k_cache` → `kCache`, `is_fp8_kvcache` → `isFp8Kvcache`, `extra_indices_in_kvcache` →
 * `extraIndicesInKvcache`): where FlashMLA writes `kvcache` as one word the name keeps it, where it
 * writes `k_cache` or `kv cache` the name has `KCache` / `KvCache`. One deliberate rename:
 * `tile_scheduler_metadata` is `schedMeta`, as FlashMLA's own newer API calls it.
 */
export { FlashMLAError, type FlashMLAErrorCode } from './errors.js';
export {
  contiguousStrides, isHostTensor, tensor, zeros,
  type DataOf, type DType, type DeviceTensorMeta, type HostTensor, type Tensor, type TensorMeta,
} from './tensor.js';
export type {
  AutoDecodeOptions, BackendChoice, BackendName, CudaDecodeOptions, DecodeArgs, DecodeOptions, DecodeResult, HostDecodeArgs,
  HostSparseFwdArgs, InstanceDecodeOptions, InstanceSparseFwdOptions, KvLayout, ReferenceDecodeOptions, SparseFwdArgs, SparseFwdOptions,
  SparseFwdResult,
} from './types.js';
export { FlashMLASchedMeta, getMlaMetadata, type SchedConfig } from './sched-meta.js';
export { flashMlaSparseFwd, flashMlaWithKvCache } from './api.js';
export { warmup, type WarmupOptions, type WarmupReport } from './reference/warmup.js';
export type { Tier as ReferenceTier } from './reference/kernels.js';
export { quantizeKCache } from './kvcache/quantize.js';
export { dequantizeKCache } from './kvcache/dequantize.js';
export { absIndicesToKvcacheIndices } from './kvcache/indices.js';
export { FlashMLA, type FlashMLAOpenOptions } from './flashmla.js';
export { DeviceTensor } from './device-tensor.js';
export type { CudaEvent } from './cuda/event.js';
export type { CudaGraph } from './cuda/graph.js';
export {
  backendInfo, doctorReport, formatDoctor, type BackendInfo, type BackendInfoOptions, type DeviceInfo, type FeatureStatus,
} from './backend-info.js';
export {
  compare,
  type CaseError, type CaseResult, type CompareOptions, type CompareProgress, type CompareReport, type CompareSide, type CustomSide, type MatrixSource,
} from './harness/compare.js';
