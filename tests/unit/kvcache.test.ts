import { describe, expect, it } from 'vitest';
import { FlashMLAError } from '../../src/errors.js';
import { f32ToBf16 } from '../../src/formats/bf16.js';
import {
  blockStride,
  bytesPerToken,
  dQK,
  model1BlockStride,
  nopeOffset,
  ropeOffset,
  scalesOffset,
  v32BlockStride,
} from '../../src/kvcache/layout.js';
import { dequantizeKCache } from '../../src/kvcache/dequantize.js';
import { quantizeKCache, tileScale } from '../../src/kvcache/quantize.js';
import { dequantTokenModel1, dequantTokenV32 } from '../../src/kvcache/token.js';
import type { HostTensor } from '../../src/tensor.js';
import type { KvLayout } from '../../src/types.js';

// ---- independent helpers (float64, textbook formulas) ----

const castBuf = new ArrayBuffer(4);
const castF32 = new Float32Array(castBuf);
const castU32 = new Uint32Array(castBuf);
const f32FromBits = (bits: number): number => {
  castU32[0] = bits >>> 0;
  return castF32[0]!;
};

function bf16Value(c: number): number {
  const sign = c & 0x8000 ? -1 : 1;
  const e = (c >>> 7) & 0xff;
  const m = c & 0x7f;
  if (e === 0xff) return m ? NaN : sign * Infinity;
  if (e === 0) return sign * m * 2 ** -133;
  return sign * (1 + m / 128) * 2 ** (e - 127);
}

/** Finite non-negative e4m3fn values with their codes, ascending. */
const E4M3_POSITIVE: { code: number; value: number }[] = [];
for (let code = 0; code < 0x7f; code++) {
  const e = code >>> 3;
  const m = code & 7;
  E4M3_POSITIVE.push({ code, value: e === 0 ? (m / 8) * 2 ** -6 : (1 + m / 8) * 2 ** (e - 7) });
}

/** Nearest e4m3fn value of |q| ≤ 448 by search, ties to the even code; sign of q kept (incl. -0). */
function e4m3Nearest(q: number): number {
  const a = Math.abs(q);
  let best = E4M3_POSITIVE[0]!;
  for (const cand of E4M3_POSITIVE) {
    const dc = Math.abs(cand.value - a);
    const db = Math.abs(best.value - a);
    if (dc < db || (dc === db && (cand.code & 1) === 0)) best = cand;
  }
  return q < 0 || Object.is(q, -0) ? -best.value : best.value;
}

/** docs/flashmla-interface.md#quantization with float64 logs: the expected dequantized values of one tile (NaN tile → all NaN). */
function expectedTile(xs: number[]): { scale: number; values: number[] } {
  if (xs.some(Number.isNaN)) return { scale: NaN, values: xs.map(() => NaN) };
  const amax = Math.max(...xs.map(Math.abs));
  const y = Math.max(Math.fround(amax / 448), Math.fround(1e-4));
  const scale = 2 ** Math.ceil(Math.log2(y));
  const values = xs.map((x) => {
    const q = x / scale; // exact: scale is a power of two and the test data stay far from under/overflow
    expect(Math.abs(q)).toBeLessThanOrEqual(448);
    return e4m3Nearest(q) * scale;
  });
  return { scale, values };
}

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function gaussian(rand: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
}

/**
 * A bf16 cache (num_blocks, B, 1, d) of FlashMLA-like values (randn/10 clamped to [-1, 1]) with,
 * per token, some tiles of wide dynamic range, all zeros, tiny magnitudes or one outlier.
 */
function randomCache(numBlocks: number, B: number, d: number, seed: number): HostTensor<'bf16'> {
  const rand = mulberry32(seed);
  const data = new Uint16Array(numBlocks * B * d);
  for (let tok = 0; tok < numBlocks * B; tok++) {
    const kind = tok % 5;
    for (let i = 0; i < d; i++) {
      let x = Math.max(-1, Math.min(1, gaussian(rand) / 10));
      if (kind === 1) x *= 2 ** Math.floor(rand() * 40 - 20);
      else if (kind === 2 && i < 64) x = 0;
      else if (kind === 3 && i < 128) x *= 2 ** -14;
      else if (kind === 4 && i === 3) x = 300;
      data[tok * d + i] = f32ToBf16(x);
    }
  }
  return { dtype: 'bf16', shape: [numBlocks, B, 1, d], data };
}

