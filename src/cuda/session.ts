import { check, FlashMLAError } from '../errors.js';
import type { Bound, DecodePlan, PrefillPlan } from '../plan.js';
import type { SchedMetaSlot } from '../sched-meta.js';
import {
  ARRAY_OF, contiguousStrides, ELEMENT_BYTES, expectStrides, extentOf, isContiguous, isHostTensor, numel, viewOf,
  type DataOf, type DeviceTensorMeta, type DType, type HostTensor, type Tensor, type TensorMeta, type View,
} from '../tensor.js';
import type { CallOptions, DecodeArgs, DecodeResult, SparseFwdArgs, SparseFwdResult } from '../types.js';
import { ownValue, readDecodeArgs, readDecodeOptions, readTensor, SPARSE_FWD_TENSOR_KEYS, TENSOR_ARG_KEYS } from '../validate/args.js';
import { namedRows, validateSparseFwd } from '../validate/prefill.js';
import { validateDecode } from '../validate/index.js';
import { MAILBOX, type NativeAllocation, type NativeDecodeOutcome, type NativeEngine, type NativePrefillOutcome, type NativePrepared, type NativeStart } from '../addon.js';
import { mintCudaEvent, type CudaEvent, type EventOwner } from './event.js';
import { mintCudaGraph, type CudaGraph, type GraphOwner } from './graph.js';
import { isGiven } from '../validate/common.js';
import { FlashMLASchedMeta } from '../sched-meta.js';
import { expectNoOutputOptions, expectOutputTensor } from '../validate/outputs.js';
import { collectDroppedDeviceMemory, CUDA_ERROR_OUT_OF_MEMORY, isSticky, lostReason, markLost } from './device-state.js';
import { DeviceTensor, mintDeviceTensor, type TensorOwner } from '../device-tensor.js';
import { assessCuda } from './assess.js';
import { lseStrides, operandsOf, planLaunch, requestFields, type DeviceFacts } from './host-layer.js';
import { loadInProcess } from './library.js';
import { planPrefill, prefillOperandsOf, prefillRequestFields, type PrefillLaunch } from './prefill-host-layer.js';
import { callProblem, launcherProblem, type AnyCallKind, type BuildFacts } from './usability.js';

/** A native rejection: the addon rejects with FlashMLAErrors; anything else is a bug. */
function asFlashMLAError(e: unknown): FlashMLAError {
  if (e instanceof FlashMLAError) return e;
  return new FlashMLAError('E_INTERNAL', e instanceof Error ? e.message : String(e));
}

/**
 * An error that comes back from the instance's worker thread has no JavaScript frames of its own;
 * it gets the stack of the call that started the work (as sharp does for its async errors).
 */
function withCallerStack(err: FlashMLAError, caller: Error): FlashMLAError {
  const frames = (caller.stack ?? '').split('\n').slice(1).join('\n');
  err.stack = `${err.name}: ${err.message}\n${frames}`;
  return err;
}

const cudaErrorOf = (e: unknown): number | undefined => (e as { cudaError?: number } | null)?.cudaError;

export type SessionResult = { readonly ok: true; readonly session: CudaSession } | { readonly ok: false; readonly reason: string };

/**
 * Opens the CUDA side of an instance when the one usability decision (assess.ts) says CUDA runs
 * at least one feature on the device, then starts the instance's worker.
 */
export async function openCudaSession(options: { device?: number; library?: string; stream?: bigint }): Promise<SessionResult> {
  const { report, ready } = await assessCuda(options, loadInProcess, 'this process');
  if (ready === null) return { ok: false, reason: report.reason };
  const device = report.device!;
  const engine = new ready.addon.Engine(ready.native, device);
  try {
    const start = await engine.start(options.stream);
    const ids = new Map(ready.addon.launchers.map((l) => [l.key, l.id]));
    const build = { file: ready.located.file, launchers: ready.info.launchers };
    return { ok: true, session: new CudaSession(engine, build, device, start, ids) };
  } catch (e) {
    await engine.dispose();
    // A stream the runtime refuses is the caller's argument, not an unusable backend.
    if (options.stream !== undefined && e instanceof FlashMLAError && (e.code === 'E_DEVICE' || e.code === 'E_VALUE')) {
      throw new FlashMLAError(e.code, e.message, 'options.stream');
    }
    return { ok: false, reason: `starting device ${device} failed: ${(e as Error).message}` };
  }
}

// A sched meta dropped without dispose() still frees its device-side scheduler buffers once it is
// garbage-collected (the buffers belong to this session's engine, keyed by slot id).
const droppedSchedMetas = new FinalizationRegistry<{ session: CudaSession; id: number }>(({ session, id }) => {
  session.releaseSchedSlot(id);
});

/** The CUDA side of one FlashMLA instance: its worker, device memory and decode calls. */
export class CudaSession implements TensorOwner, EventOwner, GraphOwner {
  readonly facts: DeviceFacts;
  /** The instance's cudaStream_t (its own, or the one it was opened with). */
  readonly stream: bigint;
  /** Completed decode calls and how many of them ran the scheduler (docs/flashmla-interface.md#sched-meta-caching: once per sched meta). */
  readonly stats = { decodes: 0, schedMetaRuns: 0 };
  #disposed = false;
  /** A graph capture is running (docs/cuda-path.md#graphs): only device-resident decodes may be issued. */
  #capturing = false;
  /** Prepared calls by their q (docs/cuda-path.md#per-call-cost). */
  readonly #calls = new WeakMap<DeviceTensor, PreparedCall[]>();
  /** Preallocated outputs already checked, with the plan and option they were checked for. */
  readonly #checkedOutputs = new WeakMap<DeviceTensor, { plan: DecodePlan; name: string }>();
  /** The per-call exchange with the addon's `launch` (one call at a time: it is synchronous). */
  readonly #mailbox = new BigUint64Array(MAILBOX.size);
  /** Page-locked buffers made by allocatePinned: upload() copies from these in place. */
  readonly #pinned = new WeakSet<ArrayBufferLike>();

