import { describe, expect, it } from 'vitest';
import {
  bf16ArrayToF32,
  bf16BytesToF32,
  bf16ToF32,
  f32ArrayToBf16,
  f32ToBf16,
} from '../../src/formats/bf16.js';
import { f32ArrayToFp16, f32ToFp16, FP16_TO_F32, fp16ArrayToF32, fp16ToF32 } from '../../src/formats/fp16.js';
import { E4M3_TO_F32, E8M0_TO_F32, e4m3ToF32, e8m0ToF32, f32ToE4m3, f32ToE8m0 } from '../../src/formats/fp8.js';

// Bit casts for the tests themselves (independent of the modules under test).
const castBuf = new ArrayBuffer(4);
const castF32 = new Float32Array(castBuf);
const castU32 = new Uint32Array(castBuf);
const fromBits = (bits: number): number => {
  castU32[0] = bits >>> 0;
  return castF32[0]!;
};
const toBits = (x: number): number => {
  castF32[0] = x;
  return castU32[0]!;
};

/** Value of a sign/exponent/mantissa code by the textbook formula, in float64. */
function formulaValue(code: number, expBits: number, mantBits: number, bias: number): number {
  const sign = (code >>> (expBits + mantBits)) & 1 ? -1 : 1;
  const e = (code >>> mantBits) & ((1 << expBits) - 1);
  const m = code & ((1 << mantBits) - 1);
  if (e === (1 << expBits) - 1) return m !== 0 ? NaN : sign * Infinity;
  if (e === 0) return sign * m * Math.pow(2, 1 - bias - mantBits);
  return sign * (1 + m / Math.pow(2, mantBits)) * Math.pow(2, e - bias);
}
const bf16Formula = (c: number): number => formulaValue(c, 8, 7, 127);
const fp16Formula = (c: number): number => formulaValue(c, 5, 10, 15);
/** e4m3fn: no infinities, only S.1111.111 is NaN (docs/flashmla-interface.md#quantization). */
function e4m3Formula(c: number): number {
  const sign = c & 0x80 ? -1 : 1;
  const e = (c >>> 3) & 15;
  const m = c & 7;
  if (e === 15 && m === 7) return NaN;
  if (e === 0) return sign * (m / 8) * Math.pow(2, -6);
  return sign * (1 + m / 8) * Math.pow(2, e - 7);
}

const isNaNCode = (c: number, expMask: number, mantMask: number): boolean =>
  (c & expMask) === expMask && (c & mantMask) !== 0;

/** For adjacent codes lo < hi of one sign, the expected code of their midpoint: the even one. */
const evenOf = (lo: number, hi: number): number => ((lo & 1) === 0 ? lo : hi);