const geometry = {
  v32: { nope: 512, tile: 128, tiles: 4 },
  model1: { nope: 448, tile: 64, tiles: 7 },
} as const;

/** Byte position of token (n, t) parts in quantizeKCache's output, from the layout tables of docs/flashmla-interface.md directly. */
function tokenPlaces(layout: KvLayout, B: number, n: number, t: number): { nope: number; rope: number; scales: number } {
  if (layout === 'v32') {
    const row = n * (B + 1) * 656 + t * 656;
    return { nope: row, rope: row + 528, scales: row + 512 };
  }
  const base = n * Math.ceil((B * 584) / 576) * 576;
  return { nope: base + t * 576, rope: base + t * 576 + 448, scales: base + B * 576 + t * 8 };
}

function expectError(fn: () => unknown, code: string, argument: string): void {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(FlashMLAError);
    expect((e as FlashMLAError).code).toBe(code);
    expect((e as FlashMLAError).argument).toBe(argument);
    expect((e as FlashMLAError).message).toContain(argument);
    return;
  }
  throw new Error(`expected a FlashMLAError ${code}`);
}

const hex = (bytes: Uint8Array, from: number, n: number): string =>
  Array.from(bytes.subarray(from, from + n), (b) => b.toString(16).padStart(2, '0')).join(' ');

// ---- tests ----

describe('layout', () => {
  it('block strides follow quant.py for both layouts', () => {
    const model1 = { 1: 1152, 2: 1728, 53: 31104, 61: 35712, 64: 37440, 69: 40320, 128: 74880, 256: 149760, 576: 336384 };
    for (const [B, stride] of Object.entries(model1)) {
      expect(model1BlockStride(Number(B))).toBe(stride);
      expect(blockStride('model1', Number(B))).toBe(stride);
      expect(stride % 576).toBe(0);
      expect(stride).toBeGreaterThanOrEqual(Number(B) * 584);
      expect(v32BlockStride(Number(B))).toBe((Number(B) + 1) * 656);
      expect(blockStride('v32', Number(B))).toBe((Number(B) + 1) * 656);
    }
    expect([bytesPerToken('v32'), bytesPerToken('model1'), dQK('v32'), dQK('model1')]).toEqual([656, 584, 576, 512]);
  });

  it('places token parts at the docs/flashmla-interface.md#worked-example offsets', () => {
    // MODEL1, B = 64, token 5 of block 2.
    expect(nopeOffset('model1', 74880, 64, 5)).toBe(77760);
    expect(ropeOffset('model1', 74880, 64, 5)).toBe(78208);
    expect(scalesOffset('model1', 74880, 64, 5)).toBe(111784);
    expect(nopeOffset('v32', 1000, 7, 3)).toBe(1000 + 3 * 656);
    expect(scalesOffset('v32', 1000, 7, 3)).toBe(1000 + 3 * 656 + 512);
    expect(ropeOffset('v32', 1000, 7, 3)).toBe(1000 + 3 * 656 + 528);
  });
});

describe('tileScale', () => {
  it('equals 2^ceil(log2(max(amax/448, 1e-4))) for every finite bf16 amax, in float64 and float32 logs', () => {
    const floor = Math.fround(1e-4);
    for (let c = 0; c < 0x7f80; c++) {
      const amax = bf16Value(c);
      const y = Math.max(Math.fround(amax / 448), floor);
      const got = tileScale(amax);
      expect(got, `amax ${amax}`).toBe(2 ** Math.ceil(Math.log2(y)));
      // torch takes log2 in float32: no bf16 amax lands close enough to a power of two to differ.
      expect(got).toBe(2 ** Math.ceil(Math.fround(Math.log2(y))));
    }
    expect(tileScale(0)).toBe(2 ** -13);
    expect(Number.isNaN(tileScale(NaN))).toBe(true);
    expect(tileScale(Infinity)).toBe(Infinity);
  });
});

