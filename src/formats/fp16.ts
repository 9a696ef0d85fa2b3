/**
 * IEEE binary16 <-> float32 (docs/architecture.md#public-api: fp16 tensors hold raw bits in a Uint16Array). Decoding is
 * a lookup in a 65,536-entry table; encoding is bit arithmetic on the float32 bits. Nothing here
 * allocates per call.
 */

import { bitsViewOf } from './bf16.js';

const scratch = new ArrayBuffer(4);
const scratchF32 = new Float32Array(scratch);
const scratchU32 = new Uint32Array(scratch);

/** The float32 bits of fp16 code `h` (exact; NaN payload and sign kept). */
function fp16BitsToF32Bits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0x1f) return sign | 0x7f800000 | (mant << 13);
  if (exp !== 0) return sign | ((exp + 112) << 23) | (mant << 13);
  if (mant === 0) return sign;
  // Subnormal m·2^-24: normalise the mantissa into float32's implicit-1 form.
  let e = 113;
  let m = mant;
  while ((m & 0x400) === 0) {
    m <<= 1;
    e--;
  }
  return sign | (e << 23) | ((m & 0x3ff) << 13);
}

/**
 * float32 value of every fp16 code. Built once when this module is first imported (65,536
 * integer operations, well under a millisecond) so that lookups need no "is it built yet" test.
 */
export const FP16_TO_F32: Float32Array = (() => {
  const table = new Float32Array(65536);
  const bits = new Uint32Array(table.buffer);
  for (let h = 0; h < 65536; h++) bits[h] = fp16BitsToF32Bits(h);
  return table;
})();

const FP16_TO_F32_BITS = new Uint32Array(FP16_TO_F32.buffer);

/** The float32 value of fp16 bits `bits`. */
export function fp16ToF32(bits: number): number {
  return FP16_TO_F32[bits & 0xffff]!;
}

/**
 * fp16 bits of `x`, first rounded to float32 (Math.fround semantics), then to binary16 by
 * round-to-nearest-even with subnormals. Overflow (|x| ≥ 65520) goes to ±Inf; ±Inf stay; NaN
 * becomes the quiet NaN 0x7E00 with the input's sign.
 */
export function f32ToFp16(x: number): number {
  scratchF32[0] = x;
  return f32BitsToFp16(scratchU32[0]!);
}

function f32BitsToFp16(bits: number): number {
  const sign = (bits >>> 16) & 0x8000;
  const abs = bits & 0x7fffffff;
  if (abs > 0x7f800000) return sign | 0x7e00;
  // 65520 (0x477FF000) is the midpoint between 65504 and 2^16; it ties to the even code, Inf.
  if (abs >= 0x477ff000) return sign | 0x7c00;
  if (abs < 0x38800000) {
    // Below 2^-14: adding 0.5 (whose float32 ulp is 2^-24, fp16's subnormal step) makes the
    // float32 adder round to a multiple of 2^-24 by RNE; the low bits are then the code.
    scratchU32[0] = abs;
    scratchF32[0] = scratchF32[0]! + 0.5;
    return sign | (scratchU32[0]! - 0x3f000000);
  }
  // Rebias the exponent (127 → 15) and round the 13 dropped mantissa bits half to even; a carry
  // moves into the exponent as it should.
  return sign | ((abs - 0x38000000 + 0xfff + ((abs >>> 13) & 1)) >>> 13);
}

/** Widens `n` fp16 codes `src[srcOffset …]` into `dst[dstOffset …]` (exact, bit-preserving). */
export function fp16ArrayToF32(
  src: Uint16Array,
  dst: Float32Array,
  srcOffset = 0,
  dstOffset = 0,
  n = src.length - srcOffset,
): void {
  const bits = bitsViewOf(dst);
  const d = (dst.byteOffset >>> 2) + dstOffset;
  for (let i = 0; i < n; i++) bits[d + i] = FP16_TO_F32_BITS[src[srcOffset + i]!]!;
}

/** Rounds `n` float32 values `src[srcOffset …]` to fp16 codes in `dst[dstOffset …]` (as `f32ToFp16`). */
export function f32ArrayToFp16(
  src: Float32Array,
  dst: Uint16Array,
  srcOffset = 0,
  dstOffset = 0,
  n = src.length - srcOffset,
): void {
  const bits = bitsViewOf(src);
  const s = (src.byteOffset >>> 2) + srcOffset;
  for (let i = 0; i < n; i++) dst[dstOffset + i] = f32BitsToFp16(bits[s + i]!);
}
