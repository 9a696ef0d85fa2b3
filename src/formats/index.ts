/**
 * `flashmla-node/formats`: the number formats of FlashMLA's tensors, bit-exact with torch/c10.
 * bf16 and fp16 round to nearest even and keep NaN and ±Infinity; e4m3 is `float8_e4m3fn` (no
 * infinities, saturating to ±448 as c10 does); e8m0 is the `float8_e8m0fnu` scale format of MODEL1
 * caches.
 */
export { bf16ToF32, f32ToBf16, bf16ArrayToF32, f32ArrayToBf16 } from './bf16.js';
export { fp16ToF32, f32ToFp16, fp16ArrayToF32, f32ArrayToFp16 } from './fp16.js';
export { e4m3ToF32, f32ToE4m3, e8m0ToF32, f32ToE8m0 } from './fp8.js';
