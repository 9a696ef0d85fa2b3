/**
 * bfloat16 <-> float32 (docs/architecture.md#public-api: bf16 tensors hold raw bits in a Uint16Array). Used in the hot
 * loops of the reference backend, so nothing here allocates per call: scalar conversions bit-cast
 * through one shared scratch word, bulk conversions write through a cached Uint32Array view of the
 * Float32Array's buffer.
 */

const scratch = new ArrayBuffer(4);
const scratchF32 = new Float32Array(scratch);
const scratchU32 = new Uint32Array(scratch);

/** Bit pattern of a float32 NaN after rounding to bf16: quiet, sign kept. */
const BF16_QUIET_NAN = 0x7fc0;

/** The float32 value of bf16 bits `bits` (exact: bf16 is the top half of a float32). */
export function bf16ToF32(bits: number): number {
  scratchU32[0] = bits << 16;
  return scratchF32[0]!;
}

/**
 * bf16 bits of `x`, first rounded to float32 (Math.fround semantics, as a float32 tensor would
 * hold it), then to bf16 by round-to-nearest-even. Overflow goes to ±Inf by RNE; ±Inf stay; NaN
 * becomes the quiet NaN 0x7FC0 with the input's sign.
 */
export function f32ToBf16(x: number): number {
  scratchF32[0] = x;
  return f32BitsToBf16(scratchU32[0]!);
}

/** RNE from float32 bits to bf16 bits. */
function f32BitsToBf16(bits: number): number {
  if ((bits & 0x7fffffff) > 0x7f800000) return ((bits >>> 16) & 0x8000) | BF16_QUIET_NAN;
  // Adding 0x7FFF plus the kept LSB rounds half to even; a carry out of the mantissa bumps the
  // exponent, which is exactly how max-finite rounds up to Inf. Sum < 2^32 for non-NaN inputs.
  return (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16;
}

/** Uint32Array views of Float32Array buffers, so bulk code can write float bits directly. */
const bitViews = new WeakMap<ArrayBufferLike, Uint32Array>();

/**
 * A Uint32Array over the whole buffer of `f` (index `f.byteOffset / 4 + i` aliases `f[i]`),
 * created once per buffer. Recreated when a resizable buffer has grown past the cached view.
 */
export function bitsViewOf(f: Float32Array): Uint32Array {
  const buffer = f.buffer;
  let view = bitViews.get(buffer);
  if (view === undefined || view.length * 4 < f.byteOffset + f.byteLength) {
    // Explicit length: a buffer whose byteLength is not a multiple of 4 can still hold a
    // Float32Array (at an aligned offset), but `new Uint32Array(buffer)` would throw.
    view = new Uint32Array(buffer, 0, buffer.byteLength >>> 2);
    bitViews.set(buffer, view);
  }
  return view;
}

/**
 * Widens `n` bf16 codes `src[srcOffset …]` into `dst[dstOffset …]` (exact). `n` defaults to the
 * rest of `src`.
 */
export function bf16ArrayToF32(
  src: Uint16Array,
  dst: Float32Array,
  srcOffset = 0,
  dstOffset = 0,
  n = src.length - srcOffset,
): void {
  const bits = bitsViewOf(dst);
  const d = (dst.byteOffset >>> 2) + dstOffset;
  for (let i = 0; i < n; i++) bits[d + i] = src[srcOffset + i]! << 16;
}

/**
 * Widens `n` little-endian bf16 values stored at `bytes[byteOffset …]` (any alignment) into
 * `dst[dstOffset …]` (exact). This is how the FP8 KV caches store their RoPE part (docs/flashmla-interface.md#v32-cache, docs/flashmla-interface.md#model1-cache).
 */
export function bf16BytesToF32(
  bytes: Uint8Array,
  byteOffset: number,
  dst: Float32Array,
  dstOffset: number,
  n: number,
): void {
  const bits = bitsViewOf(dst);
  const d = (dst.byteOffset >>> 2) + dstOffset;
  for (let i = 0, o = byteOffset; i < n; i++, o += 2) {
    bits[d + i] = (bytes[o]! | (bytes[o + 1]! << 8)) << 16;
  }
}

/**
 * Rounds `n` float32 values `src[srcOffset …]` to bf16 codes in `dst[dstOffset …]` (RNE, as
 * `f32ToBf16`, but from the stored bits, so NaN signs are always kept). `n` defaults to the rest
 * of `src`.
 */
export function f32ArrayToBf16(
  src: Float32Array,
  dst: Uint16Array,
  srcOffset = 0,
  dstOffset = 0,
  n = src.length - srcOffset,
): void {
  const bits = bitsViewOf(src);
  const s = (src.byteOffset >>> 2) + srcOffset;
  for (let i = 0; i < n; i++) dst[dstOffset + i] = f32BitsToBf16(bits[s + i]!);
}
