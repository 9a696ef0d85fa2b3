// Test fixtures for the Engram table tests: a safetensors writer, synthetic V4.1-style tables, and
// an independent decoder (textbook formulas and bit arithmetic, not src/formats).
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { EngramLayerLayout } from '../../../src/engram/layout.js';

/** A deterministic PRNG (mulberry32) so every test's bytes are reproducible. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface StTensor { name: string; dtype: string; shape: number[]; data: Uint8Array }

/** Bytes of a safetensors file holding `tensors` in the given order (header padded with spaces to 8). */
export function safetensorsBytes(tensors: StTensor[], metadata?: Record<string, string>): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata !== undefined) header.__metadata__ = metadata;
  let at = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [at, at + t.data.length] };
    at += t.data.length;
  }
  let json = JSON.stringify(header);
  while ((8 + json.length) % 8 !== 0) json += ' ';
  const text = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + text.length + at);
  new DataView(out.buffer).setBigUint64(0, BigInt(text.length), true);
  out.set(text, 8);
  let o = 8 + text.length;
  for (const t of tensors) {
    out.set(t.data, o);
    o += t.data.length;
  }
  return out;
}

export function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'engram-tables-'));
}

export interface SyntheticTable {
  rows: number;
  headDim: number;
  weights: Uint8Array; // rows × headDim e4m3 codes
  scales: Uint8Array; // rows × headDim/32 e8m0 codes
}

/**
 * Random e4m3 codes (every code, NaNs included) and e8m0 scales mostly near 127, with the corners
 * (0, 1, 253, 254, 255) planted in the first rows.
 */
export function syntheticTable(rows: number, headDim: number, seed: number): SyntheticTable {
  const r = rng(seed);
  const weights = new Uint8Array(rows * headDim);
  for (let i = 0; i < weights.length; i++) weights[i] = Math.floor(r() * 256);
  const blocks = headDim / 32;
  const scales = new Uint8Array(rows * blocks);
  for (let i = 0; i < scales.length; i++) scales[i] = 100 + Math.floor(r() * 40);
  const corners = [0, 1, 2, 253, 254, 255, 127, 120];
  for (let i = 0; i < Math.min(corners.length * blocks, scales.length); i++) scales[i] = corners[i % corners.length]!;
  return { rows, headDim, weights, scales };
}

/** The V4.1 shard of a synthetic table: an unrelated BF16 tensor first (odd length), then weight and scale. */
export function writeShard(path: string, t: SyntheticTable, layerId: number, extra: StTensor[] = []): void {
  const unrelated: StTensor = { name: `layers.${layerId}.attn.wq.weight`, dtype: 'BF16', shape: [3, 5], data: new Uint8Array(30).map((_, i) => i) };
  writeFileSync(path, safetensorsBytes([
    unrelated,
    { name: `layers.${layerId}.engram.embed.weight`, dtype: 'F8_E4M3', shape: [t.rows, t.headDim], data: t.weights },
    { name: `layers.${layerId}.engram.embed.scale`, dtype: 'F8_E8M0', shape: [t.rows, t.headDim / 32], data: t.scales },
    ...extra,
  ], { format: 'pt' }));
}

/** Packed 264-byte style records of rows `ids`. */
export function packedRows(t: SyntheticTable, ids: ArrayLike<number>): Uint8Array {
  const blocks = t.headDim / 32;
  const rowBytes = t.headDim + blocks;
  const out = new Uint8Array(ids.length * rowBytes);
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i]!;
    out.set(t.weights.subarray(id * t.headDim, (id + 1) * t.headDim), i * rowBytes);
    out.set(t.scales.subarray(id * blocks, (id + 1) * blocks), i * rowBytes + t.headDim);
  }
  return out;
}

/** e4m3fn by the textbook formula (bias 7, subnormals, S.1111.111 NaN). */
function e4m3(c: number): number {
  const sign = c & 0x80 ? -1 : 1;
  const e = (c >>> 3) & 15;
  const m = c & 7;
  if (e === 15 && m === 7) return NaN;
  return e === 0 ? sign * (m / 8) * 2 ** -6 : sign * (1 + m / 8) * 2 ** (e - 7);
}

/**
 * Float32 values of rows `ids`: fround(e4m3 · 2^(s − 127)); a NaN (e4m3 0x7F/0xFF or scale 0xFF) is
 * the quiet NaN with the e4m3 code's sign bit, written as bits.
 */
export function decodeF32(t: SyntheticTable, ids: ArrayLike<number>): Float32Array {
  const out = new Float32Array(ids.length * t.headDim);
  const bits = new Uint32Array(out.buffer);
  const blocks = t.headDim / 32;
  for (let i = 0; i < ids.length; i++) {
    for (let j = 0; j < t.headDim; j++) {
      const id = ids[i]!;
      const s = t.scales[id * blocks + (j >> 5)]!;
      const code = t.weights[id * t.headDim + j]!;
      const v = e4m3(code) * 2 ** (s - 127);
      if (s === 255 || Number.isNaN(v)) bits[i * t.headDim + j] = (code & 0x80 ? 0xffc00000 : 0x7fc00000) >>> 0;
      else out[i * t.headDim + j] = v;
    }
  }
  return out;
}

/** bf16 bits of float32 values by round-to-nearest-even on the bits (NaN → quiet NaN, sign kept). */
export function toBf16(f: Float32Array): Uint16Array {
  const bits = new Uint32Array(f.buffer, f.byteOffset, f.length);
  const out = new Uint16Array(f.length);
  for (let i = 0; i < f.length; i++) {
    const b = bits[i]!;
    if ((b & 0x7fffffff) > 0x7f800000) {
      out[i] = ((b >>> 16) & 0x8000) | 0x7fc0;
      continue;
    }
    const lower = b & 0xffff;
    let upper = b >>> 16;
    if (lower > 0x8000 || (lower === 0x8000 && (upper & 1) === 1)) upper += 1;
    out[i] = upper;
  }
  return out;
}

/** Bit-for-bit equal float32 arrays (NaN signs and payloads included). */
export function sameF32(a: Float32Array, b: Float32Array): boolean {
  return a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

/** Bit-for-bit equal bf16 arrays. */
export function sameBf16(a: Uint16Array, b: Uint16Array): boolean {
  return a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

/** A layout for a synthetic table of `rows` rows (not real primes: the file format does not need them). */
export function fakeLayout(layerId: number, rows: number, heads = 4, n = 3): EngramLayerLayout {
  const cols = (n - 1) * heads;
  const primes = new Int32Array(cols);
  const base = Math.floor(rows / cols);
  for (let i = 0; i < cols; i++) primes[i] = i === cols - 1 ? rows - base * (cols - 1) : base;
  const offsets = new Int32Array(cols);
  for (let i = 1; i < cols; i++) offsets[i] = offsets[i - 1]! + primes[i - 1]!;
  const multipliers = BigInt64Array.from({ length: n }, (_, k) => 2n * BigInt(1_000_003 * (k + 1) + layerId) + 1n);
  return { layerId, primes, offsets, numEmbeddings: rows, multipliers };
}
