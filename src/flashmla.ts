import { backendInfo, type BackendInfo } from './backend-info.js';
import { check, FlashMLAError } from './errors.js';
import { DeviceTensor } from './device-tensor.js';
import { openCudaSession, type CudaSession } from './cuda/session.js';
import type { CudaEvent } from './cuda/event.js';
import type { CudaGraph } from './cuda/graph.js';
import { callKindOf } from './cuda/usability.js';
import { backendChoice, expectNoThenPollution, ownValue, readDecodeArgs, readDecodeOptions, readSparseFwdArgs, TENSOR_ARG_KEYS } from './validate/args.js';
import { referenceDecode } from './reference/index.js';
import { referenceSparseFwd } from './reference/prefill.js';
import { expectNoOutputOptions } from './validate/outputs.js';
import { INT32_MAX, isHostTensor, type DeviceTensorMeta, type DType, type HostTensor, type Tensor, type TensorMeta } from './tensor.js';
import type {
  BackendChoice, BackendName, CallOptions, DecodeArgs, DecodeResult, InstanceDecodeOptions, InstanceSparseFwdOptions, SparseFwdArgs, SparseFwdResult,
} from './types.js';

/** Options of `FlashMLA.open`. */
export interface FlashMLAOpenOptions {
  /** 'auto' (default): CUDA when usable, else the reference. */
  backend?: BackendChoice;
  /** CUDA device ordinal (default 0). Every call of the instance runs on it. */
  device?: number;
  /** Path of a FlashMLA build (default: FLASHMLA_LIBRARY, else the installed flash_mla package). */
  library?: string;
  /**
   * An existing `cudaStream_t` of `device` (a bigint, e.g. from another addon) on which every call
   * of the instance is issued, so that it orders with the caller's own CUDA work
   * (docs/cuda-path.md#streams-and-events). It is never destroyed here. Needs the CUDA backend.
   * Default: a stream of the instance's own.
   */
  stream?: bigint;
}

/**
 * Explicit control over a backend (docs/architecture.md#public-api): one device, one FlashMLA build, and the device
 * tensors made through it. Calls on one instance run in order on its own worker thread.
 */
export class FlashMLA {
  /** What this instance runs on: 'cuda' or 'reference' (an 'auto' instance is one or the other). */
  readonly backend: BackendName;
  /** The CUDA device every call runs on; null for a reference instance. */
  readonly device: number | null;
  readonly #session: CudaSession | null;
  readonly #library: string | undefined;
  /** Opened with 'auto': host-tensor calls this build cannot run go to the reference. */
  readonly #fallback: boolean;
  #disposed = false;

  private constructor(backend: BackendName, session: CudaSession | null, library: string | undefined, fallback: boolean) {
    this.backend = backend;
    this.#fallback = fallback;
    this.device = session?.device ?? null;
    this.#session = session;
    this.#library = library;
  }