  constructor(
    private readonly engine: NativeEngine,
    readonly build: BuildFacts,
    readonly device: number,
    facts: NativeStart,
    private readonly launcherIds: ReadonlyMap<string, number>,
  ) {
    this.facts = { major: facts.major, minor: facts.minor, sms: facts.sms };
    this.stream = facts.stream;
    engine.setMailbox(this.#mailbox);
  }

  /** Why this build cannot run a call of this kind on this device, or null (usability.ts). */
  callProblem(call: AnyCallKind): string | null {
    return callProblem(this.build, call, this.facts);
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  release(id: number): void {
    this.engine.free(id);
  }

  /** Frees a sched meta's device-side scheduler buffers (no-op once the instance is disposed). */
  releaseSchedSlot(id: number): void {
    if (!this.#disposed) this.engine.freeSchedSlot(id);
  }

  /** Work that copies between host and device, waits, or allocates cannot be recorded in a graph. */
  #notCapturing(what: string, argument?: string): void {
    check(!this.#capturing, 'E_UNSUPPORTED', argument,
      () => `${what} cannot be recorded in a CUDA graph (it copies between host and device, waits or allocates); ` +
        'inside captureGraph() only decode calls with DeviceTensors are allowed');
  }

  #open(): void {
    check(!this.#disposed, 'E_DISPOSED', undefined, 'this FlashMLA instance was disposed');
    const lost = lostReason(this.device);
    check(lost === null, 'E_DEVICE_LOST', undefined,
      () => `CUDA device ${this.device} is lost for the rest of this process; its first fault was: ${lost}. Restart the process`);
  }

  /**
   * Turns a native rejection into the FlashMLAError callers see: a sticky CUDA error marks the
   * device lost (every later call then fails at once, naming this first fault); out-of-memory has
   * its own code.
   */
  #fail(e: unknown, caller: Error): never {
    const cuda = cudaErrorOf(e);
    const err = withCallerStack(asFlashMLAError(e), caller);
    if (isSticky(cuda)) {
      const first = markLost(this.device, err.message);
      throw withCallerStack(new FlashMLAError('E_DEVICE_LOST', `CUDA device ${this.device} is lost for the rest of this process; its first fault was: ${first}. Restart the process`), caller);
    }
    if (cuda === CUDA_ERROR_OUT_OF_MEMORY) throw withCallerStack(new FlashMLAError('E_OUT_OF_MEMORY', err.message), caller);
    throw err;
  }

  /** Runs `alloc`; on out-of-memory collects the memory of dropped device tensors once and tries again. */
  async #withMemory<T>(alloc: () => Promise<T>): Promise<T> {
    try {
      return await alloc();
    } catch (e) {
      if (!(e instanceof FlashMLAError) || e.code !== 'E_OUT_OF_MEMORY') throw e;
      await collectDroppedDeviceMemory();
      return alloc();
    }
  }

