/**
 * Byte layouts of FlashMLA's two FP8 sparse KV caches (docs/flashmla-interface.md#v32-cache, docs/flashmla-interface.md#model1-cache), as produced by its
 * `tests/quant.py`. All offsets are in bytes.
 */

import { check } from '../errors.js';
import type { KvLayout } from '../types.js';

/** V32 (DeepSeek V3.x, d_qk 576): one 656-byte row per token (docs/flashmla-interface.md#v32-cache). */
export const V32 = {
  dQK: 576,
  /** Dims 0–511, stored as e4m3fn. */
  dNope: 512,
  /** Dims 512–575, stored as bf16. */
  dRope: 64,
  tileSize: 128,
  numTiles: 4,
  /** 512 fp8 + 4·4 float32 scales + 64·2 bf16 RoPE. */
  bytesPerToken: 656,
  /** Within a token row: the 4 float32 (LE) scales. */
  scalesAt: 512,
  /** Within a token row: the 64 bf16 (LE) RoPE values. */
  ropeAt: 528,
} as const;

/**
 * MODEL1 (d_qk 512): API shape says 584 bytes per token, but each block holds B token records of
 * 576 bytes (448 fp8 + 64 bf16 RoPE) followed by B scale records of 8 bytes (7 e8m0 + 1 pad)
 * (docs/flashmla-interface.md#model1-cache).
 */
export const MODEL1 = {
  dQK: 512,
  /** Dims 0–447, stored as e4m3fn. */
  dNope: 448,
  /** Dims 448–511, stored as bf16. */
  dRope: 64,
  tileSize: 64,
  numTiles: 7,
  /** 448 + 128 + 7 + 1: the last dim of the API shape (`stride(1)`). */
  bytesPerToken: 584,
  /** One token record: 448 fp8 bytes then 64 bf16 RoPE values. */
  recordBytes: 576,
  /** Within a token record: the RoPE part. */
  ropeAt: 448,
  /** One scale record: 7 e8m0 scales and a pad byte. */
  scaleRecordBytes: 8,
} as const;

const isKvLayout = (x: unknown): x is KvLayout => x === 'v32' || x === 'model1';

/** Throws E_VALUE naming `name` unless `layout` is 'v32' or 'model1'. */
export function checkKvLayout(layout: unknown, name = 'layout'): asserts layout is KvLayout {
  check(isKvLayout(layout), 'E_VALUE', name, () => `${name} must be 'v32' or 'model1', got ${String(layout)}`);
}

/** Bytes per token of the API shape's last dim: 656 (V32) or 584 (MODEL1). */
export function bytesPerToken(layout: KvLayout): number {
  return layout === 'v32' ? V32.bytesPerToken : MODEL1.bytesPerToken;
}

/** Head dim of the dequantized cache (and of q): 576 (V32) or 512 (MODEL1). */
export function dQK(layout: KvLayout): number {
  return layout === 'v32' ? V32.dQK : MODEL1.dQK;
}

/** `quant.py`'s V32 block stride: it allocates B+1 rows per block and slices to B (docs/flashmla-interface.md#v32-cache). */
export function v32BlockStride(B: number): number {
  return (B + 1) * V32.bytesPerToken;
}

/** `quant.py`'s MODEL1 block stride: B·584 rounded up to a multiple of 576 (docs/flashmla-interface.md#model1-cache). */
export function model1BlockStride(B: number): number {
  return Math.ceil((B * MODEL1.bytesPerToken) / MODEL1.recordBytes) * MODEL1.recordBytes;
}

/** The block stride `quantizeKCache` produces for `layout` and page block size `B`. */
export function blockStride(layout: KvLayout, B: number): number {
  return layout === 'v32' ? v32BlockStride(B) : model1BlockStride(B);
}

/*
 * Where token `row` of the block starting at `blockBase` (page block size `B`) keeps its parts.
 * The three share one signature although only the MODEL1 scales depend on `B`.
 */

/** Offset of token `row`'s fp8 NoPE bytes (V32: 512 at row·656; MODEL1: 448 at row·576). */
export function nopeOffset(layout: KvLayout, blockBase: number, _B: number, row: number): number {
  return blockBase + row * (layout === 'v32' ? V32.bytesPerToken : MODEL1.recordBytes);
}

/** Offset of token `row`'s 64 bf16 RoPE values (little endian). */
export function ropeOffset(layout: KvLayout, blockBase: number, _B: number, row: number): number {
  return layout === 'v32'
    ? blockBase + row * V32.bytesPerToken + V32.ropeAt
    : blockBase + row * MODEL1.recordBytes + MODEL1.ropeAt;
}

/**
 * Offset of token `row`'s scales: V32: 4 float32 LE inside its row; MODEL1: 7 e8m0 bytes (+ pad)
 * in the scale records after all B token records of the block.
 */
export function scalesOffset(layout: KvLayout, blockBase: number, B: number, row: number): number {
  return layout === 'v32'
    ? blockBase + row * V32.bytesPerToken + V32.scalesAt
    : blockBase + B * MODEL1.recordBytes + row * MODEL1.scaleRecordBytes;
}

const scratch = new ArrayBuffer(4);
const scratchF32 = new Float32Array(scratch);
const scratchU32 = new Uint32Array(scratch);

/** Reads a V32 scale: a little-endian float32 at `bytes[at]` (any alignment, any host endianness). */
export function readF32LE(bytes: Uint8Array, at: number): number {
  scratchU32[0] = bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24);
  return scratchF32[0]!;
}

/** Writes `x` rounded to float32 as 4 little-endian bytes at `bytes[at]` (a JS NaN becomes 0x7FC00000). */
export function writeF32LE(bytes: Uint8Array, at: number, x: number): void {
  scratchF32[0] = x;
  const bits = scratchU32[0]!;
  bytes[at] = bits & 0xff;
  bytes[at + 1] = (bits >>> 8) & 0xff;
  bytes[at + 2] = (bits >>> 16) & 0xff;
  bytes[at + 3] = bits >>> 24;
}