  /**
   * Opens an instance. 'cuda' checks the build (file, launchers, GPU code), runtime, driver and device and starts the instance's worker thread, or throws `E_BACKEND` with the reason; 'auto' (default) falls back to a reference instance; 'reference' needs nothing.
   * @throws FlashMLAError `E_VALUE` for bad options, `E_BACKEND` when 'cuda' is not usable.
   */
  static async open(callerOptions: FlashMLAOpenOptions = {}): Promise<FlashMLA> {
    expectNoThenPollution();
    check(callerOptions !== null && typeof callerOptions === 'object', 'E_VALUE', 'options', 'options must be an object');
    const options = {
      backend: ownValue(callerOptions, 'backend', 'options.backend') as FlashMLAOpenOptions['backend'],
      device: ownValue(callerOptions, 'device', 'options.device') as number | undefined,
      library: ownValue(callerOptions, 'library', 'options.library') as string | undefined,
      stream: ownValue(callerOptions, 'stream', 'options.stream') as bigint | undefined,
    };
    const backend = backendChoice(options.backend);
    check(options.device === undefined || (Number.isSafeInteger(options.device) && options.device >= 0 && options.device <= INT32_MAX),
      'E_VALUE', 'options.device', 'options.device must be an integer from 0 to 2^31 - 1 (a CUDA device ordinal)');
    check(options.library === undefined || typeof options.library === 'string', 'E_VALUE', 'options.library', 'options.library must be a path');
    check(options.stream === undefined || (typeof options.stream === 'bigint' && options.stream >= 0n && options.stream < 2n ** 64n),
      'E_VALUE', 'options.stream', 'options.stream must be a cudaStream_t as a bigint (0 to 2^64 - 1)');
    check(options.stream === undefined || backend !== 'reference', 'E_VALUE', 'options.stream', 'options.stream needs the CUDA backend, and options.backend is \'reference\'');
    if (backend === 'reference') return new FlashMLA('reference', null, undefined, false);
    const opened = await openCudaSession({ device: options.device, library: options.library, stream: options.stream });
    if (opened.ok) return new FlashMLA('cuda', opened.session, options.library, backend === 'auto');
    if (backend === 'cuda') throw new FlashMLAError('E_BACKEND', `the CUDA backend is not usable: ${opened.reason}`, 'backend');
    // A stream is CUDA work to order with: an instance that silently ran on the reference would not.
    check(options.stream === undefined, 'E_BACKEND', 'options.stream', `options.stream needs the CUDA backend, which is not usable: ${opened.reason}`);
    return new FlashMLA('reference', null, options.library, false);
  }

  #cuda(what: string): CudaSession {
    check(!this.#disposed, 'E_DISPOSED', undefined, 'this FlashMLA instance was disposed');
    check(this.#session !== null, 'E_BACKEND', undefined,
      `${what} needs the CUDA backend; this FlashMLA instance uses the reference backend (use host tensors)`);
    return this.#session;
  }

