/**
 * bf16 K cache → FP8 sparse cache, byte-exact with FlashMLA's `tests/quant.py` (docs/flashmla-interface.md#kv-caches).
 */

import { check } from '../errors.js';
import { bf16ToF32 } from '../formats/bf16.js';
import { f32ToE4m3, f32ToE8m0 } from '../formats/fp8.js';
import { isHostTensor, viewOf } from '../tensor.js';
import type { HostTensor, Tensor } from '../tensor.js';
import type { KvLayout } from '../types.js';
import {
  blockStride,
  bytesPerToken,
  checkKvLayout,
  dQK,
  MODEL1,
  nopeOffset,
  ropeOffset,
  scalesOffset,
  V32,
  writeF32LE,
} from './layout.js';

const scratch = new ArrayBuffer(4);
const scratchF32 = new Float32Array(scratch);
const scratchU32 = new Uint32Array(scratch);

/** `1e-4` as quant.py's float32 `clamp_min` sees it (the scalar is cast to the tensor's dtype). */
const MIN_SCALE_INV = Math.fround(1e-4);

/**
 * The power-of-two scale of a tile whose max |x| is `amax` (docs/flashmla-interface.md#quantization step 2):
 * `s = 2^ceil(log2(max(float32(amax / 448), 1e-4)))`. Computed from the float32 bits instead of a
 * log: ceil(log2 y) is y's exponent, plus one unless y is a power of two. For bf16 inputs this is
 * what torch's float32 `log2().ceil()` gives too (tests/unit/kvcache.test.ts checks every bf16 amax).
 * NaN → NaN; +Inf → +Inf (torch: pow(2, ceil(log2(inf))) = inf).
 */
export function tileScale(amax: number): number {
  const y = Math.fround(amax / 448);
  if (y !== y || y === Infinity) return y;
  scratchF32[0] = y < MIN_SCALE_INV ? MIN_SCALE_INV : y;
  const bits = scratchU32[0]!;
  // y ≥ 1e-4 is a normal float32, so the exponent field is the binary exponent + 127.
  return 2 ** (((bits >>> 23) & 0xff) - 127 + ((bits & 0x7fffff) !== 0 ? 1 : 0));
}

/**
 * Quantizes one tile of `n` bf16 values `src[at + i·step]` into `out[outAt + i]` and returns its
 * scale. A NaN anywhere makes amax, the scale and every quotient NaN (docs/flashmla-interface.md#quantization). All NaN quotients
 * are stored as 0x7F: torch on CUDA produces canonical (positive) NaNs, and torch on CPU does too
 * except when the input element itself is a negative NaN (then c10 would write 0xFF, docs/flashmla-interface.md#fp8-formats).
 * The sign of a NaN carries no meaning in the cache, so we follow the CUDA behaviour throughout.
 */
function quantizeTile(src: Uint16Array, at: number, step: number, n: number, out: Uint8Array, outAt: number): number {
  // |x| ordered by its bits: for non-NaN bf16, (bits & 0x7FFF) is monotone in |x|.
  let maxAbsBits = 0;
  let sawNaN = false;
  for (let i = 0; i < n; i++) {
    const a = src[at + i * step]! & 0x7fff;
    if (a > 0x7f80) sawNaN = true;
    else if (a > maxAbsBits) maxAbsBits = a;
  }
  const s = sawNaN ? NaN : tileScale(bf16ToF32(maxAbsBits));
  for (let i = 0; i < n; i++) {
    // float32 division (exact rounding: x and s are float32, JS divides in float64 and
    // f32ToE4m3 rounds to float32, which is innocuous double rounding for a quotient).
    const q = bf16ToF32(src[at + i * step]!) / s;
    out[outAt + i] = q !== q ? 0x7f : f32ToE4m3(q);
  }
  return s;
}

/** Copies 64 bf16 RoPE values `src[at + i·step]` to little-endian bytes at `out[outAt]` (docs/flashmla-interface.md#quantization step 5). */
function copyRope(src: Uint16Array, at: number, step: number, out: Uint8Array, outAt: number): void {
  for (let i = 0; i < 64; i++) {
    const bits = src[at + i * step]!;
    out[outAt + 2 * i] = bits & 0xff;
    out[outAt + 2 * i + 1] = bits >>> 8;
  }
}

/**
 * Quantizes a bf16 K cache `(num_blocks, B, 1, d)` (d = 576 for 'v32', 512 for 'model1'; any
 * strides) into FlashMLA's FP8 layout: a uint8 tensor `(num_blocks, B, 1, 656 | 584)` with strides
 * `[blockStride, bpt, bpt, 1]` over a fresh, zero-initialised buffer of `num_blocks·blockStride`
 * bytes, where blockStride is quant.py's (`v32BlockStride`, `model1BlockStride`; docs/flashmla-interface.md#v32-cache, docs/flashmla-interface.md#model1-cache).
 * Padding rows, block padding and MODEL1's pad bytes are zero.
 */
export function quantizeKCache(kCache: HostTensor<'bf16'>, layout: KvLayout): HostTensor<'uint8'> {
  checkKvLayout(layout, 'layout');
  const view = viewOf(kCache, 'kCache', 4);
  check(isHostTensor(kCache as Tensor), 'E_DEVICE', 'kCache', 'kCache must be a host tensor (quantize a device cache after downloading it)');
  check(view.dtype === 'bf16', 'E_DTYPE', 'kCache', () => `kCache must be bf16, got ${view.dtype}`);
  const [numBlocks, B, hK, d] = view.shape as [number, number, number, number];
  // quant.py asserts h_k == 1 and d == 576 / 512 (docs/flashmla-interface.md#quantization).
  check(hK === 1, 'E_SHAPE', 'kCache', () => `kCache must be (num_blocks, B, 1, ${dQK(layout)}), got h_k = ${hK}`);
  check(d === dQK(layout), 'E_SHAPE', 'kCache',
    () => `kCache's last dim must be ${dQK(layout)} for layout '${layout}', got ${d}`);

  const stride0 = blockStride(layout, B);
  const bpt = bytesPerToken(layout);
  const out = new Uint8Array(numBlocks * stride0);
  const src = kCache.data;
  const [s0, s1, , s3] = view.strides as [number, number, number, number];
  const g = layout === 'v32' ? V32 : MODEL1;

  for (let n = 0; n < numBlocks; n++) {
    const blockBase = n * stride0;
    for (let t = 0; t < B; t++) {
      const at = view.offset + n * s0 + t * s1;
      const nope = nopeOffset(layout, blockBase, B, t);
      const scales = scalesOffset(layout, blockBase, B, t);
      for (let j = 0; j < g.numTiles; j++) {
        const s = quantizeTile(src, at + j * g.tileSize * s3, s3, g.tileSize, out, nope + j * g.tileSize);
        // V32 keeps the float32 scale, MODEL1 its e8m0 code (docs/flashmla-interface.md#quantization step 4).
        if (layout === 'v32') writeF32LE(out, scales + 4 * j, s);
        else out[scales + j] = f32ToE8m0(s);
      }
      copyRope(src, at + g.dNope * s3, s3, out, ropeOffset(layout, blockBase, B, t));
    }
  }
  return { dtype: 'uint8', shape: [numBlocks, B, 1, bpt], strides: [stride0, bpt, bpt, 1], data: out };
}
