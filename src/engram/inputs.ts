/**
 * Argument readers shared by the Engram math (docs/engram-math.md#inputs): every tensor argument
 * is a host tensor of an allowed dtype and shape, read once into a contiguous typed array (no copy
 * when it already is one), with NaN/±Inf rejected; options are finite numbers in their domain.
 * Every failure is a FlashMLAError naming the argument.
 */
import { check, FlashMLAError } from '../errors.js';
import { bitsViewOf } from '../formats/bf16.js';
import { isContiguous, isHostTensor, numel, viewOf, type DType, type HostTensor, type Tensor, type View } from '../tensor.js';

/** The floating dtypes the Engram math reads. */
export type FloatDType = 'bf16' | 'fp32';

/** A tensor argument read as contiguous float32 values (row-major in its shape). */
export interface FloatInput {
  readonly dtype: FloatDType;
  readonly shape: readonly number[];
  readonly values: Float32Array;
}

/**
 * The most elements one array of the CPU Engram math may hold (2^28: 1 GiB of float32). A V4.1
 * wkv weight has 157 M; the cap turns a shape that zero strides make huge into an error instead of
 * an allocation failure (docs/engram-math.md#inputs).
 */
export const MAX_ELEMENTS = 2 ** 28;

/** Rejects an array of `n` elements beyond {@link MAX_ELEMENTS}, naming `name`. */
export function checkElements(n: number, name: string): void {
  check(n <= MAX_ELEMENTS, 'E_UNSUPPORTED', name,
    () => `${name} needs ${n} elements; the CPU Engram math holds at most 2^28 (${MAX_ELEMENTS}) in one array`);
}

/** A named size: the expected extent of one dim and the name the message gives it. */
export type Dim = readonly [name: string, size: number] | null;

function hostView(t: unknown, name: string, rank: number, dtypes: readonly DType[]): View {
  check(t !== undefined && t !== null, 'E_VALUE', name, `${name} is required`);
  const view = viewOf(t, name, rank);
  check(isHostTensor(t as Tensor), 'E_DEVICE', name, `${name} must be a host tensor ({ dtype, shape, data }): the Engram math runs on the CPU`);
  check(dtypes.includes(view.dtype), 'E_DTYPE', name, () => `${name} must be ${dtypes.join(' or ')}, got ${view.dtype}`);
  return view;
}

function expectDims(view: View, name: string, dims: readonly Dim[]): void {
  const ok = dims.every((d, i) => d === null || view.shape[i] === d[1]);
  check(ok, 'E_SHAPE', name, () =>
    `${name} must have shape (${dims.map((d, i) => (d === null ? `*${i}` : `${d[0]}=${d[1]}`)).join(', ')}), got (${view.shape.join(', ')})`);
}

/** Multi-index of flat row-major element `flat` of `shape`, as "i, j, k". */
function indexOf(shape: readonly number[], flat: number): string {
  const idx = new Array<number>(shape.length);
  for (let i = shape.length - 1; i >= 0; i--) {
    idx[i] = flat % shape[i]!;
    flat = Math.floor(flat / shape[i]!);
  }
  return idx.join(', ');
}

/** Copies a strided view into a contiguous array of the same element type (row-major). */
function gather<A extends Float32Array | Uint16Array | Uint8Array>(data: A, view: View, out: A): A {
  const { shape, strides } = view;
  const rank = shape.length;
  const inner = shape[rank - 1]!;
  const step = strides[rank - 1]!;
  const rows = out.length / inner;
  const idx = new Array<number>(rank).fill(0);
  for (let r = 0; r < rows; r++) {
    let o = view.offset;
    for (let i = 0; i < rank - 1; i++) o += idx[i]! * strides[i]!;
    for (let j = 0; j < inner; j++) out[r * inner + j] = data[o + j * step]!;
    for (let k = rank - 2; k >= 0 && ++idx[k]! === shape[k]; k--) idx[k] = 0;
  }
  return out;
}

/**
 * Reads a bf16 or fp32 host tensor of shape `dims` as contiguous float32 values (bf16 widened
 * exactly). NaN and ±Inf are rejected: the math would carry them into every output of the token.
 */
