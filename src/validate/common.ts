import { check, FlashMLAError } from '../errors.js';
import { softmaxScaleLog2 } from '../softmax-scale.js';
import type { Bound } from '../plan.js';
import { extentOf, INT32_MAX, isHostTensor, viewOf, type DType, type HostTensor, type Tensor, type View } from '../tensor.js';

/** Host copies of device-resident tensors, for value checks with `validate: true`. */
export type Downloaded = ReadonlyMap<Tensor, HostTensor>;

export function isGiven<T>(x: T | null | undefined): x is T {
  return x !== null && x !== undefined;
}

/** Validates a tensor argument's form and dtype; returns it bound to its view. */
export function bind(t: unknown, name: string, rank: number, dtypes: readonly DType[]): Bound {
  check(isGiven(t), 'E_VALUE', name, `${name} is required`);
  const view = viewOf(t, name, rank);
  check(dtypes.includes(view.dtype), 'E_DTYPE', name,
    () => `${name} must be ${dtypes.join(' or ')}, got ${view.dtype}`);
  if (view.dtype === 'int32' && isHostTensor(t as Tensor)) return ownCopy(t as HostTensor<'int32'>, view);
  return { tensor: t as Tensor, view };
}

/**
 * Indices, block tables and lengths are range-checked here and then dereferenced by the kernels:
 * the call keeps its own copy of the elements it reads, so a caller rewriting its buffer while the
 * call runs cannot change what was checked (they are small: at most b·s_q·topk values).
 */
function ownCopy(t: HostTensor<'int32'>, view: View): Bound {
  const extent = extentOf(view);
  const data = extent === 0 ? new Int32Array(0) : t.data.slice(view.offset, extent);
  const copy: HostTensor<'int32'> = { dtype: 'int32', shape: view.shape, strides: view.strides, offset: 0, data };
  return { tensor: copy, view: { ...view, offset: 0 } };
}

export function expectShape(b: Bound, name: string, expected: readonly (number | null)[], what?: string): void {
  const ok = expected.length === b.view.shape.length && expected.every((d, i) => d === null || d === b.view.shape[i]);
  check(ok, 'E_SHAPE', name,
    () => `${name} must have shape (${expected.map((d, i) => d ?? `*${i}`).join(', ')})${what ? ` ${what}` : ''}, ` +
      `got (${b.view.shape.join(', ')})`);
}

/** FlashMLA's "last dim contiguous" rule: stride 1, or size 1 (docs/flashmla-interface.md#sparse-host-layer step 7). */
export function expectLastDimContiguous(b: Bound, name: string): void {
  const n = b.view.shape.length;
  check(b.view.strides[n - 1] === 1 || b.view.shape[n - 1] === 1, 'E_STRIDE', name,
    () => `${name} must be contiguous in its last dim (stride 1), got strides (${b.view.strides.join(', ')})`);
}

/** torch's is_contiguous(): dims of size 1 may have any stride. */
export function expectContiguous(b: Bound, name: string): void {
  let expected = 1;
  for (let i = b.view.shape.length - 1; i >= 0; i--) {
    const d = b.view.shape[i]!;
    check(d <= 1 || b.view.strides[i] === expected, 'E_STRIDE', name,
      () => `${name} must be contiguous, got shape (${b.view.shape.join(', ')}) strides (${b.view.strides.join(', ')})`);
    expected *= d;
  }
}

/** docs/flashmla-interface.md#host-helpers int64_stride_to_int: every stride stored in the sparse params must fit an int. */
export function expectIntStrides(b: Bound, name: string): void {
  check(b.view.strides.every((s) => s <= INT32_MAX), 'E_STRIDE', name,
    () => `${name} has a stride above INT_MAX (${b.view.strides.join(', ')}), which FlashMLA rejects ("Stride exceeds int32 limit")`);
}

/**
 * TMA descriptors (docs/flashmla-interface.md#tma-alignment): base 16-byte aligned and every outer stride (size-1 dims
 * included: FlashMLA passes them all) a multiple of 16 bytes. The offset stands for the base
 * address (an uploaded host tensor keeps its geometry).
 */
export function expectTmaFriendly(b: Bound, name: string, elementBytes: number): void {
  const unit = 16 / elementBytes;
  check(b.view.offset % unit === 0, 'E_STRIDE', name,
    () => `${name}.offset must be a multiple of ${unit} elements (16-byte aligned base for TMA), got ${b.view.offset}`);
  // A descriptor takes every outer stride, also those of size-1 dims; only the innermost is unit.
  const last = b.view.strides.length - 1;
  b.view.strides.forEach((s, i) => {
    check(i === last || s % unit === 0, 'E_STRIDE', name,
      () => `${name}.strides[${i}] = ${s} must be a multiple of ${unit} elements (16 bytes, TMA)`);
  });
}

/** Host-readable data of a bound tensor (its own data, or the downloaded copy), or null. */
export function hostData(b: Bound, downloaded: Downloaded | undefined): { data: ArrayLike<number>; view: View } | null {
  if (isHostTensor(b.tensor)) return { data: b.tensor.data, view: b.view };
  const copy = downloaded?.get(b.tensor);
  if (copy === undefined) return null;
  const view = viewOf(copy, 'downloaded copy');
  return { data: copy.data, view };
}

