import { check, FlashMLAError } from '../errors.js';
import { DeviceTensor } from '../device-tensor.js';
import { ELEMENT_BYTES, type DataOf, type DType, type Tensor } from '../tensor.js';
import type { BackendChoice, DecodeArgs, SparseFwdArgs } from '../types.js';

/**
 * The values validated are the values used. A caller's argument object, tensor objects, shape
 * arrays and typed arrays can change between reads (getters, Proxies, subclasses with a lying
 * `length`, another thread, code that runs while a call awaits), and inherited properties can be
 * planted on Object.prototype. So every call reads its arguments exactly once, here: own
 * properties only, shapes and strides copied, typed arrays re-viewed through the intrinsic
 * %TypedArray% accessors, device tensors only when made by this package. Everything after this
 * reads the snapshot. (Tensor contents are not copied here: what concurrent writes to them can do
 * is said in docs/robustness.md#concurrent-writes; int32 tensors are copied by validation.)
 */

/** The decode arguments that are tensors. */
export const TENSOR_ARG_KEYS = [
  'q', 'kCache', 'blockTable', 'cacheSeqlens', 'indices', 'attnSink', 'extraKCache', 'extraIndicesInKvcache', 'topkLength', 'extraTopkLength',
] as const satisfies readonly (keyof DecodeArgs)[];

/** A base class whose constructor returns the object it is given, so a subclass can stamp private fields on any object. */
class Given {
  constructor(o: object) {
    return o;
  }
}

/**
 * The snapshots made here, recognised by a private field no other code can add or fake (a
 * WeakSet would cost a hash-table entry and garbage-collector work per call on the hot path).
 */
class Snapshot extends Given {
  #snapshot = true;

  /** Stamps a fresh object literal (before it is frozen) as a snapshot. */
  static stamp<T extends object>(o: T): T {
    return new Snapshot(o) as unknown as T;
  }

  static is(o: unknown): boolean {
    return typeof o === 'object' && o !== null && #snapshot in o;
  }
}

const TypedArrayPrototype = Object.getPrototypeOf(Uint8Array.prototype) as object;
const intrinsic = (key: PropertyKey) => Object.getOwnPropertyDescriptor(TypedArrayPrototype, key)!.get!;
const typedArrayTag = intrinsic(Symbol.toStringTag) as (this: unknown) => string | undefined;
const typedArrayLength = intrinsic('length') as (this: unknown) => number;
const typedArrayBuffer = intrinsic('buffer') as (this: unknown) => ArrayBufferLike;
const typedArrayByteOffset = intrinsic('byteOffset') as (this: unknown) => number;

const ARRAY_CLASS: Readonly<Record<DType, { readonly tag: string; readonly make: (b: ArrayBufferLike, o: number, n: number) => DataOf[DType] }>> = {
  bf16: { tag: 'Uint16Array', make: (b, o, n) => new Uint16Array(b, o, n) },
  fp16: { tag: 'Uint16Array', make: (b, o, n) => new Uint16Array(b, o, n) },
  fp32: { tag: 'Float32Array', make: (b, o, n) => new Float32Array(b, o, n) },
  int32: { tag: 'Int32Array', make: (b, o, n) => new Int32Array(b, o, n) },
  uint8: { tag: 'Uint8Array', make: (b, o, n) => new Uint8Array(b, o, n) },
};

/** Whether Object.prototype carries a `then`: every Promise resolved with a plain object would call it. */
export function expectNoThenPollution(): void {
  check(!('then' in Object.prototype), 'E_VALUE', undefined,
    'Object.prototype.then is defined (prototype pollution): every Promise resolved with a plain object would call it, ' +
      'so no result could be delivered; remove it');
}

/** One own property, read once (a getter runs once); inherited properties are never read. */
export function ownValue(o: object, key: string, name: string): unknown {
  try {
    // hasOwn runs no getter; the read then runs an own getter once (a Proxy answers each trap once).
    return Object.hasOwn(o, key) ? (o as Record<string, unknown>)[key] : undefined;
  } catch (e) {
    if (e instanceof FlashMLAError) throw e;
    throw withCause(new FlashMLAError('E_VALUE', `reading ${name} threw: ${describe(e)}`, name), e);
  }
}

function withCause(err: FlashMLAError, cause: unknown): FlashMLAError {
  Object.defineProperty(err, 'cause', { value: cause, configurable: true, writable: true });
  return err;
}

function describe(e: unknown): string {
  try {
    return e instanceof Error ? e.message : String(e);
  } catch {
    return 'an unprintable value';
  }
}

