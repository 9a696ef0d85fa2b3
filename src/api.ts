import { FlashMLAError } from './errors.js';
import { defaultCuda } from './cuda/default.js';
import { referenceDecode } from './reference/index.js';
import { referenceSparseFwd } from './reference/prefill.js';
import { backendChoice, readDecodeArgs, readDecodeOptions, readSparseFwdArgs } from './validate/args.js';
import { expectNoOutputOptions } from './validate/outputs.js';
import type { DeviceTensor } from './device-tensor.js';
import type { HostTensor, Tensor } from './tensor.js';
import type { CallOptions, DecodeArgs, DecodeOptions, DecodeResult, SparseFwdArgs, SparseFwdOptions, SparseFwdResult } from './types.js';

/**
 * FlashMLA's `flash_mla_with_kvcache`: one decode step of MLA attention over a paged BF16/FP16 KV
 * cache (dense) or a token-sparse FP8 cache (`indices` given). Semantics, arguments and shapes:
 * docs/api.md; every FlashMLA rule it follows: docs/flashmla-interface.md.
 *
 * `options.backend`: 'auto' (default) runs FlashMLA's kernels when a usable build and device can
 * run this call, else the CPU reference; 'cuda' runs FlashMLA's kernels or throws; 'reference'
 * runs the CPU reference. Outputs are host tensors when `q` is a host tensor, device tensors of
 * q's instance when it is a DeviceTensor.
 *
 * @returns `out` (b, s_q, h_q, 512) in q's dtype and `lse` (b, h_q, s_q) fp32, natural log.
 * @throws FlashMLAError for every invalid argument (its `code` and `argument` say which), before
 *   anything reaches a kernel; `E_BACKEND` when 'cuda' is asked for and not usable.
 */
export function flashMlaWithKvCache(args: DecodeArgs & { q: HostTensor }, options?: DecodeOptions): Promise<DecodeResult<HostTensor>>;
/** A DeviceTensor q (from a FlashMLA instance): outputs are device tensors of that instance. */
export function flashMlaWithKvCache(args: DecodeArgs & { q: DeviceTensor }, options?: DecodeOptions): Promise<DecodeResult<DeviceTensor>>;
/** q of either kind: host outputs for a host q, device outputs for a device q. */
export function flashMlaWithKvCache(args: DecodeArgs, options?: DecodeOptions): Promise<DecodeResult<Tensor>>;
export async function flashMlaWithKvCache(callerArgs: DecodeArgs, callerOptions?: DecodeOptions): Promise<DecodeResult<Tensor>> {
  const args = readDecodeArgs(callerArgs);
  const options: CallOptions = readDecodeOptions<CallOptions>(callerOptions);
  const backend = backendChoice(options.backend);
  if (backend === 'reference') return onReference(args, options, 'needs the CUDA backend, and options.backend is \'reference\'');
  const cuda = await defaultCuda();
  // Under 'auto' a call this build cannot run on the device (a dense call on a build without dense
  // kernels, say) runs on the reference when its tensors are host tensors.
  if (cuda.ok) {
    const why = backend === 'cuda' ? null : cuda.instance.cannotRun(args);
    if (why === null) return cuda.instance.flashMlaWithKvCache(args, options);
    return onReference(args, options, `needs the CUDA backend, and this call runs on the reference: ${why}`);
  }
  if (backend === 'cuda') throw new FlashMLAError('E_BACKEND', `the CUDA backend is not usable: ${cuda.reason}`, 'options.backend');
  return onReference(args, options, `needs the CUDA backend, which is not usable: ${cuda.reason}`);
}

function onReference(args: DecodeArgs, options: CallOptions, why: string): Promise<DecodeResult<HostTensor>> {
  expectNoOutputOptions(options, why);
  return referenceDecode(args, options);
}

/**
 * FlashMLA's `flash_mla_sparse_fwd`: token-sparse prefill attention of s_q query tokens over one
 * bf16 KV sequence, each token attending to its own top-k tokens (DeepSeek V3.2 with d_qk 576,
 * MODEL1 with d_qk 512). Semantics, arguments and shapes: docs/api.md#sparse-prefill.
 *
 * `options.backend` as for {@link flashMlaWithKvCache}: 'auto' (default) runs FlashMLA's prefill
 * kernels when the build has them for the device and the device's kernel takes this call's shape
 * (sm90 needs topk a multiple of 128; docs/cuda-path.md#prefill), else the CPU reference for host
 * tensors. Outputs are host tensors for a host q, device tensors of q's instance for a DeviceTensor q.
 *
 * @returns `out` (s_q, h_q, 512) bf16, `maxLogits` (s_q, h_q) fp32 (−Infinity where nothing is
 *   valid) and `lse` (s_q, h_q) fp32 natural log (+Infinity where nothing is valid).
 * @throws FlashMLAError for every invalid argument (its `code` and `argument` say which), before
 *   anything reaches a kernel; `E_BACKEND` when 'cuda' is asked for and not usable.
 */
export function flashMlaSparseFwd(args: SparseFwdArgs & { q: HostTensor }, options?: SparseFwdOptions): Promise<SparseFwdResult<HostTensor>>;
/** A DeviceTensor q (from a FlashMLA instance): outputs are device tensors of that instance. */
export function flashMlaSparseFwd(args: SparseFwdArgs & { q: DeviceTensor }, options?: SparseFwdOptions): Promise<SparseFwdResult<DeviceTensor>>;
/** q of either kind: host outputs for a host q, device outputs for a device q. */
export function flashMlaSparseFwd(args: SparseFwdArgs, options?: SparseFwdOptions): Promise<SparseFwdResult<Tensor>>;
export async function flashMlaSparseFwd(callerArgs: SparseFwdArgs, callerOptions?: SparseFwdOptions): Promise<SparseFwdResult<Tensor>> {
  const args = readSparseFwdArgs(callerArgs);
  const options: CallOptions = readDecodeOptions<CallOptions>(callerOptions);
  expectNoOutputOptions(options, 'is not supported by flashMlaSparseFwd (its outputs are always new tensors)');
  const backend = backendChoice(options.backend);
  if (backend === 'reference') return referenceSparseFwd(args, options);
  const cuda = await defaultCuda();
  // Under 'auto' a call this build or device cannot run (no prefill launchers, a top-k the
  // device's kernel does not take) runs on the reference when its tensors are host tensors
  // (docs/cuda-path.md#prefill).
  if (cuda.ok) return cuda.instance.runSparseFwd(args, options, backend === 'auto');
  if (backend === 'cuda') throw new FlashMLAError('E_BACKEND', `the CUDA backend is not usable: ${cuda.reason}`, 'options.backend');
  return referenceSparseFwd(args, options);
}