describe('docs/flashmla-interface.md#worked-example worked examples', () => {
  it('V32 token, byte for byte', () => {
    const c = [1 / 256, 1 / 16, 1 / 4, 1.75 / 8];
    const numBlocks = 2;
    const B = 3;
    const cache = randomCache(numBlocks, B, 576, 1);
    const at = (1 * B + 2) * 576; // block 1, row 2
    for (let i = 0; i < 512; i++) cache.data[at + i] = f32ToBf16((((i % 128) % 16) - 8) * c[i >> 7]!);
    for (let r = 0; r < 64; r++) cache.data[at + 512 + r] = f32ToBf16((r - 32) / 8);

    const q = quantizeKCache(cache, 'v32');
    const tok = 1 * 4 * 656 + 2 * 656;
    expect(hex(q.data, tok + 512, 16)).toBe('00 00 00 39 00 00 00 3b 00 00 00 3c 00 00 80 3b');
    for (let j = 0; j < 3; j++) expect(hex(q.data, tok + 128 * j, 4)).toBe('f8 f6 f4 f2');
    expect(hex(q.data, tok + 384, 4)).toBe('fe fc fa f9');
    expect(q.data[tok + 15]).toBe(0x76);
    expect(hex(q.data, tok + 528, 8)).toBe('80 c0 78 c0 70 c0 68 c0');
    expect(hex(q.data, tok + 654, 2)).toBe('78 40');

    // Max dequantization error on this token is 0.0625 (docs/flashmla-interface.md#worked-example).
    const back = dequantizeKCache(q, 'v32');
    let maxErr = 0;
    for (let i = 0; i < 576; i++) {
      maxErr = Math.max(maxErr, Math.abs(bf16Value(back.data[at + i]!) - bf16Value(cache.data[at + i]!)));
    }
    expect(maxErr).toBe(0.0625);
  });

  it('MODEL1 token 5 of block 2 with B = 64, byte for byte at the documented offsets', () => {
    const c = [1 / 256, 1 / 16, 1 / 4, 1.75 / 8, 1 / 2, 1, 2];
    const B = 64;
    const cache = randomCache(3, B, 512, 2);
    const at = (2 * B + 5) * 512;
    for (let i = 0; i < 448; i++) cache.data[at + i] = f32ToBf16((((i % 64) % 16) - 8) * c[i >> 6]!);
    for (let r = 0; r < 64; r++) cache.data[at + 448 + r] = f32ToBf16((r - 32) / 8);

    const q = quantizeKCache(cache, 'model1');
    expect(q.strides).toEqual([37440, 584, 584, 1]);
    expect(q.data.length).toBe(3 * 37440);
    // NoPE [77760, 78208), RoPE [78208, 78336), scales [111784, 111791), pad 111791.
    for (let j = 0; j < 7; j++) {
      expect(hex(q.data, 77760 + 64 * j, 4)).toBe(j === 3 ? 'fe fc fa f9' : 'f8 f6 f4 f2');
    }
    expect(hex(q.data, 78208, 4)).toBe('80 c0 78 c0');
    expect(hex(q.data, 78334, 2)).toBe('78 40');
    expect(hex(q.data, 111784, 8)).toBe('72 76 78 77 79 7a 7b 00');
  });
});

