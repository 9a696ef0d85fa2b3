import type { HostTensor, Tensor } from './tensor.js';
import type { FlashMLASchedMeta } from './sched-meta.js';
import type { DeviceTensor } from './device-tensor.js';

/** Which backend runs a decode: `auto` = CUDA when usable, else the reference. */
export type BackendChoice = 'auto' | 'cuda' | 'reference';
/** The backend that ran a call or an instance. */
export type BackendName = 'cuda' | 'reference';

/** FP8 KV-cache layouts (docs/flashmla-interface.md#v32-cache, docs/flashmla-interface.md#model1-cache). */
export type KvLayout = 'v32' | 'model1';

/**
 * Arguments of `flashMlaWithKvCache`, FlashMLA's `flash_mla_with_kvcache` in camelCase
 * (docs/flashmla-interface.md#kvcache-arguments). Optional tensors may be omitted or `null`.
 */
export interface DecodeArgs {
  /** (b, s_q, h_q, d_qk); bf16 (dense: bf16 or fp16); last dim contiguous. */
  q: Tensor;
  /** Dense: (num_blocks, 64, h_k, 576) in q's dtype. Sparse: (num_blocks, B, 1, 656|584) uint8. */
  kCache: Tensor;
  /** Dense only: (b, max_num_blocks_per_seq) int32. */
  blockTable?: Tensor | null;
  /** Dense only: (b,) int32. */
  cacheSeqlens?: Tensor | null;
  /** Must be 512. */
  headDimV: number;
  /** From `getMlaMetadata()`; one per decoding step, shared by all layers (docs/flashmla-interface.md#sched-meta-caching). */
  schedMeta: FlashMLASchedMeta;
  /** Default d_qk^-0.5. */
  softmaxScale?: number | null;
  /** Dense only; ignored when s_q == 1. */
  causal?: boolean;
  /** Must be true with `indices`. */
  isFp8Kvcache?: boolean;
  /** Sparse: (b, s_q, topk) int32 flat token ids (block * B + row); -1 = unused. */
  indices?: Tensor | null;
  /** Sparse: (h_q,) fp32 per-head attention sink (±Infinity allowed). */
  attnSink?: Tensor | null;
  /** Sparse: a second FP8 cache in the same layout, with its own paging. */
  extraKCache?: Tensor | null;
  /** Sparse: (b, s_q, extra_topk) int32 into `extraKCache`. */
  extraIndicesInKvcache?: Tensor | null;
  /** Sparse: (b,) int32; only the first topkLength[i] indices of request i are used. */
  topkLength?: Tensor | null;
  /** Sparse: (b,) int32, the same for the extra indices. */
  extraTopkLength?: Tensor | null;
}

/** Options of `flashMlaWithKvCache` with `backend: 'auto'` (the default). */
export interface AutoDecodeOptions {
  /** Default 'auto': FlashMLA's kernels when the build and device can run this call, else the CPU reference. */
  backend?: 'auto';
  /** Used when the call runs on CUDA: see {@link CudaDecodeOptions.validate}. Default false. */
  validate?: boolean;
  /** Used when the call runs on the reference: see {@link ReferenceDecodeOptions.threads}. */
  threads?: number;
  /** See {@link CudaDecodeOptions.out}; only for calls that run on CUDA. Default: none. */
  out?: DeviceTensor;
  /** See {@link CudaDecodeOptions.lse}; only for calls that run on CUDA. Default: none. */
  lse?: DeviceTensor;
}

/** Options of `flashMlaWithKvCache` with `backend: 'cuda'`. */
export interface CudaDecodeOptions {
  /** FlashMLA's kernels, or a FlashMLAError saying why they cannot run this call here. */
  backend: 'cuda';
  /**
   * Check device-resident indices, block tables and lengths on the host before launching (costs a
   * download; FlashMLA dereferences any index other than -1). Host-resident ones are always
   * checked. Default false.
   */
  validate?: boolean;
  /**
   * A preallocated output: a DeviceTensor of q's instance, contiguous, of shape (b, s_q, h_q, 512)
   * in q's dtype (bf16 for sparse), which the call writes instead of allocating one (q must be a
   * DeviceTensor). Default: a new output tensor per call.
   */
  out?: DeviceTensor;
  /**
   * A preallocated lse: fp32 (b, h_q, s_q) with the strides a call without it returns (for s_q > 1 and
   * one kv head the view (s_q·h_q, 1, h_q): `fm.allocate('fp32', shape, strides)` or an earlier
   * result's lse), as `out` otherwise. Default: a new lse tensor per call.
   */
  lse?: DeviceTensor;
}

/** Options of `flashMlaWithKvCache` with `backend: 'reference'`. */
export interface ReferenceDecodeOptions {
  /** The CPU reference of FlashMLA's semantics. */
  backend: 'reference';
  /**
   * Threads, the calling one included. Default: the available cores; at most twice the cores
   * (at least 8). 1 runs on the calling thread only.
   */
  threads?: number;
}