export function readFloat(t: unknown, name: string, dims: readonly Dim[], dtypes: readonly FloatDType[] = ['bf16', 'fp32']): FloatInput {
  const view = hostView(t, name, dims.length, dtypes);
  expectDims(view, name, dims);
  const n = numel(view.shape);
  checkElements(n, name);
  const data = (t as HostTensor).data;
  let values: Float32Array;
  if (view.dtype === 'fp32') {
    values = isContiguous(view) ? (data as Float32Array).subarray(view.offset, view.offset + n) : gather(data as Float32Array, view, new Float32Array(n));
  } else {
    const bits = isContiguous(view) ? (data as Uint16Array).subarray(view.offset, view.offset + n) : gather(data as Uint16Array, view, new Uint16Array(n));
    values = new Float32Array(n);
    const out = bitsViewOf(values);
    for (let i = 0; i < n; i++) out[i] = bits[i]! << 16;
  }
  for (let i = 0; i < n; i++) {
    const v = values[i]!;
    // v − v is 0 for every finite v and NaN for NaN and ±Inf.
    if (v - v !== 0) {
      throw new FlashMLAError('E_VALUE', `${name}[${indexOf(view.shape, i)}] is not finite (${v}); inputs must be finite`, name);
    }
  }
  return { dtype: view.dtype as FloatDType, shape: view.shape, values };
}

/** Reads a uint8 host tensor of shape `dims` as a contiguous Uint8Array (no copy when contiguous). */
export function readBytes(t: unknown, name: string, dims: readonly Dim[]): Uint8Array {
  const view = hostView(t, name, dims.length, ['uint8']);
  expectDims(view, name, dims);
  const n = numel(view.shape);
  checkElements(n, name);
  const data = (t as HostTensor<'uint8'>).data;
  return isContiguous(view) ? data.subarray(view.offset, view.offset + n) : gather(data, view, new Uint8Array(n));
}

/** The first index in `bytes` whose code is one of `bad`, as a multi-index of `shape`, or null. */
export function findCode(bytes: Uint8Array, shape: readonly number[], isBad: (code: number) => boolean): string | null {
  for (let i = 0; i < bytes.length; i++) if (isBad(bytes[i]!)) return indexOf(shape, i);
  return null;
}

/** The rank of a tensor argument (0 when it is not a tensor-like object), for signatures that accept two ranks. */
export function rankOf(t: unknown): number {
  const shape = t !== null && typeof t === 'object' ? (t as { shape?: unknown }).shape : undefined;
  return Array.isArray(shape) ? shape.length : 0;
}

/**
 * A per-token flag list of length `tokens` (Uint8Array: nonzero = true, or an array of booleans),
 * as a Uint8Array of 0/1; null when absent.
 */
export function readTokenMask(x: unknown, name: string, tokens: number): Uint8Array | null {
  if (x === undefined || x === null) return null;
  const isBytes = x instanceof Uint8Array;
  check(isBytes || Array.isArray(x), 'E_VALUE', name, `${name} must be a Uint8Array or an array of booleans`);
  const list = x as ArrayLike<unknown>;
  check(list.length === tokens, 'E_SHAPE', name, () => `${name} must have one entry per token (${tokens}), got ${list.length}`);
  const out = new Uint8Array(tokens);
  for (let t = 0; t < tokens; t++) {
    const v = list[t];
    if (!isBytes) check(typeof v === 'boolean', 'E_VALUE', `${name}[${t}]`, () => `${name}[${t}] must be a boolean, got ${typeof v}`);
    out[t] = v ? 1 : 0;
  }
  return out;
}

/** An optional finite number option; `min`/`exclusive` give its lower bound. */
export function readNumber(x: unknown, name: string, fallback: number, min: number, exclusive: boolean): number {
  if (x === undefined) return fallback;
  check(typeof x === 'number' && Number.isFinite(x), 'E_VALUE', name, () => `${name} must be a finite number, got ${String(x)}`);
  check(exclusive ? x > min : x >= min, 'E_RANGE', name, () => `${name} must be ${exclusive ? '>' : '≥'} ${min}, got ${x}`);
  return x;
}

/** An optional positive integer option. */
export function readCount(x: unknown, name: string, fallback: number): number {
  if (x === undefined) return fallback;
  check(typeof x === 'number' && Number.isSafeInteger(x) && x >= 1, 'E_VALUE', name, () => `${name} must be a positive integer, got ${String(x)}`);
  return x;
}

/** An optional option with a fixed set of string values. */
export function readChoice<C extends string>(x: unknown, name: string, choices: readonly C[], fallback: C): C {
  if (x === undefined) return fallback;
  check(typeof x === 'string' && (choices as readonly string[]).includes(x), 'E_VALUE', name,
    () => `${name} must be ${choices.map((c) => `'${c}'`).join(' or ')}, got ${String(x)}`);
  return x as C;
}

/** An options argument: absent or a plain object. */
export function readOptions<O extends object>(x: O | undefined, name = 'options'): Partial<O> {
  if (x === undefined) return {};
  check(x !== null && typeof x === 'object' && !Array.isArray(x), 'E_VALUE', name, `${name} must be an object`);
  return x;
}

/** An arguments object: a plain object. */
export function readArgs<A extends object>(x: A, name = 'args'): A {
  check(x !== null && typeof x === 'object' && !Array.isArray(x), 'E_VALUE', name, `${name} must be an object`);
  return x;
}