describe.each(['v32', 'model1'] as const)('%s quantize / dequantize', (layout) => {
  const d = dQK(layout);
  const g = geometry[layout];

  it.each([1, 2, 53, 64, 69])('matches an independent float64 computation (B = %i)', (B) => {
    const numBlocks = B > 60 ? 2 : 3;
    const cache = randomCache(numBlocks, B, d, B * 7 + d);
    // A NaN-poisoned token (as FlashMLA's tests do for unused slots) and a single-NaN tile.
    const poisoned = numBlocks * B - 1;
    for (let i = 0; i < d; i++) cache.data[poisoned * d + i] = 0x7fc0;
    if (numBlocks * B > 2) cache.data[d + g.tile + 5] = 0xffc1; // token 1, tile 1: negative NaN

    const q = quantizeKCache(cache, layout);
    const stride0 = blockStride(layout, B);
    expect(q.shape).toEqual([numBlocks, B, 1, bytesPerToken(layout)]);
    expect(q.strides).toEqual([stride0, bytesPerToken(layout), bytesPerToken(layout), 1]);
    expect(q.data.length).toBe(numBlocks * stride0);

    const back = dequantizeKCache(q, layout);
    expect(back.shape).toEqual([numBlocks, B, 1, d]);
    const written = new Uint8Array(q.data.length);
    for (let n = 0; n < numBlocks; n++) {
      for (let t = 0; t < B; t++) {
        const tok = n * B + t;
        const places = tokenPlaces(layout, B, n, t);
        for (let j = 0; j < g.tiles; j++) {
          const xs = Array.from(cache.data.subarray(tok * d + j * g.tile, tok * d + (j + 1) * g.tile), bf16Value);
          const { scale, values } = expectedTile(xs);
          for (let i = 0; i < g.tile; i++) {
            const got = bf16Value(back.data[tok * d + j * g.tile + i]!);
            if (Number.isNaN(values[i]!)) expect(Number.isNaN(got)).toBe(true);
            else expect(Object.is(got, values[i]), `token ${tok} dim ${j * g.tile + i}`).toBe(true);
            const byte = q.data[places.nope + j * g.tile + i]!;
            if (Number.isNaN(scale)) expect(byte).toBe(0x7f); // our NaN choice, see quantize.ts
            written[places.nope + j * g.tile + i] = 1;
          }
          if (layout === 'v32') {
            const bits = new DataView(q.data.buffer).getUint32(places.scales + 4 * j, true);
            if (Number.isNaN(scale)) expect(Number.isNaN(f32FromBits(bits))).toBe(true);
            else expect(f32FromBits(bits)).toBe(scale);
            written.fill(1, places.scales + 4 * j, places.scales + 4 * j + 4);
          } else {
            expect(q.data[places.scales + j]).toBe(Number.isNaN(scale) ? 0xff : Math.log2(scale) + 127);
            written[places.scales + j] = 1;
          }
        }
        for (let r = 0; r < 64; r++) {
          const bits = cache.data[tok * d + g.nope + r]!;
          expect(q.data[places.rope + 2 * r]! | (q.data[places.rope + 2 * r + 1]! << 8)).toBe(bits);
          expect(back.data[tok * d + g.nope + r]).toBe(bits);
          written[places.rope + 2 * r] = written[places.rope + 2 * r + 1] = 1;
        }
      }
    }
    // Everything not written (padding rows, block padding, MODEL1 pad bytes) is zero.
    for (let i = 0; i < q.data.length; i++) if (!written[i]) expect(q.data[i], `byte ${i}`).toBe(0);
  });

  it('accepts non-contiguous input and produces the same bytes', () => {
    const numBlocks = 3;
    const B = 5;
    const cache = randomCache(numBlocks, B, d, 99);
    // FlashMLA's non_contiguousify (last dim +128, other dims +1) plus an offset; then a view that
    // also steps the last dim by 2.
    for (const step of [1, 2]) {
      const rowLen = (d + 128) * step;
      const strides = [(B + 1) * 2 * rowLen, 2 * rowLen, rowLen, step];
      const offset = 17;
      const data = new Uint16Array(offset + (numBlocks + 1) * strides[0]!).fill(0x7fc0);
      for (let n = 0; n < numBlocks; n++) {
        for (let t = 0; t < B; t++) {
          for (let i = 0; i < d; i++) {
            data[offset + n * strides[0]! + t * strides[1]! + i * step] = cache.data[(n * B + t) * d + i]!;
          }
        }
      }
      const view: HostTensor<'bf16'> = { dtype: 'bf16', shape: [numBlocks, B, 1, d], strides, offset, data };
      expect(quantizeKCache(view, layout).data).toEqual(quantizeKCache(cache, layout).data);
    }
  });

  it('dequantizes caches with another block stride and an offset', () => {
    const numBlocks = 3;
    const B = 4;
    const q = quantizeKCache(randomCache(numBlocks, B, d, 5), layout);
    const bpt = bytesPerToken(layout);
    const stride0 = B * bpt + 13; // compact plus an odd gap
    const offset = 11;
    const data = new Uint8Array(offset + numBlocks * stride0);
    for (let n = 0; n < numBlocks; n++) {
      data.set(q.data.subarray(n * q.strides![0]!, n * q.strides![0]! + B * bpt), offset + n * stride0);
    }
    const moved: HostTensor<'uint8'> = { dtype: 'uint8', shape: q.shape, strides: [stride0, bpt, bpt, 1], offset, data };
    expect(dequantizeKCache(moved, layout).data).toEqual(dequantizeKCache(q, layout).data);
  });
});

