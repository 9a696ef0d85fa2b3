/**
 * Hot-path token readers of the reference backend: one FP8 cache token → float32, with the values
 * of `dequantizeKCache` (bf16, docs/flashmla-interface.md#quantization) exactly. No validation and no allocation per call: the
 * caller has validated the cache (checkFp8Cache) and the indices.
 */

import { bf16BytesToF32, bf16ToF32, f32ToBf16 } from '../formats/bf16.js';
import { E4M3_TO_F32, E8M0_TO_F32 } from '../formats/fp8.js';
import { MODEL1, readF32LE, V32 } from './layout.js';

const scratch = new ArrayBuffer(4);
const scratchF32 = new Float32Array(scratch);
const scratchU32 = new Uint32Array(scratch);

/**
 * True when `fp8 × s` is a bf16 value for every e4m3 code, so the float32 product needs no
 * rounding to bf16: s is ±0, ±Inf, NaN, or ±2^k with k ≥ −124 (e4m3 values have 4 significant bits
 * and are multiples of 2^-9, bf16 reaches down to 2^-133). Every scale quantizeKCache writes
 * passes; arbitrary bytes (non-power-of-two float32 scales, e8m0 codes 0–2) take the rounding path.
 */
function isBf16ExactScale(s: number): boolean {
  scratchF32[0] = s;
  const bits = scratchU32[0]!;
  const exp = (bits >>> 23) & 0xff;
  const mant = bits & 0x7fffff;
  return exp === 0xff || (mant === 0 && (exp >= 3 || exp === 0));
}

function dequantTile(bytes: Uint8Array, at: number, n: number, s: number, dst: Float32Array, dstAt: number): void {
  if (isBf16ExactScale(s)) {
    for (let i = 0; i < n; i++) dst[dstAt + i] = E4M3_TO_F32[bytes[at + i]!]! * s;
  } else {
    for (let i = 0; i < n; i++) dst[dstAt + i] = bf16ToF32(f32ToBf16(E4M3_TO_F32[bytes[at + i]!]! * s));
  }
}

/**
 * Dequantizes the V32 token whose 656-byte row starts at `bytes[tokenByteOffset]` into
 * `dst[dstOffset …+576)`: 512 NoPE values (fp8 × float32 tile scale), then the 64 RoPE values
 * (docs/flashmla-interface.md#v32-cache).
 */
export function dequantTokenV32(bytes: Uint8Array, tokenByteOffset: number, dst: Float32Array, dstOffset: number): void {
  for (let j = 0; j < V32.numTiles; j++) {
    const s = readF32LE(bytes, tokenByteOffset + V32.scalesAt + 4 * j);
    dequantTile(bytes, tokenByteOffset + j * V32.tileSize, V32.tileSize, s, dst, dstOffset + j * V32.tileSize);
  }
  bf16BytesToF32(bytes, tokenByteOffset + V32.ropeAt, dst, dstOffset + V32.dNope, V32.dRope);
}

/**
 * Dequantizes token `row` of the MODEL1 block starting at `bytes[blockByteOffset]` (page block size
 * `B`) into `dst[dstOffset …+512)`: 448 NoPE values (fp8 × e8m0 tile scale), then the 64 RoPE values.
 * The token's record is at `row·576`, its scales at `B·576 + row·8` (docs/flashmla-interface.md#model1-cache).
 */
export function dequantTokenModel1(
  bytes: Uint8Array,
  blockByteOffset: number,
  B: number,
  row: number,
  dst: Float32Array,
  dstOffset: number,
): void {
  const record = blockByteOffset + row * MODEL1.recordBytes;
  const scales = blockByteOffset + B * MODEL1.recordBytes + row * MODEL1.scaleRecordBytes;
  for (let j = 0; j < MODEL1.numTiles; j++) {
    const s = E8M0_TO_F32[bytes[scales + j]!]!;
    dequantTile(bytes, record + j * MODEL1.tileSize, MODEL1.tileSize, s, dst, dstOffset + j * MODEL1.tileSize);
  }
  bf16BytesToF32(bytes, record + MODEL1.ropeAt, dst, dstOffset + MODEL1.dNope, MODEL1.dRope);
}