/** A copy of an array-like of numbers, each element read once (a Proxy answers once). */
function numbers(x: unknown, name: string, what: 'shape' | 'strides'): number[] {
  check(Array.isArray(x), what === 'shape' ? 'E_SHAPE' : 'E_STRIDE', name, `${name}.${what} must be an array`);
  try {
    const n = (x as unknown[]).length;
    check(Number.isSafeInteger(n) && n <= 16, what === 'shape' ? 'E_SHAPE' : 'E_STRIDE', name, `${name}.${what} has ${String(n)} entries`);
    const out = new Array<number>(n);
    for (let i = 0; i < n; i++) out[i] = (x as unknown[])[i] as number;
    return out;
  } catch (e) {
    if (e instanceof FlashMLAError) throw e;
    throw withCause(new FlashMLAError('E_VALUE', `reading ${name}.${what} threw: ${describe(e)}`, name), e);
  }
}

/**
 * A fresh view of a real typed array of the class `dtype` stores, over the same memory; anything
 * else (a look-alike object, a DataView, a typed array of another class) is refused.
 */
export function typedArrayOf(data: unknown, dtype: DType, name: string): DataOf[DType] {
  const cls = ARRAY_CLASS[dtype];
  const tag = typeof data === 'object' && data !== null ? typedArrayTag.call(data) : undefined;
  check(tag === cls.tag, 'E_DTYPE', name, () => `${name}.data must be a ${cls.tag} for dtype ${dtype}` + (tag ? `, got a ${tag}` : ''));
  const buffer = typedArrayBuffer.call(data);
  check(!isDetached(buffer), 'E_BUFFER', name, `${name}.data's buffer is detached (transferred or given away)`);
  return cls.make(buffer, typedArrayByteOffset.call(data), typedArrayLength.call(data));
}

const arrayBufferDetached = Object.getOwnPropertyDescriptor(ArrayBuffer.prototype, 'detached')?.get as ((this: ArrayBuffer) => boolean) | undefined;
const arrayBufferByteLength = Object.getOwnPropertyDescriptor(ArrayBuffer.prototype, 'byteLength')!.get as (this: ArrayBuffer) => number;

/** Whether a (non-shared) buffer is detached; Node 20 has no `detached` getter, where a zero-length probe view tells. */
function isDetached(buffer: ArrayBufferLike): boolean {
  if (buffer instanceof SharedArrayBuffer) return false;
  if (arrayBufferDetached !== undefined) return arrayBufferDetached.call(buffer as ArrayBuffer);
  if (arrayBufferByteLength.call(buffer as ArrayBuffer) > 0) return false;
  try {
    new Uint8Array(buffer, 0, 0);
    return false;
  } catch {
    return true;
  }
}

/** Elements a typed array still holds (0 once its buffer is detached or shrunk below it). */
export function liveLength(data: ArrayBufferView): number {
  return typedArrayLength.call(data);
}

/** A tensor argument read once: a DeviceTensor made by this package, or a snapshot of a host tensor. */
export function readTensor(t: unknown, name: string): Tensor {
  if (DeviceTensor.isDeviceTensor(t)) return t;
  check(t !== null && typeof t === 'object', 'E_VALUE', name, `${name} must be a tensor object`);
  const data = ownValue(t, 'data', `${name}.data`);
  check(data !== undefined, 'E_VALUE', name,
    `${name} must be a host tensor ({ dtype, shape, data }) or a DeviceTensor made by FlashMLA.upload/allocate/wrap`);
  const dtype = ownValue(t, 'dtype', `${name}.dtype`);
  check(typeof dtype === 'string' && Object.hasOwn(ELEMENT_BYTES, dtype), 'E_DTYPE', name,
    () => `${name}.dtype must be one of ${Object.keys(ELEMENT_BYTES).join(', ')}, got ${typeof dtype === 'string' ? dtype : typeof dtype}`);
  const shape = numbers(ownValue(t, 'shape', `${name}.shape`), name, 'shape');
  const rawStrides = ownValue(t, 'strides', `${name}.strides`);
  const strides = rawStrides === undefined || rawStrides === null ? undefined : numbers(rawStrides, name, 'strides');
  const offset = ownValue(t, 'offset', `${name}.offset`);
  // Every field is an own property, so nothing inherited can stand in for one.
  return Object.freeze({
    dtype: dtype as DType,
    shape: Object.freeze(shape),
    strides: strides === undefined ? undefined : Object.freeze(strides),
    offset: offset === undefined || offset === null ? 0 : offset as number,
    data: typedArrayOf(data, dtype as DType, name),
  });
}