describe('token readers', () => {
  /** Compares a reader's float32 output with dequantizeKCache's bf16 output, NaN by NaN-ness. */
  function expectSame(got: Float32Array, at: number, want: Uint16Array, wantAt: number, n: number, what: string): void {
    for (let i = 0; i < n; i++) {
      const w = bf16Value(want[wantAt + i]!);
      const g = got[at + i]!;
      if (Number.isNaN(w)) expect(Number.isNaN(g), `${what} dim ${i}`).toBe(true);
      else expect(Object.is(g, w), `${what} dim ${i}: ${g} vs ${w}`).toBe(true);
    }
  }

  /** A uint8 cache of random bytes: arbitrary fp8 codes and arbitrary (non-power-of-two, NaN, tiny) scales. */
  function randomBytes(layout: KvLayout, numBlocks: number, B: number, seed: number): HostTensor<'uint8'> {
    const rand = mulberry32(seed);
    const stride0 = blockStride(layout, B);
    const data = new Uint8Array(numBlocks * stride0).map(() => Math.floor(rand() * 256));
    // Make sure the e8m0 codes below 2^-124 (bf16-rounding path) and NaN occur.
    if (layout === 'model1') data.set([0, 1, 2, 3, 0xff, 0x7f, 0x80], B * 576);
    const bpt = bytesPerToken(layout);
    return { dtype: 'uint8', shape: [numBlocks, B, 1, bpt], strides: [stride0, bpt, bpt, 1], data };
  }

  it.each([
    ['quantized', 0],
    ['random bytes', 1],
  ])('V32 reader equals dequantizeKCache (%s)', (_, random) => {
    const B = 7;
    const cache = random ? randomBytes('v32', 4, B, 3) : quantizeKCache(randomCache(4, B, 576, 3), 'v32');
    const want = dequantizeKCache(cache, 'v32').data;
    const buffer = new ArrayBuffer(8 + 4 * 600);
    const dst = new Float32Array(buffer, 8, 600).fill(-7);
    for (let n = 0; n < 4; n++) {
      for (let t = 0; t < B; t++) {
        dequantTokenV32(cache.data, n * cache.strides![0]! + t * 656, dst, 10);
        expectSame(dst, 10, want, (n * B + t) * 576, 576, `v32 block ${n} row ${t}`);
      }
    }
    expect([dst[9], dst[586]]).toEqual([-7, -7]);
  });

  it.each([
    ['quantized', 0],
    ['random bytes', 1],
  ])('MODEL1 reader equals dequantizeKCache (%s)', (_, random) => {
    const B = 9;
    const cache = random ? randomBytes('model1', 3, B, 4) : quantizeKCache(randomCache(3, B, 512, 4), 'model1');
    const want = dequantizeKCache(cache, 'model1').data;
    const dst = new Float32Array(520).fill(-7);
    for (let n = 0; n < 3; n++) {
      for (let t = 0; t < B; t++) {
        dequantTokenModel1(cache.data, n * cache.strides![0]!, B, t, dst, 3);
        expectSame(dst, 3, want, (n * B + t) * 512, 512, `model1 block ${n} row ${t}`);
      }
    }
    expect([dst[2], dst[515]]).toEqual([-7, -7]);
  });
});