/** Per-call options of `flashMlaWithKvCache`, by backend. */
export type DecodeOptions = AutoDecodeOptions | CudaDecodeOptions | ReferenceDecodeOptions;

/** Per-call options of `FlashMLA#flashMlaWithKvCache` (the instance's backend is fixed at open). */
export interface InstanceDecodeOptions {
  /** CUDA instances: see {@link CudaDecodeOptions.validate}. Default false. */
  validate?: boolean;
  /** Reference instances: see {@link ReferenceDecodeOptions.threads}. */
  threads?: number;
  /** CUDA instances with a device q: see {@link CudaDecodeOptions.out}. Default: a new output tensor. */
  out?: DeviceTensor;
  /** CUDA instances with a device q: see {@link CudaDecodeOptions.lse}. Default: a new lse tensor. */
  lse?: DeviceTensor;
}

/** Every per-call option, as the backends read them. @internal */
export interface CallOptions {
  backend?: BackendChoice;
  validate?: boolean;
  threads?: number;
  out?: DeviceTensor;
  lse?: DeviceTensor;
}

/** `out`: (b, s_q, h_q, 512) in q's dtype, contiguous; `lse`: (b, h_q, s_q) fp32, natural log. */
export interface DecodeResult<T extends Tensor = HostTensor> {
  /** (b, s_q, h_q, 512) in q's dtype (bf16 for sparse), contiguous. */
  out: T;
  /**
   * (b, h_q, s_q) fp32, natural log; +Infinity for rows with nothing to attend. Contiguous, except a
   * DeviceTensor of a call with s_q > 1 and one kv head: FlashMLA's view of the kernels' (b, s_q, h_q)
   * memory, strides (s_q·h_q, 1, h_q) (docs/cuda-path.md#output-layouts).
   */
  lse: T;
}

/** DecodeArgs whose tensors are all host tensors (what generated cases and the reference use). */
export type HostDecodeArgs = {
  [K in keyof DecodeArgs]: DecodeArgs[K] extends Tensor ? HostTensor
    : DecodeArgs[K] extends Tensor | null | undefined ? HostTensor | null | undefined : DecodeArgs[K];
};

/**
 * Arguments of `flashMlaSparseFwd`, FlashMLA's `flash_mla_sparse_fwd` (sparse prefill) in
 * camelCase (docs/flashmla-interface.md#sparse-prefill). No batch dimension: a call attends
 * s_q query tokens, each to its own top-k tokens of one bf16 KV sequence.
 */
export interface SparseFwdArgs {
  /** (s_q, h_q, d_qk) bf16, d_qk 576 (V3.2) or 512 (MODEL1), h_q 64 or 128; last dim contiguous. */
  q: Tensor;
  /** (s_kv, 1, d_qk) bf16 (not FP8); last dim contiguous. */
  kv: Tensor;
  /**
   * (s_q, 1, topk) int32 token ids into `kv`. -1 **and any value outside [0, s_kv)** mark an
   * unused position (FlashMLA's prefill rule, unlike decode). topk a positive multiple of 64.
   */
  indices: Tensor;
  /** Softmax scale applied to q·k (FlashMLA has no default here); finite and > 0. */
  smScale: number;
  /** Must be 512. Default 512. */
  dV?: number;
  /** (h_q,) fp32 per-head attention sink (±Infinity allowed): scales `out` only. Default: none. */
  attnSink?: Tensor | null;
  /** (s_q,) int32 in [0, topk]: only the first topkLength[s] positions of query token s are used. Default: all topk. */
  topkLength?: Tensor | null;
}

/** `flashMlaSparseFwd`'s outputs, contiguous. */
export interface SparseFwdResult<T extends Tensor = HostTensor> {
  /** (s_q, h_q, 512) bf16; rows with nothing valid are 0. */
  out: T;
  /** (s_q, h_q) fp32: max over valid tokens of smScale·q·k; −Infinity when none is valid. */
  maxLogits: T;
  /** (s_q, h_q) fp32, natural log of Σ exp(smScale·q·k) over valid tokens (no sink); +Infinity when none is valid. */
  lse: T;
}

/** Per-call options of `flashMlaSparseFwd`: the decode options without preallocated outputs. */
export type SparseFwdOptions =
  | Omit<AutoDecodeOptions, 'out' | 'lse'>
  | Omit<CudaDecodeOptions, 'out' | 'lse'>
  | ReferenceDecodeOptions;

/** Per-call options of `FlashMLA#flashMlaSparseFwd`. */
export type InstanceSparseFwdOptions = Omit<InstanceDecodeOptions, 'out' | 'lse'>;

/** SparseFwdArgs whose tensors are all host tensors. */
export type HostSparseFwdArgs = {
  [K in keyof SparseFwdArgs]: SparseFwdArgs[K] extends Tensor ? HostTensor
    : SparseFwdArgs[K] extends Tensor | null | undefined ? HostTensor | null | undefined : SparseFwdArgs[K];
};