  /**
   * Device tensors must be real DeviceTensors (made by upload/allocate/wrap, whose address was
   * allocated or checked with cudaPointerGetAttributes: a look-alike object could point anywhere)
   * and live on this instance's device (docs/flashmla-interface.md#device-and-stream: one device per call).
   */
  #deviceTensor(t: Tensor, name: string): DeviceTensorMeta {
    check(DeviceTensor.isDeviceTensor(t) && t.owner instanceof CudaSession, 'E_VALUE', name,
      `${name} must be a host tensor ({ dtype, shape, data }) or a DeviceTensor made by FlashMLA.upload/allocate/wrap`);
    const d = t as DeviceTensorMeta;
    check(!d.disposed, 'E_DISPOSED', name, `${name} is a disposed DeviceTensor`);
    check(d.device === this.device, 'E_DEVICE', name, `${name} lives on device ${d.device}, but this FlashMLA instance uses device ${this.device}`);
    return d;
  }

  #baseOf(t: Tensor, view: View, name: string): bigint {
    const d = this.#deviceTensor(t, name);
    return d.address + BigInt(view.offset * ELEMENT_BYTES[view.dtype]);
  }

  async allocate<D extends DType>(dtype: D, shape: readonly number[], strides?: readonly number[]): Promise<DeviceTensor<D>> {
    const caller = new Error(); // the caller's stack, for errors that come back from the worker thread
    this.#open();
    this.#notCapturing('allocate()');
    const meta = { device: this.device, capacity: Number.MAX_SAFE_INTEGER, address: 0n, disposed: false };
    const view = viewOf({ dtype, shape, ...meta }, 'shape');
    const layout = strides === undefined ? view.strides : expectStrides(strides, view.shape.length, 'strides', 'strides');
    const n = extentOf({ ...view, strides: layout });
    const a = await this.#withMemory(() => this.engine.malloc(n * ELEMENT_BYTES[dtype]).catch((e: unknown) => this.#fail(e, caller)));
    return mintDeviceTensor(this, { dtype, shape, strides: layout, capacity: n, address: a.address, allocation: a.id });
  }

  /**
   * Page-locked host memory of the build's runtime, as a contiguous host tensor (docs/cuda-path.md#pinned).
   * Node cannot detach such a buffer, so upload() copies from it in place, with no snapshot.
   */
  async allocatePinned<D extends DType>(dtype: D, shape: readonly number[]): Promise<HostTensor<D>> {
    const caller = new Error(); // the caller's stack, for errors that come back from the worker thread
    this.#open();
    this.#notCapturing('allocatePinned()');
    const view = viewOf({ dtype, shape, device: this.device, capacity: Number.MAX_SAFE_INTEGER, address: 0n, disposed: false }, 'shape');
    const bytes = numel(view.shape) * ELEMENT_BYTES[dtype];
    if (bytes === 0) return { dtype, shape: [...view.shape], data: new ARRAY_OF[dtype](0) as DataOf[D] };
    const buffer = await this.engine.hostAlloc(bytes).catch((e: unknown) => this.#fail(e, caller));
    this.#pinned.add(buffer);
    return { dtype, shape: [...view.shape], data: new ARRAY_OF[dtype](buffer) as DataOf[D] };
  }

  async upload<D extends DType>(tensor: HostTensor<D>): Promise<DeviceTensor<D>> {
    const caller = new Error(); // the caller's stack, for errors that come back from the worker thread
    this.#open();
    this.#notCapturing('upload()');
    const t = readTensor(tensor, 'tensor');
    check(isHostTensor(t), 'E_VALUE', 'tensor', 'upload takes a host tensor ({ dtype, shape, data })');
    const view = viewOf(t, 'tensor');
    const extent = Math.max(extentOf(view), view.offset);
    const count = extent - view.offset;
    // The elements are copied now, into memory the caller cannot detach or shrink while the copy
    // to the device is queued, unless they are in page-locked memory of this session's, which
    // cannot be detached: the device copies from that in place.
    const inPlace = this.#pinned.has(t.data.buffer);
    const data = count === 0 ? null : inPlace ? t.data.subarray(view.offset, extent) : t.data.slice(view.offset, extent);
    const a = await this.#withMemory(() => this.engine.malloc(count * ELEMENT_BYTES[view.dtype]).catch((e: unknown) => this.#fail(e, caller)));
    const out = mintDeviceTensor(this, { dtype: t.dtype as D, shape: view.shape, strides: view.strides, offset: 0, capacity: count, address: a.address, allocation: a.id });
    if (data !== null) {
      await this.engine.upload(a.address, data, inPlace).catch((e: unknown) => {
        out.dispose();
        this.#fail(e, caller);
      });
    }
    return out;
  }

  /** A contiguous host copy of a device tensor. */
  async download<D extends DType>(t: DeviceTensorMeta<D>): Promise<HostTensor<D>> {
    const caller = new Error(); // the caller's stack, for errors that come back from the worker thread
    this.#open();
    this.#notCapturing('download()');
    check(t !== null && typeof t === 'object' && !isHostTensor(t as Tensor), 'E_VALUE', 'tensor', 'download takes a DeviceTensor');
    const view = viewOf(t, 'tensor');
    this.#deviceTensor(t, 'tensor');
    const eb = ELEMENT_BYTES[view.dtype];
    const n = numel(view.shape);
    const Arr = ARRAY_OF[view.dtype];
    if (n === 0) return { dtype: t.dtype, shape: [...view.shape], data: new Arr(0) as DataOf[D] };
    if (isContiguous(view)) {
      const data = new Arr(n);
      await this.engine.download(t.address + BigInt(view.offset * eb), data).catch((e: unknown) => this.#fail(e, caller));
      return { dtype: t.dtype, shape: [...view.shape], data: data as DataOf[D] };
    }
    const raw = await this.downloadExtent(t, view);
    return { dtype: t.dtype, shape: [...view.shape], data: gather(raw, view, n) as DataOf[D] };
  }

  /** Elements [offset, extent) of a device tensor, as a host tensor of the same geometry (offset 0). */
  async downloadExtent(t: DeviceTensorMeta, view: View): Promise<DataOf[DType]> {
    const caller = new Error(); // the caller's stack, for errors that come back from the worker thread
    const count = extentOf(view) - view.offset;
    const data = new ARRAY_OF[view.dtype](Math.max(count, 0));
    if (count > 0) await this.engine.download(t.address + BigInt(view.offset * ELEMENT_BYTES[view.dtype]), data).catch((e: unknown) => this.#fail(e, caller));
    return data;
  }

  /** Wraps device memory owned elsewhere; checked with cudaPointerGetAttributes. */
  async wrap<D extends DType>(address: bigint, meta: TensorMeta<D> & { capacity?: number }): Promise<DeviceTensor<D>> {
    const caller = new Error(); // the caller's stack, for errors that come back from the worker thread
    this.#open();
    this.#notCapturing('wrap()');
    check(typeof address === 'bigint' && address > 0n && address < 2n ** 64n, 'E_VALUE', 'address', 'address must be a non-zero 64-bit bigint');
    check(meta !== null && typeof meta === 'object', 'E_VALUE', 'meta', 'meta must be an object ({ dtype, shape, strides?, offset?, capacity? })');
    const field = (k: string) => ownValue(meta, k, `meta.${k}`);
    const given = { dtype: field('dtype'), shape: field('shape'), strides: field('strides'), offset: field('offset') };
    const view = viewOf({ ...given, device: this.device, capacity: Number.MAX_SAFE_INTEGER, address, disposed: false }, 'meta');
    const rawCapacity = field('capacity');
    const capacity = rawCapacity ?? Math.max(extentOf(view), view.offset);
    check(typeof capacity === 'number' && Number.isSafeInteger(capacity) && capacity >= extentOf(view) && capacity >= 1, 'E_BUFFER', 'meta.capacity',
      `meta.capacity (${String(capacity)}) must be a positive integer at least the extent of the view (${extentOf(view)})`);
    const bytes = BigInt(capacity * ELEMENT_BYTES[view.dtype]);
    // Both ends of the claimed range must be memory of this device. (The runtime API tells the
    // owner of an address, not where its allocation ends; see docs/robustness.md#device-tensors.)
    for (const [at, what] of [[address, 'address'], [address + bytes - 1n, 'the last byte of meta.capacity']] as const) {
      const attrs = await this.engine.pointerInfo(at).catch((e: unknown) => this.#fail(e, caller));
      check(attrs.type === 2, 'E_DEVICE', 'address', `${what} (0x${at.toString(16)}) is not CUDA device memory (cudaPointerGetAttributes type ${attrs.type})`);
      check(attrs.device === this.device, 'E_DEVICE', 'address',
        `${what} (0x${at.toString(16)}) is memory of device ${attrs.device}, but this FlashMLA instance uses device ${this.device}`);
    }
    return mintDeviceTensor(this, { dtype: view.dtype as D, shape: view.shape, strides: view.strides, offset: view.offset, capacity, address, allocation: null });
  }

  /**
   * One decode call. A call whose tensors are all DeviceTensors (and that does not ask for
   * `validate: true`) is validated and planned once per set of tensors and scalars, then issued on
   * the calling thread through its prepared native request (docs/cuda-path.md#per-call-cost); any
   * other call is validated, planned and run on the worker thread.
   */
  async decode(callerArgs: DecodeArgs, callerOptions?: CallOptions): Promise<DecodeResult<Tensor>> {
    this.#open();
    const args = readDecodeArgs(callerArgs);
    const options = readDecodeOptions(callerOptions);
    if (options.validate !== true && allDevice(args)) return this.#launchPrepared(args, options, this.#prepared(args));
    return this.#decodeQueued(args, options);
  }

  /**
   * The prepared call of these device tensors and scalars: from the cache (the tensors' geometry
   * cannot change, so neither can the plan), else validated, planned and prepared now.
   */
  #prepared(args: DecodeArgs): PreparedCall {
    const q = args.q as DeviceTensor;
    const list = this.#calls.get(q);
    if (list !== undefined) {
      for (const c of list) if (c.matches(args)) return c;
    }
    const plan = validateDecode(args);
    for (const k of TENSOR_ARG_KEYS) {
      const t = args[k];
      if (t !== undefined && t !== null) this.#deviceTensor(t, k);
    }
    const launch = planLaunch(plan, this.facts, (key) => launcherProblem(this.build, key, this.facts), (b) => this.#baseOf(b.tensor, b.view, 'tensor'));
    const request = { ...requestFields(plan, launch, (k) => this.launcherIds.get(k)!), slot: 0 as const, operands: this.#operands(plan), hostOut: undefined, hostLse: undefined };
    const call = new PreparedCall(args, plan, this.engine.prepare(request));
    const calls = list ?? [];
    if (calls.unshift(call) > PREPARED_PER_Q) calls.pop();
    if (list === undefined) this.#calls.set(q, calls);
    return call;
  }

  /** The sched meta's slot on this instance (made on first use), after its configuration check. */
  #slotOf(args: DecodeArgs, plan: DecodePlan): SessionSlot {
    check(args.schedMeta instanceof FlashMLASchedMeta, 'E_VALUE', 'schedMeta', 'schedMeta must come from getMlaMetadata()');
    args.schedMeta.bind(plan.config);
    let slot = args.schedMeta.slot(this) as SessionSlot | undefined;
    if (slot === undefined) {
      const id = this.engine.newSchedSlot();
      const token = {};
      slot = { id, big: BigInt(id), dispose: () => { droppedSchedMetas.unregister(token); this.releaseSchedSlot(id); } };
      args.schedMeta.setSlot(this, slot);
      droppedSchedMetas.register(args.schedMeta, { session: this, id }, token);
    }
    return slot;
  }

  /** Preallocated outputs of a call with a device q, checked against its plan; null where not given. */
  #outputs(options: CallOptions, plan: DecodePlan): { out: DeviceTensor | null; lse: DeviceTensor | null } {
    return { out: this.#output(options.out, 'options.out', plan), lse: this.#output(options.lse, 'options.lse', plan) };
  }

  /**
   * One preallocated output. A tensor's geometry never changes, so one that passed against a plan
   * passes again (remembered per tensor); liveness is checked every call.
   */
  #output(t: unknown, name: 'options.out' | 'options.lse', plan: DecodePlan): DeviceTensor | null {
    if (t === undefined || t === null) return null;
    const checked = this.#checkedOutputs.get(t as DeviceTensor);
    if (checked !== undefined && checked.plan === plan && checked.name === name && !(t as DeviceTensor).disposed) return t as DeviceTensor;
    const shapes = outputShapes(plan);
    const d = name === 'options.out'
      ? expectOutputTensor(t, name, shapes.outDtype, shapes.out, shapes.outStrides)
      : expectOutputTensor(t, name, 'fp32', shapes.lse, shapes.lseStrides);
    this.#deviceTensor(d, name);
    this.#checkedOutputs.set(d, { plan, name });
    return d;
  }

  /** Issues a prepared call (on this thread when nothing queued is still to issue, else behind it). */
  async #launchPrepared(args: DecodeArgs, options: CallOptions, call: PreparedCall): Promise<DecodeResult<Tensor>> {
    const slot = this.#slotOf(args, call.plan);
    const given = this.#outputs(options, call.plan);
    const mb = this.#mailbox;
    mb[MAILBOX.slot] = slot.big;
    mb[MAILBOX.outAddress] = given.out === null ? 0n : given.out.base;
    mb[MAILBOX.lseAddress] = given.lse === null ? 0n : given.lse.base;
    let queued: Promise<NativeDecodeOutcome> | undefined;
    try {
      queued = this.#issue(call);
    } catch (e) {
      if (!(e instanceof FlashMLAError) || e.code !== 'E_OUT_OF_MEMORY') throw e;
      // The pool met a new size and the device is full: collect what the caller dropped, once.
      await collectDroppedDeviceMemory();
      mb[MAILBOX.slot] = slot.big;
      mb[MAILBOX.outAddress] = given.out === null ? 0n : given.out.base;
      mb[MAILBOX.lseAddress] = given.lse === null ? 0n : given.lse.base;
      queued = this.#issue(call);
    }
    let outcome: NativeDecodeOutcome;
    if (queued === undefined) {
      outcome = {
        schedMetaRan: mb[MAILBOX.schedMetaRan] === 1n,
        out: mb[MAILBOX.outId] === 0n ? undefined : { id: Number(mb[MAILBOX.outId]), address: mb[MAILBOX.outPtr]! },
        lse: mb[MAILBOX.lseId] === 0n ? undefined : { id: Number(mb[MAILBOX.lseId]), address: mb[MAILBOX.lsePtr]! },
      };
    } else {
      const caller = new Error(); // the caller's stack, for errors that come back from the worker thread
      outcome = await queued.catch((e: unknown) => this.#fail(e, caller));
    }
    return this.#result(call.plan, outcome, given, call.shapes);
  }

  /** launch() of a prepared call; its errors as the FlashMLAErrors callers see. */
  #issue(call: PreparedCall): Promise<NativeDecodeOutcome> | undefined {
    try {
      return this.engine.launch(call.prepared);
    } catch (e) {
      return this.#fail(e, new Error());
    }
  }

  /** Counts the call and returns its outputs: the preallocated tensors, or the pooled blocks it got. */
  #result(plan: DecodePlan, outcome: NativeDecodeOutcome, given: { out: DeviceTensor | null; lse: DeviceTensor | null }, shapes = outputShapes(plan)): DecodeResult<DeviceTensor> {
    this.stats.decodes++;
    if (outcome.schedMetaRan) this.stats.schedMetaRuns++;
    const mint = (a: NativeAllocation, dtype: DType, shape: readonly number[], strides: readonly number[], n: number) =>
      mintDeviceTensor(this, { dtype, shape, strides, capacity: n, address: a.address, allocation: a.id });
    return {
      out: given.out ?? mint(outcome.out!, shapes.outDtype, shapes.out, shapes.outStrides, shapes.rows * 512),
      lse: given.lse ?? mint(outcome.lse!, 'fp32', shapes.lse, shapes.lseStrides, shapes.rows),
    };
  }

  /** Any call, validated and planned now and run on the worker thread (host tensors, validate: true). */
  async #decodeQueued(args: DecodeArgs, options: CallOptions): Promise<DecodeResult<Tensor>> {
    const caller = new Error(); // the caller's stack, for errors that come back from the worker thread
    if (options.validate === true) this.#notCapturing('a decode call with validate: true', 'options.validate');
    else this.#notCapturing('a decode call with host tensors', TENSOR_ARG_KEYS.find((k) => isGiven(args[k]) && isHostTensor(args[k]!)));
    let downloaded: Map<Tensor, HostTensor> | undefined;
    if (options.validate === true) downloaded = await this.#downloadForValidation(args);
    const plan = validateDecode(args, { downloaded });
    const operands = this.#operands(plan);
    const launch = planLaunch(plan, this.facts, (key) => launcherProblem(this.build, key, this.facts), (b) => (isHostTensor(b.tensor) ? null : this.#baseOf(b.tensor, b.view, 'tensor')));
    const hostOutputs = isHostTensor(plan.q.tensor);
    if (hostOutputs) expectNoOutputOptions(options, 'needs a DeviceTensor q (a host q gets host outputs)');
    const given = hostOutputs ? { out: null, lse: null } : this.#outputs(options, plan);
    const slot = this.#slotOf(args, plan);
    const rows = plan.b * plan.sQ * plan.hQ;
    const hostOut = hostOutputs ? new Uint16Array(rows * 512) : undefined;
    const hostLse = hostOutputs ? new Float32Array(rows) : undefined;
    const request = {
      ...requestFields(plan, launch, (k) => this.launcherIds.get(k)!),
      slot: slot.id, operands, hostOut, hostLse,
      outAddress: given.out?.base, lseAddress: given.lse?.base,
    };
    const outcome = await this.#withMemory(() => this.engine.decode(request).catch((e: unknown) => this.#fail(e, caller)));
    if (!hostOutputs) return this.#result(plan, outcome, given);
    this.stats.decodes++;
    if (outcome.schedMetaRan) this.stats.schedMetaRuns++;
    const shapes = outputShapes(plan);
    // Host outputs are contiguous: an lse the kernels wrote as a view is gathered (b·s_q·h_q floats).
    const lseView = { dtype: 'fp32' as const, shape: shapes.lse, strides: shapes.lseStrides, offset: 0 };
    const lse = isContiguous(lseView) ? hostLse! : (gather(hostLse!, lseView, rows) as Float32Array);
    return { out: { dtype: shapes.outDtype, shape: [...shapes.out], data: hostOut! }, lse: { dtype: 'fp32', shape: [...shapes.lse], data: lse } };
  }

  /**
   * One sparse prefill (docs/cuda-path.md#prefill). Host tensors are uploaded, run and downloaded on
   * the worker thread; a call whose tensors are all DeviceTensors is issued on the calling thread
   * (or behind queued work that has still to issue its own) and returns device tensors.
   * `fallback` (instances opened with 'auto'): a call whose tensors are all host tensors and which
   * this build or device cannot run goes there instead of failing.
   */
  async sparseFwd(args: SparseFwdArgs, options: CallOptions, fallback: (() => Promise<SparseFwdResult<HostTensor>>) | null): Promise<SparseFwdResult<Tensor>> {
    const caller = new Error(); // the caller's stack, for errors that come back from the worker thread
    this.#open();
    const given = SPARSE_FWD_TENSOR_KEYS.filter((k) => isGiven(args[k]));
    const hostArgs = given.filter((k) => isHostTensor(args[k]!));
    if (options.validate === true) this.#notCapturing('a prefill call with validate: true', 'options.validate');
    else if (hostArgs.length > 0) this.#notCapturing('a prefill call with host tensors', hostArgs[0]);
    for (const k of given) if (!isHostTensor(args[k]!)) this.#deviceTensor(args[k]!, k);
    const plan = options.validate === true ? await this.#validatePrefillOnDevice(args) : validateSparseFwd(args);
    let launch: PrefillLaunch;
    try {
      launch = planPrefill(plan, this.facts, (key) => launcherProblem(this.build, key, this.facts),
        (b) => (isHostTensor(b.tensor) ? null : this.#baseOf(b.tensor, b.view, 'tensor')));
    } catch (e) {
      // Everything planPrefill refuses is about this device's kernel, not the arguments' meaning:
      // the reference can run such a call.
      if (fallback !== null && e instanceof FlashMLAError && hostArgs.length === given.length) return fallback();
      throw e;
    }
    const hostOutputs = isHostTensor(plan.q.tensor);
    const rows = plan.sQ * plan.hQ;
    const operands: Record<string, bigint | ArrayBufferView | null> = {};
    for (const [name, b] of Object.entries(prefillOperandsOf(plan))) operands[name] = b === null ? null : this.#operand(b, name);
    const request = {
      ...prefillRequestFields(plan, launch, (k) => this.launcherIds.get(k)!),
      operands,
      hostOut: hostOutputs ? new Uint16Array(rows * plan.dV) : undefined,
      hostMaxLogits: hostOutputs ? new Float32Array(rows) : undefined,
      hostLse: hostOutputs ? new Float32Array(rows) : undefined,
    };
    const outcome: NativePrefillOutcome = await this.#withMemory(async () => {
      try {
        return await this.engine.prefill(request);
      } catch (e) {
        return this.#fail(e, caller);
      }
    });
    const outShape = [plan.sQ, plan.hQ, plan.dV];
    const rowShape = [plan.sQ, plan.hQ];
    if (hostOutputs) {
      return {
        out: { dtype: 'bf16', shape: outShape, data: request.hostOut! },
        maxLogits: { dtype: 'fp32', shape: rowShape, data: request.hostMaxLogits! },
        lse: { dtype: 'fp32', shape: rowShape, data: request.hostLse! },
      };
    }
    const mint = (a: NativeAllocation, dtype: DType, shape: number[]) =>
      mintDeviceTensor(this, { dtype, shape, strides: contiguousStrides(shape), capacity: numel(shape), address: a.address, allocation: a.id });
    return { out: mint(outcome.out!, 'bf16', outShape), maxLogits: mint(outcome.maxLogits!, 'fp32', rowShape), lse: mint(outcome.lse!, 'fp32', rowShape) };
  }

  /**
   * validate: true for a prefill: host copies of the device-resident q, indices, topkLength and
   * attnSink are validated first; then every kv row an index in [0, s_kv) names (whatever its
   * position, so whichever rows validateSparseFwd checks are there) is downloaded, consecutive rows
   * in one copy, and the whole call validated again with it.
   */
  async #validatePrefillOnDevice(args: SparseFwdArgs): Promise<PrefillPlan> {
    const downloaded = new Map<Tensor, HostTensor>();
    for (const name of ['q', 'indices', 'topkLength', 'attnSink'] as const) {
      const t = args[name];
      if (t === null || t === undefined || isHostTensor(t)) continue;
      const view = viewOf(t, name);
      downloaded.set(t, { dtype: view.dtype, shape: view.shape, strides: view.strides, offset: 0, data: await this.downloadExtent(t as DeviceTensorMeta, view) });
    }
    const plan = validateSparseFwd(args, downloaded);
    if (isHostTensor(plan.kv.tensor)) return plan;
    const idx = downloaded.get(plan.indices.tensor) ?? (plan.indices.tensor as HostTensor);
    const idxView = viewOf(idx, 'indices');
    const rows = namedRows(plan.sKv, (name) => {
      for (let s = 0; s < plan.sQ; s++) {
        for (let p = 0; p < plan.topk; p++) name(idx.data[idxView.offset + s * idxView.strides[0]! + p * idxView.strides[2]!]!);
      }
    });
    const kv = plan.kv.tensor as DeviceTensorMeta;
    const view = plan.kv.view;
    const rowStride = view.strides[0]!;
    const rowSpan = (plan.dQK - 1) * view.strides[2]! + 1;
    const data = new Uint16Array(Math.max(extentOf(view) - view.offset, 0));
    for (let j = 0; j < rows.length; j++) {
      const first = rows[j]!;
      while (j + 1 < rows.length && rows[j + 1] === rows[j]! + 1) j++;
      const from = first * rowStride;
      await this.engine.download(kv.address + BigInt((view.offset + from) * 2), data.subarray(from, rows[j]! * rowStride + rowSpan))
        .catch((e: unknown) => this.#fail(e, new Error()));
    }
    downloaded.set(plan.kv.tensor, { dtype: 'bf16', shape: view.shape, strides: view.strides, offset: 0, data });
    return validateSparseFwd(args, downloaded);
  }

  /** Resolves once the stream has completed everything issued before the call (docs/cuda-path.md#streams-and-events). */
  async synchronize(): Promise<void> {
    const caller = new Error(); // the caller's stack, for errors that come back from the worker thread
    this.#open();
    this.#notCapturing('synchronize()');
    await this.engine.synchronize().catch((e: unknown) => this.#fail(e, caller));
  }

  /** An event recorded on the stream after everything issued so far (docs/cuda-path.md#streams-and-events). */
  record(): CudaEvent {
    this.#open();
    this.#notCapturing('record()');
    let id: number;
    try {
      id = this.engine.recordEvent();
    } catch (e) {
      this.#fail(e, new Error());
    }
    return mintCudaEvent(this, id);
  }

  async synchronizeEvent(id: number): Promise<void> {
    const caller = new Error(); // the caller's stack, for errors that come back from the worker thread
    this.#open();
    await this.engine.synchronizeEvent(id).catch((e: unknown) => this.#fail(e, caller));
  }

  destroyEvent(id: number): void {
    if (!this.#disposed) this.engine.destroyEvent(id);
  }

  /**
   * Records the decode calls `record` makes on this instance as one CUDA graph
   * (docs/cuda-path.md#graphs): everything queued before is waited for, then the stream is captured
   * on the calling thread while `record` runs.
   */
  async captureGraph(record: () => unknown): Promise<CudaGraph> {
    this.#open();
    check(typeof record === 'function', 'E_VALUE', 'record', 'captureGraph takes a function that makes the decode calls to record');
    this.#notCapturing('captureGraph()');
    await this.synchronize();
    this.#open();
    this.#notCapturing('captureGraph()');
    try {
      this.engine.beginCapture();
    } catch (e) {
      this.#fail(e, new Error());
    }
    this.#capturing = true;
    let recorded = false;
    try {
      await record();
      recorded = true;
    } finally {
      this.#capturing = false;
      if (!recorded && !this.#disposed) {
        try {
          this.engine.endCapture(false);
        } catch {
          // The capture's own error is the one to report.
        }
      }
    }
    let id: number | undefined;
    try {
      id = this.engine.endCapture(true);
    } catch (e) {
      this.#fail(e, new Error());
    }
    return mintCudaGraph(this, id!);
  }

  async replayGraph(id: number): Promise<void> {
    this.#open();
    this.#notCapturing('replaying a graph');
    let queued: Promise<void> | undefined;
    try {
      queued = this.engine.launchGraph(id);
    } catch (e) {
      this.#fail(e, new Error());
    }
    if (queued !== undefined) {
      const caller = new Error(); // the caller's stack, for errors that come back from the worker thread
      await queued.catch((e: unknown) => this.#fail(e, caller));
    }
  }

  destroyGraph(id: number): void {
    if (!this.#disposed) this.engine.destroyGraph(id);
  }

  /** Frees the cached blocks of this instance's pool (blocks in use stay). */
  async emptyCache(): Promise<void> {
    const caller = new Error(); // the caller's stack, for errors that come back from the worker thread
    this.#open();
    this.#notCapturing('emptyCache()');
    await this.engine.emptyCache().catch((e: unknown) => this.#fail(e, caller));
  }

  /** Bytes held by this instance's pool of decode outputs, workspaces and sched-meta buffers (blocks in use and cached). */
  get pooledBytes(): number {
    return this.engine.pooledBytes();
  }

  /** The addon's operands: device base addresses, or host bytes from each view's offset. */
  #operands(plan: DecodePlan): Record<string, bigint | ArrayBufferView | null> {
    const out: Record<string, bigint | ArrayBufferView | null> = {};
    for (const [name, b] of Object.entries(operandsOf(plan))) out[name] = b === null ? null : this.#operand(b, name);
    return out;
  }

  #operand(b: Bound, name: string): bigint | ArrayBufferView {
    if (!isHostTensor(b.tensor)) return this.#baseOf(b.tensor, b.view, name);
    // A copy the caller cannot detach or shrink while the launch is queued.
    return b.tensor.data.slice(b.view.offset, Math.max(extentOf(b.view), b.view.offset));
  }

  /** validate: true — host copies of device-resident indices, block tables and lengths. */
  async #downloadForValidation(args: DecodeArgs): Promise<Map<Tensor, HostTensor>> {
    const map = new Map<Tensor, HostTensor>();
    const named: [string, Tensor | null | undefined][] = [
      ['blockTable', args.blockTable], ['cacheSeqlens', args.cacheSeqlens], ['indices', args.indices],
      ['extraIndicesInKvcache', args.extraIndicesInKvcache], ['topkLength', args.topkLength], ['extraTopkLength', args.extraTopkLength],
    ];
    for (const [name, t] of named) {
      if (t === null || t === undefined || isHostTensor(t)) continue;
      const view = viewOf(t, name);
      this.#deviceTensor(t, name);
      const data = await this.downloadExtent(t as DeviceTensorMeta, view);
      map.set(t, { dtype: view.dtype, shape: view.shape, strides: view.strides, offset: 0, data });
    }
    return map;
  }

  async dispose(): Promise<void> {
    if (this.#disposed) return;
    this.#disposed = true;
    await this.engine.dispose();
  }
}

/** Prepared calls kept per q: a layer's q meets a few sched metas and caches, not many. */
const PREPARED_PER_Q = 4;

/** A sched meta's state on a session: its slot id (and as a bigint for the mailbox). */
interface SessionSlot extends SchedMetaSlot {
  readonly id: number;
  readonly big: bigint;
}

/** The scalar arguments a plan depends on besides the tensors' geometry. */
const SCALAR_ARG_KEYS = ['headDimV', 'softmaxScale', 'causal', 'isFp8Kvcache'] as const;

/**
 * A validated, planned and prepared call of one set of device tensors and scalars. Its tensors are
 * held weakly (a cache entry must not keep device memory alive); a call matches when every tensor
 * argument is the same live object and every scalar the same value. Sound because a DeviceTensor's
 * geometry and address never change and validation reads nothing else of a device tensor.
 */
class PreparedCall {
  readonly #tensors: (WeakRef<DeviceTensor> | null)[];
  readonly #scalars: unknown[];

  /** Its outputs' shapes, made once: every output tensor of the call shares them (frozen). */
  readonly shapes: OutputShapes;

  constructor(args: DecodeArgs, readonly plan: DecodePlan, readonly prepared: NativePrepared) {
    this.shapes = outputShapes(plan);
    this.#tensors = TENSOR_ARG_KEYS.map((k) => (args[k] === undefined || args[k] === null ? null : new WeakRef(args[k] as DeviceTensor)));
    this.#scalars = SCALAR_ARG_KEYS.map((k) => args[k]);
  }

  matches(args: DecodeArgs): boolean {
    for (let i = 0; i < TENSOR_ARG_KEYS.length; i++) {
      const t = args[TENSOR_ARG_KEYS[i]!];
      const ref = this.#tensors[i]!;
      if (ref === null ? t !== undefined && t !== null : ref.deref() !== t || (t as DeviceTensor).disposed) return false;
    }
    for (let i = 0; i < SCALAR_ARG_KEYS.length; i++) if (!Object.is(args[SCALAR_ARG_KEYS[i]!], this.#scalars[i])) return false;
    return true;
  }
}

/** Whether every tensor argument is a DeviceTensor (the calls that can be prepared). */
function allDevice(args: DecodeArgs): boolean {
  for (const k of TENSOR_ARG_KEYS) {
    const t = args[k];
    if (t !== undefined && t !== null && !DeviceTensor.isDeviceTensor(t)) return false;
  }
  return true;
}

/** The output shapes and strides (frozen) and dtype of a plan: out contiguous, lse as FlashMLA lays it out. */
interface OutputShapes {
  readonly outDtype: DType;
  readonly out: readonly number[];
  readonly outStrides: readonly number[];
  readonly lse: readonly number[];
  readonly lseStrides: readonly number[];
  readonly rows: number;
}

function outputShapes(plan: DecodePlan): OutputShapes {
  const out = [plan.b, plan.sQ, plan.hQ, 512];
  const lse = [plan.b, plan.hQ, plan.sQ];
  return {
    outDtype: plan.kind === 'dense' ? plan.dtype : 'bf16',
    out: Object.freeze(out), outStrides: Object.freeze(contiguousStrides(out)),
    lse: Object.freeze(lse), lseStrides: Object.freeze([...lseStrides(plan)]),
    rows: plan.b * plan.sQ * plan.hQ,
  };
}

/** Contiguous copy of a strided view whose elements [offset, extent) are in `raw` (offset 0). */
function gather(raw: DataOf[DType], view: View, n: number): DataOf[DType] {
  const out = new (raw.constructor as new (n: number) => DataOf[DType])(n);
  const rank = view.shape.length;
  const idx = new Array<number>(rank).fill(0);
  for (let i = 0; i < n; i++) {
    let o = 0;
    for (let d = 0; d < rank; d++) o += idx[d]! * view.strides[d]!;
    out[i] = raw[o]!;
    for (let d = rank - 1; d >= 0; d--) {
      if (++idx[d]! < view.shape[d]!) break;
      idx[d] = 0;
    }
  }
  return out;
}