describe('validation', () => {
  const good = randomCache(2, 3, 576, 8);
  const goodModel1 = randomCache(2, 3, 512, 8);

  it('quantizeKCache rejects bad layouts, dtypes, shapes, buffers and device tensors', () => {
    expectError(() => quantizeKCache(good, 'v4' as KvLayout), 'E_VALUE', 'layout');
    expectError(() => quantizeKCache({ ...good, dtype: 'fp16' } as unknown as HostTensor<'bf16'>, 'v32'), 'E_DTYPE', 'kCache');
    expectError(() => quantizeKCache({ ...good, shape: [2, 3, 576], data: good.data }, 'v32'), 'E_SHAPE', 'kCache');
    expectError(() => quantizeKCache({ ...good, shape: [2, 3, 2, 288] }, 'v32'), 'E_SHAPE', 'kCache');
    expectError(() => quantizeKCache(good, 'model1'), 'E_SHAPE', 'kCache');
    expectError(() => quantizeKCache(goodModel1, 'v32'), 'E_SHAPE', 'kCache');
    expectError(() => quantizeKCache({ ...good, data: good.data.subarray(1) }, 'v32'), 'E_BUFFER', 'kCache');
    const device = { dtype: 'bf16', shape: [2, 3, 1, 576], device: 0, capacity: 2 * 3 * 576, address: 0n, disposed: false };
    expectError(() => quantizeKCache(device as unknown as HostTensor<'bf16'>, 'v32'), 'E_DEVICE', 'kCache');
  });

  it('dequantizeKCache rejects bad layouts, dtypes, shapes, strides and buffers', () => {
    const v32 = quantizeKCache(good, 'v32');
    const m1 = quantizeKCache(goodModel1, 'model1');
    expectError(() => dequantizeKCache(v32, 'V32' as KvLayout), 'E_VALUE', 'layout');
    expectError(() => dequantizeKCache(good as unknown as HostTensor<'uint8'>, 'v32'), 'E_DTYPE', 'cache');
    expectError(() => dequantizeKCache(v32, 'model1'), 'E_SHAPE', 'cache');
    expectError(() => dequantizeKCache(m1, 'v32'), 'E_SHAPE', 'cache');
    expectError(() => dequantizeKCache({ ...v32, shape: [2, 3, 656], strides: [v32.strides![0]!, 656, 1] }, 'v32'), 'E_SHAPE', 'cache');
    expectError(() => dequantizeKCache({ ...v32, shape: [2, 3, 2, 328], strides: undefined }, 'v32'), 'E_SHAPE', 'cache');
    expectError(() => dequantizeKCache({ ...v32, strides: [v32.strides![0]!, 660, 656, 1] }, 'v32'), 'E_STRIDE', 'cache');
    expectError(() => dequantizeKCache({ ...v32, shape: [1, 3, 1, 656], strides: [2000, 656, 656, 2] }, 'v32'), 'E_STRIDE', 'cache');
    expectError(() => dequantizeKCache({ ...m1, strides: [3 * 584 - 1, 584, 584, 1] }, 'model1'), 'E_STRIDE', 'cache');
    expectError(() => dequantizeKCache({ ...m1, data: m1.data.subarray(0, 3 * 584 + 1000) }, 'model1'), 'E_BUFFER', 'cache');
    expectError(() => dequantizeKCache({ ...v32, offset: 700 }, 'v32'), 'E_BUFFER', 'cache');
    // Compact MODEL1 blocks (stride B·584) are fine.
    const compact = new Uint8Array(2 * 3 * 584);
    expect(dequantizeKCache({ dtype: 'uint8', shape: [2, 3, 1, 584], data: compact }, 'model1').shape).toEqual([2, 3, 1, 512]);
  });
});
