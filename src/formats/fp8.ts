/**
 * The two 8-bit formats of FlashMLA's FP8 KV caches (docs/flashmla-interface.md#kv-caches):
 * - float8_e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa bits; exponent 0 → subnormal m/8·2^-6;
 *   S.1111.111 is NaN; no infinities; max 448 (0x7E).
 * - float8_e8m0fnu: an unsigned biased exponent, value 2^(byte−127); 0xFF is NaN.
 * Encoders follow c10 (torch's CPU conversions, docs/flashmla-interface.md#fp8-formats), decoders are exact tables.
 */

const scratch = new ArrayBuffer(4);
const scratchF32 = new Float32Array(scratch);
const scratchU32 = new Uint32Array(scratch);

/** float32 value of every e4m3fn code. */
export const E4M3_TO_F32: Float32Array = (() => {
  const table = new Float32Array(256);
  for (let b = 0; b < 256; b++) {
    const exp = (b >>> 3) & 0xf;
    const mant = b & 7;
    const magnitude =
      exp === 0xf && mant === 7 ? NaN
        : exp === 0 ? mant * 2 ** -9
          : (8 + mant) * 2 ** (exp - 10);
    table[b] = b & 0x80 ? -magnitude : magnitude;
  }
  return table;
})();

/** float32 value of every e8m0fnu code: 2^(byte−127), NaN for 0xFF (2^-127 is a float32 subnormal). */
export const E8M0_TO_F32: Float32Array = (() => {
  const table = new Float32Array(256);
  for (let b = 0; b < 255; b++) table[b] = 2 ** (b - 127);
  table[255] = NaN;
  return table;
})();

/** The value of e4m3fn code `byte`. */
export function e4m3ToF32(byte: number): number {
  return E4M3_TO_F32[byte & 0xff]!;
}

/** 480.0f: the first magnitude c10 no longer rounds to a finite e4m3fn code. */
const E4M3_OVERFLOW_BITS = 0x43f00000;
/** 2^-6, the smallest normal e4m3fn magnitude. */
const E4M3_MIN_NORMAL_BITS = 0x3c800000;
/** 2^14: its float32 ulp is 2^-9, the e4m3fn subnormal step. */
const E4M3_SUBNORMAL_MAGIC = 16384;
const E4M3_SUBNORMAL_MAGIC_BITS = 0x46800000;

/**
 * e4m3fn code of `x`, first rounded to float32 (Math.fround semantics), converted exactly as c10's
 * `Float8_e4m3fn(float)` (docs/flashmla-interface.md#quantization, docs/flashmla-interface.md#fp8-formats): round-to-nearest-even, no saturation.
 * - |x| ≥ 480, ±Inf and NaN → 0x7F | sign (NaN; the sign of a NaN input is kept).
 * - |x| in (464, 480) rounds to the mantissa 111 of exponent 8, which is the NaN code.
 * - |x| = 464 exactly is the midpoint between 448 (0x7E, mantissa 110, even) and that NaN code
 *   (mantissa 111, odd); c10's RNE picks the even side, so 464 → 0x7E.
 * - |x| < 2^-6 rounds to a subnormal m·2^-9 (RNE; may round up to 2^-6, code 0x08).
 */
export function f32ToE4m3(x: number): number {
  scratchF32[0] = x;
  const bits = scratchU32[0]!;
  const sign = (bits >>> 24) & 0x80;
  const abs = bits & 0x7fffffff;
  if (abs >= E4M3_OVERFLOW_BITS) return sign | 0x7f;
  if (abs < E4M3_MIN_NORMAL_BITS) {
    // The float32 adder rounds |x| + 2^14 to a multiple of 2^-9 (RNE); the low bits are the code.
    scratchU32[0] = abs;
    scratchF32[0] = scratchF32[0]! + E4M3_SUBNORMAL_MAGIC;
    return sign | (scratchU32[0]! - E4M3_SUBNORMAL_MAGIC_BITS);
  }
  // Rebias the exponent (127 → 7) and round the 20 dropped mantissa bits half to even; a carry
  // moves into the exponent. The result is at most 0x7F because abs < 480.
  return sign | ((abs - 0x3c000000 + 0x7ffff + ((abs >>> 20) & 1)) >>> 20);
}

/** The value of e8m0fnu code `byte`: 2^(byte−127), NaN for 0xFF. */
export function e8m0ToF32(byte: number): number {
  return E8M0_TO_F32[byte & 0xff]!;
}

/**
 * e8m0fnu code of `x` (first rounded to float32), exactly as c10's `Float8_e8m0fnu(float)`
 * (docs/flashmla-interface.md#quantization, #fp8-formats): the biased float32 exponent, rounded up when the mantissa is at least one half
 * (ties go up because the implied leading 1 is the "odd" LSB of a normal number; for subnormals,
 * whose LSB is 0, an exact half rounds down). The sign is ignored; NaN and ±Inf → 0xFF, and
 * rounding up from exponent 254 also gives 0xFF.
 */
export function f32ToE8m0(x: number): number {
  scratchF32[0] = x;
  const bits = scratchU32[0]!;
  const exponent = (bits >>> 23) & 0xff;
  if (exponent === 0xff) return 0xff;
  const guard = bits & 0x400000;
  const roundOrSticky = bits & 0x3fffff;
  const lsb = exponent > 0;
  return guard !== 0 && (roundOrSticky !== 0 || lsb) ? exponent + 1 : exponent;
}
