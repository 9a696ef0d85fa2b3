/**
 * V4.1's activation quantisation in front of an FP8 Linear (docs/engram-math.md#activation-fp8):
 * per block of 32 consecutive values, amax = max(max |x|, 1e-4), scale = the smallest power of two
 * ≥ fp32(amax · fp32(1/448)) (a ue8m0 scale), code = e4m3(clamp(x / scale, ±448)) rounded to
 * nearest even; the Linear then reads code·scale.
 */
import { check, FlashMLAError } from '../errors.js';
import { f32ToE4m3 } from '../formats/fp8.js';

/** Values per activation scale (and per side of a weight scale block). */
export const FP8_BLOCK = 32;
/** The largest finite e4m3fn magnitude. */
const E4M3_MAX = 448;
/** amax floor: an all-zero block still gets a finite, nonzero scale. */
const AMAX_FLOOR = Math.fround(1e-4);
const INV_E4M3_MAX = Math.fround(1 / E4M3_MAX);

const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/**
 * 2^⌈log2 x⌉ for a positive normal float32 x, from its bits (exact at powers of two: a zero
 * mantissa keeps the exponent, any other mantissa bumps it).
 */
export function ceilPow2(x: number): number {
  scratchF32[0] = x;
  const bits = scratchU32[0]!;
  const exponent = ((bits >>> 23) & 0xff) + ((bits & 0x7fffff) !== 0 ? 1 : 0);
  scratchU32[0] = exponent << 23;
  return scratchF32[0]!;
}

/** An activation in e4m3fn codes with one power-of-two scale per block of 32 values. */
export interface QuantizedActivation {
  /** e4m3fn codes, one per value. */
  readonly codes: Uint8Array;
  /** One scale per block of 32 values (a power of two, as float32 holds it). */
  readonly scales: Float32Array;
}

/**
 * Quantises `x` (float32 values, blocks of 32 consecutive values; its length a multiple of 32) as
 * V4.1's reference does before an FP8 Linear (docs/engram-math.md#activation-fp8). Throws a
 * FlashMLAError for a length that is not a multiple of 32 or a NaN/Inf value.
 */
export function quantizeActivationE4m3(x: Float32Array): QuantizedActivation {
  check(x instanceof Float32Array, 'E_VALUE', 'x', 'x must be a Float32Array');
  check(x.length % FP8_BLOCK === 0, 'E_SHAPE', 'x', () => `x must hold whole blocks of ${FP8_BLOCK} values, got ${x.length}`);
  const blocks = x.length / FP8_BLOCK;
  const codes = new Uint8Array(x.length);
  const scales = new Float32Array(blocks);
  for (let b = 0; b < blocks; b++) {
    const o = b * FP8_BLOCK;
    let amax = 0;
    for (let j = 0; j < FP8_BLOCK; j++) {
      const v = x[o + j]!;
      if (v - v !== 0) throw new FlashMLAError('E_VALUE', `x[${o + j}] is not finite (${v})`, 'x');
      amax = Math.max(amax, Math.abs(v));
    }
    const scale = ceilPow2(Math.fround(Math.max(amax, AMAX_FLOOR) * INV_E4M3_MAX));
    scales[b] = scale;
    for (let j = 0; j < FP8_BLOCK; j++) {
      const q = Math.fround(x[o + j]! / scale);
      codes[o + j] = f32ToE4m3(Math.min(E4M3_MAX, Math.max(-E4M3_MAX, q)));
    }
  }
  return { codes, scales };
}