describe('bf16', () => {
  it('decodes all 65,536 codes like the bit-level formula', () => {
    for (let c = 0; c < 65536; c++) {
      const want = bf16Formula(c);
      if (Number.isNaN(want)) expect(Number.isNaN(bf16ToF32(c))).toBe(true);
      else expect(Object.is(bf16ToF32(c), want), `code ${c.toString(16)}`).toBe(true);
    }
  });

  it('round-trips every code; NaN codes become the quiet NaN with their sign', () => {
    const codes = new Uint16Array(65536).map((_, i) => i);
    const floats = new Float32Array(65536);
    bf16ArrayToF32(codes, floats);
    const back = new Uint16Array(65536);
    f32ArrayToBf16(floats, back);
    for (let c = 0; c < 65536; c++) {
      const want = isNaNCode(c, 0x7f80, 0x7f) ? (c & 0x8000) | 0x7fc0 : c;
      expect(back[c], `code ${c.toString(16)}`).toBe(want);
      if (!isNaNCode(c, 0x7f80, 0x7f)) expect(f32ToBf16(bf16ToF32(c))).toBe(c);
    }
  });

  it('rounds midpoints between adjacent codes to even, and just off them to the nearer code', () => {
    // Positive codes c, c+1 for every finite c (0x7F7F → 0x7F80 is max-finite → Inf).
    const n = 0x7f80;
    const mids = new Float32Array(3 * n);
    for (let c = 0; c < n; c++) {
      const midBits = c * 65536 + 0x8000;
      const hiValue = c + 1 === 0x7f80 ? 2 ** 128 : bf16Formula(c + 1);
      // The bit construction is the exact midpoint.
      expect(fromBits(midBits)).toBe((bf16Formula(c) + hiValue) / 2);
      mids[3 * c] = fromBits(midBits);
      mids[3 * c + 1] = fromBits(midBits + 1);
      mids[3 * c + 2] = fromBits(midBits - 1);
    }
    for (const sign of [1, -1]) {
      const src = sign === 1 ? mids : mids.map((x) => -x);
      const out = new Uint16Array(3 * n);
      f32ArrayToBf16(src, out);
      const s = sign === 1 ? 0 : 0x8000;
      for (let c = 0; c < n; c++) {
        const want = [evenOf(c, c + 1) | s, (c + 1) | s, c | s];
        expect([out[3 * c], out[3 * c + 1], out[3 * c + 2]], `c ${c.toString(16)}`).toEqual(want);
        expect([f32ToBf16(src[3 * c]!), f32ToBf16(src[3 * c + 1]!), f32ToBf16(src[3 * c + 2]!)]).toEqual(want);
      }
    }
  });

  it('handles specials: ±0, ±Inf, overflow, NaN sign, float64 inputs rounded to float32 first', () => {
    expect(f32ToBf16(0)).toBe(0);
    expect(f32ToBf16(-0)).toBe(0x8000);
    expect(f32ToBf16(Infinity)).toBe(0x7f80);
    expect(f32ToBf16(-Infinity)).toBe(0xff80);
    expect(f32ToBf16(3.4e38)).toBe(0x7f80); // rounds past bf16 max (≈3.39e38) to Inf
    expect(f32ToBf16(-3.4e38)).toBe(0xff80);
    expect(f32ToBf16(NaN)).toBe(0x7fc0);
    expect(f32ToBf16(fromBits(0xffc00001))).toBe(0xffc0);
    expect(f32ToBf16(fromBits(0x7f800001))).toBe(0x7fc0); // signalling NaN → quiet
    // 1 + 2^-8 + 2^-30 is above the midpoint in float64 but exactly the midpoint after fround.
    expect(f32ToBf16(1 + 2 ** -8 + 2 ** -30)).toBe(0x3f80);
    expect(f32ToBf16(2 ** -149)).toBe(0); // float32 subnormal below half of bf16's 2^-133
    expect(f32ToBf16(3 * 2 ** -134)).toBe(2); // 1.5 steps of 2^-133 → ties to even (2)
  });

  it('bulk conversions honour offsets and counts, also on odd-sized buffers', () => {
    const buffer = new ArrayBuffer(4 * 10 + 3);
    const dst = new Float32Array(buffer, 4, 8);
    dst.fill(7);
    bf16ArrayToF32(new Uint16Array([0x3f80, 0xc000, 0x4040, 0x7f80]), dst, 1, 2, 3);
    expect(Array.from(dst)).toEqual([7, 7, -2, 3, Infinity, 7, 7, 7]);
    const back = new Uint16Array(5);
    f32ArrayToBf16(dst, back, 2, 1, 3);
    expect(Array.from(back)).toEqual([0, 0xc000, 0x4040, 0x7f80, 0]);
    const bytes = new Uint8Array([0xaa, 0x80, 0xc0, 0x78, 0x40]);
    bf16BytesToF32(bytes, 1, dst, 0, 2);
    expect([dst[0], dst[1]]).toEqual([-4, 3.875]);
  });
});

