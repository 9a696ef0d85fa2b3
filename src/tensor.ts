import { check, FlashMLAError } from './errors.js';

/** Element types of the public API (docs/architecture.md#public-api). bf16/fp16 are raw bits in a Uint16Array. */
export type DType = 'bf16' | 'fp16' | 'fp32' | 'int32' | 'uint8';

/** The largest int32: FlashMLA takes strides, element offsets, device ordinals and ids as C ints. */
export const INT32_MAX = 2 ** 31 - 1;

/** The typed array that holds the elements of each dtype (bf16 and fp16 as raw bits). */
export interface DataOf {
  /** bfloat16 bits. */
  bf16: Uint16Array;
  /** IEEE half-precision bits. */
  fp16: Uint16Array;
  /** float32 values. */
  fp32: Float32Array;
  /** int32 values (indices, block tables, lengths). */
  int32: Int32Array;
  /** Bytes (FP8 KV caches). */
  uint8: Uint8Array;
}

export const ELEMENT_BYTES: Readonly<Record<DType, number>> = {
  bf16: 2,
  fp16: 2,
  fp32: 4,
  int32: 4,
  uint8: 1,
};

/** The typed-array class of each dtype. */
export const ARRAY_OF: Readonly<Record<DType, { new (n: number): DataOf[DType]; new (buffer: ArrayBufferLike, byteOffset?: number, length?: number): DataOf[DType]; name: string }>> = {
  bf16: Uint16Array,
  fp16: Uint16Array,
  fp32: Float32Array,
  int32: Int32Array,
  uint8: Uint8Array,
};

/** Fields every tensor has, on the host or on a device. Strides and offset are in elements. */
export interface TensorMeta<D extends DType = DType> {
  /** Element type. */
  readonly dtype: D;
  /** Sizes of the dims, outermost first. */
  readonly shape: readonly number[];
  /** Element strides; default: contiguous (row-major). */
  readonly strides?: readonly number[];
  /** Element offset of element [0, 0, ...] into `data` (or the device allocation); default 0. */
  readonly offset?: number;
}

/** A tensor whose elements live in a JavaScript typed array. */
export interface HostTensor<D extends DType = DType> extends TensorMeta<D> {
  /** The elements: a real typed array of the dtype's class (read once per call). */
  readonly data: DataOf[D];
}

/**
 * What every device tensor offers to validation. The CUDA backend's `DeviceTensor` class
 * implements it; validation needs no more than this (no element values are read on the host).
 */
export interface DeviceTensorMeta<D extends DType = DType> extends TensorMeta<D> {
  /** CUDA device ordinal the memory belongs to. */
  readonly device: number;
  /** Elements addressable from the base pointer (allocation size / element size). */
  readonly capacity: number;
  /** Byte address of element 0 of the allocation (before `offset`), for alignment checks. */
  readonly address: bigint;
  /** True once the memory was freed (the tensor or its instance was disposed). */
  readonly disposed: boolean;
}

/** A host tensor or a device tensor: what every tensor argument accepts. */
export type Tensor<D extends DType = DType> = HostTensor<D> | DeviceTensorMeta<D>;

/** A host tensor has its own `data` (an inherited one, planted on Object.prototype, does not count). */
export function isHostTensor(t: Tensor): t is HostTensor {
  return Object.hasOwn(t, 'data') && (t as HostTensor).data !== undefined;
}

/**
 * A field of a tensor object: for a plain object only its own property (Object.prototype may carry
 * planted ones); class instances (DeviceTensor) answer through their own getters.
 */
function field(t: object, key: string): unknown {
  const proto = Object.getPrototypeOf(t) as unknown;
  if (proto !== Object.prototype && proto !== null) return (t as Record<string, unknown>)[key];
  return Object.hasOwn(t, key) ? (t as Record<string, unknown>)[key] : undefined;
}

/** A tensor's geometry with defaults filled in. */
export interface View {
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly strides: readonly number[];
  readonly offset: number;
}

/** Row-major element strides of `shape` (the default when a tensor gives none). */
export function contiguousStrides(shape: readonly number[]): number[] {
  const strides = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i]!;
  }
  return strides;
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** 1 + the largest element offset the view touches; 0 for an empty view. */
export function extentOf(view: View): number {
  let last = view.offset;
  for (let i = 0; i < view.shape.length; i++) {
    if (view.shape[i] === 0) return 0;
    last += (view.shape[i]! - 1) * view.strides[i]!;
  }
  return last + 1;
}

export function isContiguous(view: View): boolean {
  const c = contiguousStrides(view.shape);
  return view.shape.every((d, i) => d <= 1 || view.strides[i] === c[i]);
}

const isCount = (x: unknown): x is number => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;

/** Element strides for `rank` dims: an array of that many non-negative safe integers, else E_STRIDE naming `name` (called `label`). */
export function expectStrides(x: unknown, rank: number, name: string, label: string): readonly number[] {
  check(Array.isArray(x) && x.length === rank, 'E_STRIDE', name, () => `${label} must be an array of ${rank} numbers`);
  const strides = x as readonly number[];
  check(strides.every(isCount), 'E_STRIDE', name, () => `${label} must be non-negative safe integers, got [${strides.join(', ')}]`);
  return strides;
}