  /**
   * FlashMLA's `flash_mla_with_kvcache` on this instance's backend (see the top-level
   * `flashMlaWithKvCache`). Outputs are host tensors when `q` is a host tensor, device tensors of
   * this instance when it is a DeviceTensor. An instance opened with 'auto' runs host-tensor calls
   * its build cannot run on the reference.
   * @throws FlashMLAError for invalid arguments; `E_DISPOSED` after dispose(); `E_DEVICE_LOST` after a device fault.
   */
  flashMlaWithKvCache(args: DecodeArgs & { q: HostTensor }, options?: InstanceDecodeOptions): Promise<DecodeResult<HostTensor>>;
  /** A DeviceTensor q of this instance: outputs are device tensors of this instance. */
  flashMlaWithKvCache(args: DecodeArgs & { q: DeviceTensor }, options?: InstanceDecodeOptions): Promise<DecodeResult<DeviceTensor>>;
  /** q of either kind: host outputs for a host q, device outputs for a device q. */
  flashMlaWithKvCache(args: DecodeArgs, options?: InstanceDecodeOptions): Promise<DecodeResult<Tensor>>;
  async flashMlaWithKvCache(callerArgs: DecodeArgs, callerOptions?: InstanceDecodeOptions): Promise<DecodeResult<Tensor>> {
    check(!this.#disposed, 'E_DISPOSED', undefined, 'this FlashMLA instance was disposed');
    const args = readDecodeArgs(callerArgs);
    const options = readDecodeOptions<CallOptions>(callerOptions);
    if (this.#session === null) {
      expectNoOutputOptions(options, 'needs the CUDA backend; this instance uses the reference backend');
      return referenceDecode(args, options);
    }
    const why = this.#fallback ? this.cannotRun(args) : null;
    if (why !== null) {
      expectNoOutputOptions(options, `needs the CUDA backend, and this call runs on the reference: ${why}`);
      return referenceDecode(args, options);
    }
    return this.#session.decode(args, options);
  }

  /**
   * FlashMLA's `flash_mla_sparse_fwd` (sparse prefill) on this instance's backend: see the
   * top-level {@link flashMlaSparseFwd} and docs/cuda-path.md#prefill. A CUDA instance takes host
   * tensors (host outputs) or DeviceTensors of this instance (device outputs for a DeviceTensor q);
   * one opened with 'auto' runs a host-tensor call its build or device cannot run on the reference.
   * Reference instances take host tensors. `options.validate: true` downloads device-resident q,
   * indices, topkLength, attnSink and the kv rows its indices name, and checks their values first.
   * @throws FlashMLAError for invalid arguments (its `code` and `argument` say which), and
   *   `E_UNSUPPORTED` naming `q` or `indices` for a shape this device's kernel does not take;
   *   `E_DISPOSED` after dispose(); `E_DEVICE_LOST` after a device fault.
   */
  flashMlaSparseFwd(args: SparseFwdArgs & { q: HostTensor }, options?: InstanceSparseFwdOptions): Promise<SparseFwdResult<HostTensor>>;
  /** A DeviceTensor q of this instance: outputs are device tensors of this instance. */
  flashMlaSparseFwd(args: SparseFwdArgs & { q: DeviceTensor }, options?: InstanceSparseFwdOptions): Promise<SparseFwdResult<DeviceTensor>>;
  /** q of either kind: host outputs for a host q, device outputs for a device q. */
  flashMlaSparseFwd(args: SparseFwdArgs, options?: InstanceSparseFwdOptions): Promise<SparseFwdResult<Tensor>>;
  async flashMlaSparseFwd(callerArgs: SparseFwdArgs, callerOptions?: InstanceSparseFwdOptions): Promise<SparseFwdResult<Tensor>> {
    return this.runSparseFwd(callerArgs, callerOptions, this.#fallback);
  }

  /**
   * The sparse prefill of this instance, with `fallback`: a host-tensor call the build or device
   * cannot run goes to the reference (the top-level function passes it under 'auto').
   * @internal
   */
  async runSparseFwd(callerArgs: SparseFwdArgs, callerOptions: InstanceSparseFwdOptions | undefined, fallback: boolean): Promise<SparseFwdResult<Tensor>> {
    check(!this.#disposed, 'E_DISPOSED', undefined, 'this FlashMLA instance was disposed');
    const args = readSparseFwdArgs(callerArgs);
    const options = readDecodeOptions<CallOptions>(callerOptions);
    expectNoOutputOptions(options, 'is not supported by flashMlaSparseFwd (its outputs are always new tensors)');
    if (this.#session === null) return referenceSparseFwd(args, options);
    return this.#session.sparseFwd(args, options, fallback ? () => referenceSparseFwd(args, options) : null);
  }

  /**
   * Why this instance's CUDA build cannot run this call on its device when every tensor of the call
   * is a host tensor (so the reference could run it instead), else null.
   * @internal
   */
  cannotRun(args: DecodeArgs): string | null {
    if (this.#session === null || !allHost(args)) return null;
    const call = callKindOf(args);
    return call === null ? null : this.#session.callProblem(call);
  }

  /** Copies a host tensor to the device (same strides; the offset becomes 0). */
  async upload<D extends DType>(t: HostTensor<D>): Promise<DeviceTensor<D>> {
    return this.#cuda('upload').upload(t);
  }

  /**
   * Page-locked ("pinned") host memory from the loaded build's CUDA runtime, as a contiguous host
   * tensor: `upload` copies from it in place and the device reads it by DMA, where pageable memory
   * is first copied (docs/cuda-path.md#pinned). Freed when the tensor's buffer is collected. Page-locked
   * memory is a scarce system resource: allocate staging buffers once and reuse them.
   */
  async allocatePinned<D extends DType>(dtype: D, shape: readonly number[]): Promise<HostTensor<D>> {
    return this.#cuda('allocatePinned').allocatePinned(dtype, shape);
  }

  /** A contiguous host copy of a device tensor. */
  async download<D extends DType>(t: DeviceTensorMeta<D>): Promise<HostTensor<D>> {
    return this.#cuda('download').download(t);
  }

  /**
   * Uninitialised device memory of `shape`: contiguous, or laid out with the element `strides` given
   * (as `torch.empty_strided`; default contiguous), e.g. a preallocated lse of a call with s_q > 1,
   * which FlashMLA's kernels write as a (b, s_q, h_q) array: strides (s_q·h_q, 1, h_q).
   */
  async allocate<D extends DType>(dtype: D, shape: readonly number[], strides?: readonly number[]): Promise<DeviceTensor<D>> {
    return this.#cuda('allocate').allocate(dtype, shape, strides);
  }

  /** Wraps device memory owned elsewhere (never freed here); it must be memory of this device. */
  async wrap<D extends DType>(address: bigint, meta: TensorMeta<D> & { capacity?: number }): Promise<DeviceTensor<D>> {
    return this.#cuda('wrap').wrap(address, meta);
  }

  /**
   * Gives the device memory this instance keeps cached for decode outputs, workspaces and sched
   * metas back to the device (docs/cuda-path.md#memory-pool), as `torch.cuda.empty_cache()` does;
   * memory in use stays. Nothing to do on a reference instance.
   */
  async emptyCache(): Promise<void> {
    check(!this.#disposed, 'E_DISPOSED', undefined, 'this FlashMLA instance was disposed');
    await this.#session?.emptyCache();
  }

  /**
   * The instance's `cudaStream_t` as a bigint (its own, or the one given to open); null for a
   * reference instance. Work issued on it by other code orders with this instance's calls.
   */
  get stream(): bigint | null {
    return this.#session?.stream ?? null;
  }

  /**
   * Resolves once the GPU has completed everything issued on the instance's stream before the
   * call (the wait is on the instance's worker thread, never the event loop).
   * @throws FlashMLAError `E_BACKEND` on a reference instance, `E_DISPOSED` after dispose().
   */
  async synchronize(): Promise<void> {
    await this.#cuda('synchronize').synchronize();
  }

  /**
   * Records a CUDA event on the instance's stream after everything issued so far and returns it:
   * `await ev.synchronize()` (or `await ev`) waits for it; `ev.dispose()` destroys it.
   * @throws FlashMLAError `E_BACKEND` on a reference instance, `E_DISPOSED` after dispose().
   */
  record(): CudaEvent {
    return this.#cuda('record').record();
  }

  /**
   * Records the decode calls `record` makes on this instance (sched-meta computation included) as
   * one CUDA graph, replayed with `await graph.replay()` for about the host cost of one call
   * (docs/cuda-path.md#graphs). Pointers, shapes, scalars and sched metas are fixed at capture; the
   * contents of the input tensors may change between replays (as in vLLM), and replays write the
   * same output tensors. Inside `record`, only decode calls with DeviceTensors may be made on this
   * instance: host tensors, `validate: true`, uploads, downloads, allocations, `synchronize()` and
   * `record()` are refused (`E_UNSUPPORTED`), and an error ends the capture and is rethrown.
   * @throws FlashMLAError `E_BACKEND` on a reference instance, `E_DISPOSED` after dispose().
   */
  async captureGraph(record: () => unknown): Promise<CudaGraph> {
    return this.#cuda('captureGraph').captureGraph(record);
  }

  /** What this instance runs on (for a reference instance: what `auto` would find). */
  async info(): Promise<BackendInfo> {
    const info = await backendInfo({ device: this.device ?? undefined, library: this.#library });
    if (this.#session === null) {
      return { ...info, backend: 'reference', reason: info.backend === 'reference' ? info.reason : 'this instance was opened with the reference backend' };
    }
    return info;
  }

  /** Frees every device tensor, workspace and the stream of this instance. Idempotent. */
  async dispose(): Promise<void> {
    if (this.#disposed) return;
    this.#disposed = true;
    await this.#session?.dispose();
  }
}

export { DeviceTensor };

function allHost(args: DecodeArgs): boolean {
  try {
    return TENSOR_ARG_KEYS.every((k) => args[k] === undefined || args[k] === null || isHostTensor(args[k]));
  } catch {
    return false;
  }
}
