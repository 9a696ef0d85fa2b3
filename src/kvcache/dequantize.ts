/**
 * FP8 sparse cache → bf16 K cache, as FlashMLA's `dequantize_k_cache` (docs/flashmla-interface.md#quantization): each NoPE value
 * is `bf16(float32(fp8 × scale))`, the RoPE part is copied. V32 multiplies in float32 then rounds to
 * bf16; MODEL1 multiplies two bf16 values, which torch also does in float32 and rounds to bf16, so
 * one formula serves both. With the power-of-two scales quantizeKCache writes, the product is exact.
 */

import { check } from '../errors.js';
import { f32ToBf16 } from '../formats/bf16.js';
import { E4M3_TO_F32, E8M0_TO_F32 } from '../formats/fp8.js';
import { isHostTensor, viewOf, zeros } from '../tensor.js';
import type { HostTensor, Tensor, View } from '../tensor.js';
import type { KvLayout } from '../types.js';
import {
  bytesPerToken,
  checkKvLayout,
  dQK,
  MODEL1,
  nopeOffset,
  readF32LE,
  ropeOffset,
  scalesOffset,
  V32,
} from './layout.js';

/**
 * Checks that `cache` (named `name`) is a host uint8 FP8 cache `(num_blocks, B, 1, 656 | 584)` in
 * `layout` that FlashMLA could read: last dim contiguous, `stride(1)` = bytes per token (docs/flashmla-interface.md#sparse-host-layer),
 * and for MODEL1 blocks that do not overlap (`stride(0) ≥ B·584`, docs/flashmla-interface.md#model1-cache). Returns its view.
 */
export function checkFp8Cache(cache: unknown, layout: KvLayout, name: string): View {
  const view = viewOf(cache, name, 4);
  check(isHostTensor(cache as Tensor), 'E_DEVICE', name, `${name} must be a host tensor`);
  check(view.dtype === 'uint8', 'E_DTYPE', name, () => `${name} must be uint8 (raw FP8 cache bytes), got ${view.dtype}`);
  const [numBlocks, B, hK, width] = view.shape as [number, number, number, number];
  const bpt = bytesPerToken(layout);
  check(hK === 1 && width === bpt, 'E_SHAPE', name,
    () => `${name} must be (num_blocks, B, 1, ${bpt}) for layout '${layout}', got [${view.shape.join(', ')}]`);
  const [s0, s1, , s3] = view.strides as [number, number, number, number];
  check(s3 === 1, 'E_STRIDE', name, () => `${name}'s last dim must be contiguous (stride 1), got ${s3}`);
  check(s1 === bpt, 'E_STRIDE', name, () => `${name}.stride(1) must be ${bpt} (bytes per token), got ${s1}`);
  if (layout === 'model1' && numBlocks > 1) {
    check(s0 >= B * MODEL1.bytesPerToken, 'E_STRIDE', name,
      () => `${name}.stride(0) must be at least B·584 = ${B * MODEL1.bytesPerToken} (MODEL1 block size), got ${s0}`);
  }
  return view;
}

/** Writes `n` values `bf16(fp8 × s)` of `bytes[at …]` into `out[outAt …]`. */
function dequantTile(bytes: Uint8Array, at: number, n: number, s: number, out: Uint16Array, outAt: number): void {
  for (let i = 0; i < n; i++) out[outAt + i] = f32ToBf16(E4M3_TO_F32[bytes[at + i]!]! * s);
}

/** Copies 64 little-endian bf16 RoPE values at `bytes[at]` into `out[outAt …]`. */
function copyRope(bytes: Uint8Array, at: number, out: Uint16Array, outAt: number): void {
  for (let i = 0; i < 64; i++) out[outAt + i] = bytes[at + 2 * i]! | (bytes[at + 2 * i + 1]! << 8);
}

/**
 * Dequantizes an FP8 cache `(num_blocks, B, 1, 656 | 584)` in `layout` to a new contiguous bf16
 * tensor `(num_blocks, B, 1, 576 | 512)`. Any block stride (and offset) is accepted.
 */
export function dequantizeKCache(cache: HostTensor<'uint8'>, layout: KvLayout): HostTensor<'bf16'> {
  checkKvLayout(layout, 'layout');
  const view = checkFp8Cache(cache, layout, 'cache');
  const [numBlocks, B] = view.shape as [number, number];
  const d = dQK(layout);
  const out = zeros('bf16', [numBlocks, B, 1, d]);
  const bytes = cache.data;
  const g = layout === 'v32' ? V32 : MODEL1;

  for (let n = 0; n < numBlocks; n++) {
    const blockBase = view.offset + n * view.strides[0]!;
    for (let t = 0; t < B; t++) {
      const outAt = (n * B + t) * d;
      const nope = nopeOffset(layout, blockBase, B, t);
      const scales = scalesOffset(layout, blockBase, B, t);
      for (let j = 0; j < g.numTiles; j++) {
        const s = layout === 'v32' ? readF32LE(bytes, scales + 4 * j) : E8M0_TO_F32[bytes[scales + j]!]!;
        dequantTile(bytes, nope + j * g.tileSize, g.tileSize, s, out.data, outAt + j * g.tileSize);
      }
      copyRope(bytes, ropeOffset(layout, blockBase, B, t), out.data, outAt + g.dNope);
    }
  }
  return out;
}