/**
 * Checks that `t` is a well-formed tensor (of `dtype` when given, of rank `rank` when given) and
 * returns its view. Every failure is a FlashMLAError naming `name`.
 */
export function viewOf(t: unknown, name: string, rank?: number): View {
  check(t !== null && typeof t === 'object', 'E_VALUE', name, `${name} must be a tensor object`);
  const tt = {
    dtype: field(t, 'dtype'), shape: field(t, 'shape'), strides: field(t, 'strides'), offset: field(t, 'offset'),
    device: field(t, 'device'), capacity: field(t, 'capacity'), disposed: field(t, 'disposed'),
  } as Partial<HostTensor & DeviceTensorMeta>;
  check(typeof tt.dtype === 'string' && Object.hasOwn(ELEMENT_BYTES, tt.dtype), 'E_DTYPE', name,
    () => `${name}.dtype must be one of ${Object.keys(ELEMENT_BYTES).join(', ')}, got ${String(tt.dtype)}`);
  const dtype = tt.dtype as DType;
  check(Array.isArray(tt.shape), 'E_SHAPE', name, `${name}.shape must be an array`);
  const shape = tt.shape as readonly number[];
  check(shape.every(isCount), 'E_SHAPE', name,
    () => `${name}.shape must hold non-negative safe integers, got [${shape.join(', ')}]`);
  if (rank !== undefined) {
    check(shape.length === rank, 'E_SHAPE', name,
      () => `${name} must have ${rank} dims, got ${shape.length} ([${shape.join(', ')}])`);
  }
  const strides = tt.strides === undefined || tt.strides === null ? contiguousStrides(shape) : expectStrides(tt.strides, shape.length, name, `${name}.strides`);
  const offset = tt.offset ?? 0;
  check(isCount(offset), 'E_STRIDE', name, `${name}.offset must be a non-negative safe integer`);
  const view: View = { dtype, shape, strides, offset };

  if (isHostTensor(t as Tensor)) {
    const data = (t as HostTensor).data as unknown;
    const Expected = ARRAY_OF[dtype];
    check(data instanceof Expected, 'E_DTYPE', name,
      () => `${name}.data must be a ${Expected.name} for dtype ${dtype}`);
    const extent = extentOf(view);
    check(extent <= (data as ArrayLike<number>).length, 'E_BUFFER', name,
      () => `${name}.data holds ${(data as ArrayLike<number>).length} elements but shape [${shape.join(', ')}], ` +
        `strides [${strides.join(', ')}] and offset ${offset} need ${extent}` +
        ((data as Uint8Array).buffer.byteLength === 0 ? ' (is the buffer detached?)' : ''));
  } else {
    const dt = tt as DeviceTensorMeta;
    check(typeof dt.device === 'number' && typeof dt.capacity === 'number', 'E_VALUE', name,
      `${name} must be a host tensor ({ dtype, shape, data }) or a DeviceTensor`);
    check(!dt.disposed, 'E_DISPOSED', name, `${name} is a disposed DeviceTensor`);
    const extent = extentOf(view);
    check(extent <= dt.capacity, 'E_BUFFER', name,
      () => `${name} (device) holds ${dt.capacity} elements but shape [${shape.join(', ')}], ` +
        `strides [${strides.join(', ')}] and offset ${offset} need ${extent}`);
  }
  return view;
}

/**
 * A new, zero-filled, contiguous host tensor; `shared: true` backs it with a SharedArrayBuffer (for
 * KV caches and other large inputs the reference backend's workers then read in place).
 */
export function zeros<D extends DType>(dtype: D, shape: readonly number[], options: { shared?: boolean } = {}): HostTensor<D> {
  for (const d of shape) {
    if (!isCount(d)) throw new FlashMLAError('E_SHAPE', `shape must hold non-negative integers, got [${shape.join(', ')}]`, 'shape');
  }
  const n = numel(shape);
  // A SharedArrayBuffer-backed tensor reaches the reference backend's worker threads without a copy.
  const data = (options.shared === true
    ? new ARRAY_OF[dtype](new SharedArrayBuffer(n * ELEMENT_BYTES[dtype]), 0, n)
    : new ARRAY_OF[dtype](n)) as DataOf[D];
  return { dtype, shape: [...shape], data };
}

/** Wraps a typed array as a contiguous host tensor (no copy). */
export function tensor<D extends DType>(dtype: D, shape: readonly number[], data: DataOf[D]): HostTensor<D> {
  const t: HostTensor<D> = { dtype, shape: [...shape], data };
  viewOf(t, 'tensor');
  return t;
}

/** Element offset of a multi-index in a view. */
export function offsetAt(view: View, ...index: number[]): number {
  let o = view.offset;
  for (let i = 0; i < index.length; i++) o += index[i]! * view.strides[i]!;
  return o;
}