/** Reads one own argument: a tensor argument through readTensor (null and undefined as they are). */
type ArgReader = { tensor(k: string): Tensor | null | undefined; value(k: string): unknown };

/**
 * A call's arguments read once into a frozen snapshot (see above) by `build`, which lists every
 * key in FlashMLA's argument order as one object literal (getters run in that order, once each).
 * Every key is an own property of the snapshot (undefined when not given), so nothing planted on
 * Object.prototype can stand in for an argument that was left out. Idempotent: a snapshot is
 * returned as it is.
 */
function readArgsOnce<T>(args: unknown, build: (read: ArgReader) => Record<keyof T, unknown>): T {
  if (Snapshot.is(args)) return args as T;
  expectNoThenPollution();
  check(args !== null && typeof args === 'object', 'E_VALUE', 'args', 'args must be an object');
  const o = args;
  const out = build({
    tensor: (k) => {
      const v = ownValue(o, k, k);
      return v === null || v === undefined ? v : readTensor(v, k);
    },
    value: (k) => ownValue(o, k, k),
  });
  Object.freeze(Snapshot.stamp(out));
  return out as unknown as T;
}

/** The decode arguments, read once (see above). Idempotent: a snapshot is returned as it is. */
export function readDecodeArgs(args: unknown): DecodeArgs {
  return readArgsOnce<DecodeArgs>(args, ({ tensor, value }) => ({
    q: tensor('q'), kCache: tensor('kCache'), blockTable: tensor('blockTable'), cacheSeqlens: tensor('cacheSeqlens'),
    headDimV: value('headDimV'), schedMeta: value('schedMeta'), softmaxScale: value('softmaxScale'), causal: value('causal'),
    isFp8Kvcache: value('isFp8Kvcache'), indices: tensor('indices'), attnSink: tensor('attnSink'), extraKCache: tensor('extraKCache'),
    extraIndicesInKvcache: tensor('extraIndicesInKvcache'), topkLength: tensor('topkLength'), extraTopkLength: tensor('extraTopkLength'),
  }));
}

const OPTION_KEYS = ['backend', 'validate', 'threads', 'tier', 'kernels', 'out', 'lse'] as const;
/** The snapshot of no options (every key own and undefined), shared by the calls that pass none. */
const NO_OPTIONS: object = Object.freeze(Snapshot.stamp(Object.fromEntries(OPTION_KEYS.map((k) => [k, undefined]))));

/**
 * Per-call options read once, own properties only (the reference's `tier`/`kernels` pass through;
 * `out`/`lse` are checked by the backend that writes them, src/validate/outputs.ts).
 * Idempotent like readDecodeArgs: a snapshot is returned as it is.
 */
export function readDecodeOptions<O extends object>(options: O | undefined): O {
  if (options === undefined) return NO_OPTIONS as O;
  if (Snapshot.is(options)) return options;
  check(options === undefined || (options !== null && typeof options === 'object'), 'E_VALUE', 'options', 'options must be an object');
  const out: Record<string, unknown> = {};
  for (const k of OPTION_KEYS) out[k] = ownValue(options, k, `options.${k}`);
  Object.freeze(Snapshot.stamp(out));
  return out as O;
}

/** `options.backend` checked: 'auto' (when not given), 'cuda' or 'reference'. */
export function backendChoice(backend: unknown): BackendChoice {
  const b = backend ?? 'auto';
  check(b === 'auto' || b === 'cuda' || b === 'reference', 'E_VALUE', 'options.backend',
    () => `options.backend must be 'auto', 'cuda' or 'reference', got ${String(b)}`);
  return b;
}

/** The sparse prefill arguments that are tensors. */
export const SPARSE_FWD_TENSOR_KEYS = ['q', 'kv', 'indices', 'attnSink', 'topkLength'] as const satisfies readonly (keyof SparseFwdArgs)[];

/** `flashMlaSparseFwd`'s arguments, read once like readDecodeArgs (idempotent too). */
export function readSparseFwdArgs(args: unknown): SparseFwdArgs {
  return readArgsOnce<SparseFwdArgs>(args, ({ tensor, value }) => ({
    q: tensor('q'), kv: tensor('kv'), indices: tensor('indices'), smScale: value('smScale'),
    dV: value('dV'), attnSink: tensor('attnSink'), topkLength: tensor('topkLength'),
  }));
}