describe('fp16', () => {
  it('decodes all 65,536 codes like the bit-level formula (table and scalar)', () => {
    expect(FP16_TO_F32.length).toBe(65536);
    for (let c = 0; c < 65536; c++) {
      const want = fp16Formula(c);
      if (Number.isNaN(want)) {
        expect(Number.isNaN(FP16_TO_F32[c]!)).toBe(true);
        expect(Number.isNaN(fp16ToF32(c))).toBe(true);
      } else {
        expect(Object.is(FP16_TO_F32[c], want), `code ${c.toString(16)}`).toBe(true);
        expect(Object.is(fp16ToF32(c), want)).toBe(true);
      }
    }
  });

  it('round-trips every code; NaN codes become the quiet NaN with their sign', () => {
    const codes = new Uint16Array(65536).map((_, i) => i);
    const floats = new Float32Array(65536);
    fp16ArrayToF32(codes, floats);
    const back = new Uint16Array(65536);
    f32ArrayToFp16(floats, back);
    for (let c = 0; c < 65536; c++) {
      const nan = isNaNCode(c, 0x7c00, 0x3ff);
      expect(back[c], `code ${c.toString(16)}`).toBe(nan ? (c & 0x8000) | 0x7e00 : c);
      if (!nan) expect(f32ToFp16(fp16ToF32(c))).toBe(c);
    }
  });

  it('rounds midpoints between adjacent codes to even, and just off them to the nearer code', () => {
    // Codes c, c+1 for every finite c ≥ 0; 0x7BFF → 0x7C00 is 65504 → Inf (whose "value" is 2^16).
    for (let c = 0; c < 0x7c00; c++) {
      const lo = fp16Formula(c);
      const hi = c + 1 === 0x7c00 ? 65536 : fp16Formula(c + 1);
      const mid = (lo + hi) / 2;
      expect(Math.fround(mid)).toBe(mid);
      const midBits = toBits(mid);
      for (const sign of [0, 0x8000]) {
        const neg = sign !== 0;
        const at = (bits: number): number => (neg ? -fromBits(bits) : fromBits(bits));
        expect(f32ToFp16(at(midBits)), `c ${c.toString(16)}`).toBe(evenOf(c, c + 1) | sign);
        expect(f32ToFp16(at(midBits + 1))).toBe((c + 1) | sign);
        expect(f32ToFp16(at(midBits - 1))).toBe(c | sign);
      }
    }
  });

  it('handles specials: ±0, ±Inf, overflow, underflow, NaN sign', () => {
    expect(f32ToFp16(0)).toBe(0);
    expect(f32ToFp16(-0)).toBe(0x8000);
    expect(f32ToFp16(Infinity)).toBe(0x7c00);
    expect(f32ToFp16(-Infinity)).toBe(0xfc00);
    expect(f32ToFp16(65520)).toBe(0x7c00);
    expect(f32ToFp16(65519.99)).toBe(0x7bff);
    expect(f32ToFp16(-1e9)).toBe(0xfc00);
    expect(f32ToFp16(2 ** -25)).toBe(0); // half of the smallest subnormal ties to even (0)
    expect(f32ToFp16(-(2 ** -26))).toBe(0x8000);
    expect(f32ToFp16(NaN)).toBe(0x7e00);
    expect(f32ToFp16(fromBits(0xff800001))).toBe(0xfe00);
  });

  it('bulk conversions honour offsets and counts', () => {
    const dst = new Float32Array(6).fill(5);
    fp16ArrayToF32(new Uint16Array([0x3c00, 0xc000, 0x0001, 0x7c00]), dst, 1, 3, 2);
    expect(Array.from(dst)).toEqual([5, 5, 5, -2, 2 ** -24, 5]);
    const back = new Uint16Array(4);
    f32ArrayToFp16(dst, back, 3, 2);
    expect(Array.from(back)).toEqual([0, 0, 0xc000, 0x0001]);
  });
});