/** A 1-D int32 tensor's values as a fresh Int32Array (host-readable only). */
export function readInt32Vector(b: Bound, downloaded: Downloaded | undefined): Int32Array | null {
  const h = hostData(b, downloaded);
  if (h === null) return null;
  const n = h.view.shape[0]!;
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) out[i] = h.data[h.view.offset + i * h.view.strides[0]!]!;
  return out;
}

export function expectFiniteScalar(x: unknown, name: string): number {
  check(typeof x === 'number' && Number.isFinite(x), 'E_VALUE', name,
    () => `${name} must be a finite number, got ${String(x)}`);
  return x;
}

/**
 * First non-finite element in `data[o + j·step]` for j < n, or −1: exponent bits all ones for
 * bf16 / fp16 raw bits, !isFinite for fp32. One loop per dtype keeps this hot check cheap.
 */
function firstNonFinite(dtype: string, data: ArrayLike<number>, o: number, step: number, n: number): number {
  if (dtype === 'bf16') {
    for (let j = 0; j < n; j++) if ((data[o + j * step]! & 0x7f80) === 0x7f80) return j;
  } else if (dtype === 'fp16') {
    for (let j = 0; j < n; j++) if ((data[o + j * step]! & 0x7c00) === 0x7c00) return j;
  } else {
    for (let j = 0; j < n; j++) if (!Number.isFinite(data[o + j * step]!)) return j;
  }
  return -1;
}

/** The error for a NaN or ±Infinity element of tensor `name` at index `idx` (its first in row-major order). */
export function nonFiniteError(name: string, idx: readonly number[]): FlashMLAError {
  return new FlashMLAError('E_VALUE', `${name}[${idx.join(', ')}] is not finite (NaN or Infinity); inputs must be finite`, name);
}

/** Rejects NaN/±Inf anywhere in a host-readable floating tensor (a NaN input gives NaN rows). */
export function expectFiniteValues(b: Bound, name: string, downloaded?: Downloaded): void {
  const h = hostData(b, downloaded);
  if (h === null) return;
  const { dtype, shape, strides, offset } = h.view;
  const rank = shape.length;
  if (shape.some((d) => d === 0)) return;
  const idx = new Array<number>(rank).fill(0);
  for (;;) {
    let o = offset;
    for (let i = 0; i < rank - 1; i++) o += idx[i]! * strides[i]!;
    const j = firstNonFinite(dtype, h.data, o, strides[rank - 1]!, shape[rank - 1]!);
    if (j >= 0) {
      idx[rank - 1] = j;
      throw nonFiniteError(name, idx);
    }
    let k = rank - 2;
    while (k >= 0 && ++idx[k]! === shape[k]) idx[k--] = 0;
    if (k < 0) return;
  }
}

/**
 * FlashMLA indexes outputs and split workspaces with int32 (b·s_q·h_q·512 elements and more), so
 * larger calls cannot run on a GPU; checked before any per-row loop, which also keeps a tensor whose
 * zero strides claim a huge shape from looping for days.
 */
export function expectRowsFit(b: number, sQ: number, hQ: number): void {
  check(b * sQ * hQ * 512 <= INT32_MAX, 'E_UNSUPPORTED', 'q',
    () => `b·s_q·h_q·512 = ${b * sQ * hQ * 512} must be below 2^31 (FlashMLA indexes outputs with int32); got b = ${b}, s_q = ${sQ}, h_q = ${hQ}`);
}

/** An int32 tensor the kernels index with int32 offsets (block tables, indices) has fewer than 2^31 elements. */
export function expectIndexable(b: Bound, name: string): void {
  let n = 1;
  for (const d of b.view.shape) n *= d;
  check(n <= INT32_MAX, 'E_UNSUPPORTED', name, () => `${name} has ${n} elements; FlashMLA indexes it with int32 (at most 2^31 - 1)`);
}

/** One rule for flags on both paths: absent (undefined) or a boolean. */
export function expectOptionalBoolean(x: unknown, name: string): void {
  check(x === undefined || typeof x === 'boolean', 'E_VALUE', name, () => `${name} must be a boolean, got ${typeof x}`);
}

/**
 * softmax_scale is a float in FlashMLA, and the kernels multiply logits by scale·log2(e) in float:
 * a scale that is not finite there (a finite double beyond float range, or one whose factor
 * overflows) would make every logit infinite.
 */
export function expectSoftmaxScale(x: unknown, kind: 'dense' | 'sparse'): number {
  const s = expectFiniteScalar(x, 'softmaxScale');
  check(Number.isFinite(Math.fround(s)) && Number.isFinite(softmaxScaleLog2(kind, s)), 'E_VALUE', 'softmaxScale',
    () => `softmaxScale = ${s} is beyond float32 range once multiplied by log2(e) (at most ${(3.4028234663852886e38 / Math.LOG2E).toPrecision(6)} in magnitude)`);
  return s;
}