describe('float8_e4m3fn', () => {
  it('decodes all 256 codes like the formula', () => {
    for (let c = 0; c < 256; c++) {
      const want = e4m3Formula(c);
      if (Number.isNaN(want)) {
        expect(c & 0x7f).toBe(0x7f);
        expect(Number.isNaN(e4m3ToF32(c))).toBe(true);
      } else {
        expect(Object.is(e4m3ToF32(c), want), `code ${c.toString(16)}`).toBe(true);
        expect(Object.is(E4M3_TO_F32[c], want)).toBe(true);
      }
    }
    expect(e4m3ToF32(0x7e)).toBe(448);
    expect(e4m3ToF32(0x01)).toBe(2 ** -9);
  });

  it('round-trips every code (NaN → 0x7F | sign)', () => {
    for (let c = 0; c < 256; c++) {
      // A NaN's sign is not reliably carried by a JS number, so NaN codes only need to stay NaN.
      if ((c & 0x7f) === 0x7f) expect(f32ToE4m3(e4m3ToF32(c)) & 0x7f).toBe(0x7f);
      else expect(f32ToE4m3(e4m3ToF32(c))).toBe(c);
    }
    expect(f32ToE4m3(fromBits(0xffc00000))).toBe(0xff);
    expect(f32ToE4m3(NaN)).toBe(0x7f);
  });

  it('rounds midpoints between adjacent finite codes to even, and just off them to the nearer code', () => {
    for (let c = 0; c < 0x7e; c++) {
      const mid = (e4m3Formula(c) + e4m3Formula(c + 1)) / 2;
      expect(Math.fround(mid)).toBe(mid);
      const midBits = toBits(mid);
      for (const sign of [0, 0x80]) {
        const at = (bits: number): number => (sign ? -fromBits(bits) : fromBits(bits));
        expect(f32ToE4m3(at(midBits)), `c ${c.toString(16)}`).toBe(evenOf(c, c + 1) | sign);
        expect(f32ToE4m3(at(midBits + 1))).toBe((c + 1) | sign);
        if (midBits > 0) expect(f32ToE4m3(at(midBits - 1))).toBe(c | sign);
      }
    }
  });

  it('does not saturate: c10 semantics above 448', () => {
    expect(f32ToE4m3(448)).toBe(0x7e);
    // 464 is the tie between 448 (mantissa 110, even) and the NaN code (111, odd): even wins.
    expect(f32ToE4m3(464)).toBe(0x7e);
    expect(f32ToE4m3(-464)).toBe(0xfe);
    expect(f32ToE4m3(fromBits(toBits(464) + 1))).toBe(0x7f);
    expect(f32ToE4m3(479.99)).toBe(0x7f);
    expect(f32ToE4m3(-479.99)).toBe(0xff);
    expect(f32ToE4m3(480)).toBe(0x7f);
    expect(f32ToE4m3(1e30)).toBe(0x7f);
    expect(f32ToE4m3(Infinity)).toBe(0x7f);
    expect(f32ToE4m3(-Infinity)).toBe(0xff);
  });

  it('handles zeros and values far below the subnormal range', () => {
    expect(f32ToE4m3(0)).toBe(0);
    expect(f32ToE4m3(-0)).toBe(0x80);
    expect(f32ToE4m3(2 ** -10)).toBe(0); // tie between 0 and 2^-9 → 0
    expect(f32ToE4m3(2 ** -149)).toBe(0);
    expect(f32ToE4m3(-(2 ** -100))).toBe(0x80);
    expect(f32ToE4m3(2 ** -6 - 2 ** -11)).toBe(0x08); // 7.75 steps rounds up into the normals
  });
});

describe('float8_e8m0fnu', () => {
  it('decodes 2^(byte−127), 0xFF → NaN', () => {
    for (let b = 0; b < 255; b++) {
      expect(e8m0ToF32(b)).toBe(Math.pow(2, b - 127));
      expect(E8M0_TO_F32[b]).toBe(Math.pow(2, b - 127));
    }
    expect(Number.isNaN(e8m0ToF32(0xff))).toBe(true);
  });

  it('encodes the docs/flashmla-interface.md#quantization examples and every power of two', () => {
    expect([2 ** -13, 2 ** -9, 2 ** -8, 2 ** -7, 2 ** -6].map(f32ToE8m0)).toEqual([0x72, 0x76, 0x77, 0x78, 0x79]);
    for (let k = -127; k <= 127; k++) expect(f32ToE8m0(2 ** k)).toBe(k + 127);
  });

  it('rounds the mantissa like c10: half and above go up (normals); sign ignored; specials → 0xFF', () => {
    expect(f32ToE8m0(1.5)).toBe(128);
    expect(f32ToE8m0(Math.fround(1.5 - 2 ** -23))).toBe(127);
    expect(f32ToE8m0(1.75 * 2 ** -9)).toBe(0x77);
    expect(f32ToE8m0(-4)).toBe(129);
    expect(f32ToE8m0(1.5 * 2 ** 127)).toBe(0xff); // rounds past the largest exponent
    expect(f32ToE8m0(Infinity)).toBe(0xff);
    expect(f32ToE8m0(-Infinity)).toBe(0xff);
    expect(f32ToE8m0(NaN)).toBe(0xff);
    // float32 subnormals: the implied bit is 0, so an exact half (2^-127) rounds down to code 0.
    expect(f32ToE8m0(0)).toBe(0);
    expect(f32ToE8m0(-0)).toBe(0);
    expect(f32ToE8m0(2 ** -128)).toBe(0);
    expect(f32ToE8m0(3 * 2 ** -128)).toBe(1);
  });
});
