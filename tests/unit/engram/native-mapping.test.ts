// The addon's EngramMapping (binding/engram_mapping.cc, docs/engram-native.md): table files written
// here with node:fs, gathered natively, compared with an independent decode through
// src/formats (E4M3_TO_F32, E8M0_TO_F32, f32ToBf16).
import { execFileSync } from 'node:child_process';
import { closeSync, ftruncateSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { afterAll, describe, expect, test } from 'vitest';
import { loadAddon, type NativeEngramMapping, type NativeEngramSpec } from '../../../src/addon.js';
import { f32ToBf16 } from '../../../src/formats/bf16.js';
import { E4M3_TO_F32, E8M0_TO_F32 } from '../../../src/formats/fp8.js';
import { rejectionOf } from '../../helpers/errors.js';

const loaded = loadAddon();
const EngramMapping = loaded.ok ? loaded.addon.EngramMapping : undefined;
const skipReason = !loaded.ok ? loaded.reason
  : EngramMapping === undefined ? `the addon at ${loaded.path} has no EngramMapping; rebuild it (\`npx cmake-js compile\`)` : null;
if (skipReason !== null) console.warn(`native-mapping tests skipped: ${skipReason}`);

const dir = mkdtempSync(join(tmpdir(), 'engram-native-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let files = 0;
const fileOf = (bytes: Uint8Array): string => {
  const path = join(dir, `t${files++}.bin`);
  writeFileSync(path, bytes);
  return path;
};

/** Deterministic bytes (an LCG's high bits). */
function randomBytes(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

const bitsOf = (f: Float32Array): Uint32Array => new Uint32Array(f.buffer, f.byteOffset, f.length);
const f32Bits = (x: number): number => bitsOf(Float32Array.of(x))[0]!;

/** The quiet NaN an fp8 NaN (weight 0x7F/0xFF or scale 0xFF) becomes: the weight's sign (docs/engram-native.md#dequantisation). */
const nanBits = (weight: number): number => ((weight & 0x80) << 24 | 0x7fc00000) >>> 0;

/** Reference value of one fp8 weight × scale, from the lookup tables (float64 product, then float32). */
const dequant = (weight: number, scale: number): number => Math.fround(E4M3_TO_F32[weight]! * E8M0_TO_F32[scale]!);

/** Expects `out` (float32 bits) to hold the exact dequantisation of `weights` (headDim per row) with `scales`. */
function expectF32(out: Float32Array, weights: Uint8Array, scales: Uint8Array, headDim: number): void {
  const got = bitsOf(out);
  for (let k = 0; k < weights.length; k++) {
    const w = weights[k]!, s = scales[Math.floor(k / headDim) * (headDim / 32) + Math.floor((k % headDim) / 32)]!;
    const want = dequant(w, s);
    const wantBits = Number.isNaN(want) ? nanBits(w) : f32Bits(want);
    if (got[k] !== wantBits) expect({ k, w, s, got: got[k]!.toString(16) }).toEqual({ k, w, s, got: wantBits.toString(16) });
  }
}

function expectBf16(out: Uint16Array, weights: Uint8Array, scales: Uint8Array, headDim: number): void {
  for (let k = 0; k < weights.length; k++) {
    const w = weights[k]!, s = scales[Math.floor(k / headDim) * (headDim / 32) + Math.floor((k % headDim) / 32)]!;
    const want = dequant(w, s);
    const wantBits = Number.isNaN(want) ? nanBits(w) >>> 16 : f32ToBf16(want);
    if (out[k] !== wantBits) expect({ k, w, s, got: out[k]!.toString(16) }).toEqual({ k, w, s, got: wantBits.toString(16) });
  }
}

/** Expects the bytes of `got` to equal those of `want` (vitest's element-wise toEqual is slow on megabytes). */
function expectSameBytes(got: ArrayBufferView, want: ArrayBufferView): void {
  const g = Buffer.from(got.buffer, got.byteOffset, got.byteLength), w = Buffer.from(want.buffer, want.byteOffset, want.byteLength);
  if (g.equals(w)) return;
  const at = g.findIndex((b, i) => b !== w[i]);
  expect({ length: g.length, at, byte: g[at] }).toEqual({ length: w.length, at, byte: w[at] });
}

/** A split fp8 table as a safetensors shard holds it: a header, all weights, then all scales. */
function splitTable(rows: number, headDim: number, seed: number) {
  const header = 77; // an odd length: nothing below may assume aligned rows
  const weights = randomBytes(rows * headDim, seed);
  const scales = randomBytes(rows * headDim / 32, seed + 1).map((b) => 100 + (b % 50)); // 2^-27 … 2^22
  const file = new Uint8Array(header + weights.length + scales.length + 5);
  file.set(randomBytes(header, seed + 2));
  file.set(weights, header);
  file.set(scales, header + weights.length);
  const spec: NativeEngramSpec = {
    rows, headDim, format: 'fp8', weightOffset: header, weightStride: headDim, scaleOffset: header + weights.length, scaleStride: headDim / 32,
  };
  return { path: fileOf(file), spec, weights, scales };
}

/** A packed fp8 table: each row's weights followed by its scales. */
function packedTable(rows: number, headDim: number, seed: number, at = 13) {
  const groups = headDim / 32, record = headDim + groups;
  const file = randomBytes(at + rows * record, seed);
  for (let r = 0; r < rows; r++) for (let g = 0; g < groups; g++) file[at + r * record + headDim + g] = 110 + ((r + g) % 30);
  const spec: NativeEngramSpec = { rows, headDim, format: 'fp8', weightOffset: at, weightStride: record, scaleOffset: at + headDim, scaleStride: record };
  return { path: fileOf(file), spec, file, record, at };
}

/** The weights and scales of rows `ids` of a packed table, as separate arrays. */
function pickPacked(t: ReturnType<typeof packedTable>, ids: Int32Array) {
  const hd = t.spec.headDim, groups = hd / 32;
  const weights = new Uint8Array(ids.length * hd), scales = new Uint8Array(ids.length * groups), records = new Uint8Array(ids.length * t.record);
  ids.forEach((id, i) => {
    const row = t.file.subarray(t.at + id * t.record, t.at + (id + 1) * t.record);
    records.set(row, i * t.record);
    weights.set(row.subarray(0, hd), i * hd);
    scales.set(row.subarray(hd), i * groups);
  });
  return { weights, scales, records };
}

describe.skipIf(skipReason !== null)('EngramMapping', () => {
  const open = (path: string, spec: NativeEngramSpec): NativeEngramMapping => new EngramMapping!(path, spec);

  test('split layout (weights region, then scales region): gatherRaw, gatherBaseline, gather to float32 and bf16', () => {
    const rows = 40, hd = 256;
    const t = splitTable(rows, hd, 7);
    const m = open(t.path, t.spec);
    expect(m.fileBytes).toBe(77 + rows * (hd + 8) + 5);
    // Huge pages only when asked for (a cold table's first touch of a row would read 2 MiB).
    expect(m.hugePages).toBe(false);
    const huge = new EngramMapping!(t.path, t.spec, { hugePages: true });
    expect(typeof huge.hugePages).toBe('boolean');
    huge.close();
    const ids = Int32Array.of(5, 0, 39, 5, 17);
    const weights = new Uint8Array(ids.length * hd), scales = new Uint8Array(ids.length * 8), records = new Uint8Array(ids.length * 264);
    ids.forEach((id, i) => {
      weights.set(t.weights.subarray(id * hd, (id + 1) * hd), i * hd);
      scales.set(t.scales.subarray(id * 8, (id + 1) * 8), i * 8);
      records.set(t.weights.subarray(id * hd, (id + 1) * hd), i * 264);
      records.set(t.scales.subarray(id * 8, (id + 1) * 8), i * 264 + hd);
    });
    const raw = new Uint8Array(ids.length * 264);
    m.gatherRaw(ids, raw);
    expectSameBytes(raw, records);
    const base = new Uint8Array(ids.length * 264);
    m.gatherBaseline(ids, base);
    expectSameBytes(base, records);
    const f = new Float32Array(ids.length * hd);
    m.gather(ids, f);
    expectF32(f, weights, scales, hd);
    const b = new Uint16Array(ids.length * hd);
    m.gather(ids, b);
    expectBf16(b, weights, scales, hd);
    m.close();
  });

  test('packed layout at an odd offset, V4.1 rows (264 bytes) and 64-value rows (66 bytes)', () => {
    for (const hd of [256, 64]) {
      const t = packedTable(300, hd, hd);
      const m = open(t.path, t.spec);
      const ids = Int32Array.from({ length: 100 }, (_, i) => (i * 97 + 13) % 300);
      const want = pickPacked(t, ids);
      const raw = new Uint8Array(ids.length * t.record);
      m.gatherRaw(ids, raw);
      expectSameBytes(raw, want.records);
      raw.fill(0);
      m.gatherBaseline(ids, raw);
      expectSameBytes(raw, want.records);
      const f = new Float32Array(ids.length * hd);
      m.gather(ids, f);
      expectF32(f, want.weights, want.scales, hd);
      const b = new Uint16Array(ids.length * hd);
      m.gather(ids, b);
      expectBf16(b, want.weights, want.scales, hd);
      m.close();
    }
  });

  // Row s: the 256 weight codes in order, all 8 scales = s.
  const pairs = (() => {
    const record = 264, file = new Uint8Array(256 * record), weights = new Uint8Array(256 * 256), scales = new Uint8Array(256 * 8);
    for (let s = 0; s < 256; s++) {
      for (let w = 0; w < 256; w++) file[s * record + w] = weights[s * 256 + w] = w;
      file.fill(s, s * record + 256, (s + 1) * record);
      scales.fill(s, s * 8, (s + 1) * 8);
    }
    const spec: NativeEngramSpec = { rows: 256, headDim: 256, format: 'fp8', weightOffset: 0, weightStride: record, scaleOffset: 256, scaleStride: record };
    return { path: fileOf(file), spec, weights, scales, ids: Int32Array.from({ length: 256 }, (_, i) => i) };
  })();

  function expectAllPairs(f: Float32Array, b: Uint16Array): void {
    expectF32(f, pairs.weights, pairs.scales, 256);
    expectBf16(b, pairs.weights, pairs.scales, 256);
    // The corners, stated on their own: 448 · 2^127 overflows to Inf, 2^-9 · 2^-127 is the
    // float32 subnormal 2^-136, 0x7F and 0xFF are NaN, a NaN scale makes every value NaN.
    expect(f[254 * 256 + 0x7e]).toBe(Infinity);
    expect(f[254 * 256 + 0xfe]).toBe(-Infinity);
    expect(f[0 * 256 + 0x01]).toBe(2 ** -136);
    expect(f[127 * 256 + 0x08]).toBe(2 ** -6);
    expect(f[127 * 256 + 0x80]).toBe(-0);
    expect(bitsOf(f)[127 * 256 + 0x7f]).toBe(0x7fc00000);
    expect(bitsOf(f)[127 * 256 + 0xff]).toBe(0xffc00000);
    expect(bitsOf(f)[255 * 256 + 0x00]).toBe(0x7fc00000);
    expect(b[127 * 256 + 0xff]).toBe(0xffc0);
  }

  test('rows wider than the L1 stage (headDim 16384) are dequantised in place, with the same values', () => {
    const t = packedTable(5, 16384, 21, 1);
    const m = open(t.path, t.spec);
    const ids = Int32Array.of(4, 0, 2);
    const want = pickPacked(t, ids);
    const f = new Float32Array(ids.length * 16384), b = new Uint16Array(ids.length * 16384);
    m.gather(ids, f);
    m.gather(ids, b);
    expectF32(f, want.weights, want.scales, 16384);
    expectBf16(b, want.weights, want.scales, 16384);
    m.close();
  });

  test('every (e4m3 byte, e8m0 scale) pair, 256 × 256, is exact in float32 and rounds to nearest even in bf16', () => {
    expect(['avx2-f16c', 'portable']).toContain(EngramMapping!.kernels);
    const m = open(pairs.path, pairs.spec);
    const f = new Float32Array(256 * 256), b = new Uint16Array(256 * 256);
    m.gather(pairs.ids, f);
    m.gather(pairs.ids, b);
    expectAllPairs(f, b);
    m.close();
  });

  test('the portable kernels (FLASHMLA_ENGRAM_ISA=portable, another process) give the same bits for every pair', () => {
    const script = `
      const a = require(process.argv[1]);
      const m = new a.EngramMapping(process.argv[2], JSON.parse(process.argv[3]));
      const ids = Int32Array.from({ length: 256 }, (_, i) => i), f = new Float32Array(65536), b = new Uint16Array(65536);
      m.gather(ids, f); m.gather(ids, b);
      require('node:fs').writeFileSync(process.argv[4], Buffer.concat([Buffer.from(f.buffer), Buffer.from(b.buffer)]));
      process.stdout.write(a.EngramMapping.kernels);`;
    const out = join(dir, 'portable.bin');
    const kernels = execFileSync(process.execPath, ['-e', script, loaded.ok ? loaded.path : '', pairs.path, JSON.stringify(pairs.spec), out], {
      env: { ...process.env, FLASHMLA_ENGRAM_ISA: 'portable' }, encoding: 'utf8',
    });
    expect(kernels).toBe('portable');
    const bytes = readFileSync(out);
    const f = new Float32Array(65536), b = new Uint16Array(65536);
    new Uint8Array(f.buffer).set(bytes.subarray(0, 4 * 65536));
    new Uint8Array(b.buffer).set(bytes.subarray(4 * 65536));
    expectAllPairs(f, b);
  });

  test('fp32 tables: gatherRaw copies the bytes, gather copies float32 bits (NaN payloads too) and rounds bf16 like f32ToBf16', () => {
    const rows = 9, hd = 16, at = 3; // rows at an odd byte offset
    const values = new Float32Array(rows * hd);
    for (let i = 0; i < values.length; i++) values[i] = (i - 40) * 1.0001 ** i * 3.3;
    const u = bitsOf(values);
    [u[0], u[1], u[2], u[3], u[4], u[5]] = [0x7f800001, 0xffc12345, 0x7f800000, 0x3f808000, 0x3f818000, 0x7f7fffff]; // NaNs, Inf, ties, max
    const file = new Uint8Array(at + values.byteLength);
    file.set(new Uint8Array(values.buffer), at);
    const m = open(fileOf(file), { rows, headDim: hd, format: 'fp32', weightOffset: at, weightStride: 4 * hd, scaleOffset: 0, scaleStride: 0 });
    const ids = Int32Array.of(0, 8, 3, 0);
    const raw = new Uint8Array(ids.length * 4 * hd);
    m.gatherRaw(ids, raw);
    const f = new Float32Array(ids.length * hd);
    m.gather(ids, f);
    const b = new Uint16Array(ids.length * hd);
    m.gather(ids, b);
    ids.forEach((id, i) => {
      expect(raw.subarray(i * 4 * hd, (i + 1) * 4 * hd)).toEqual(file.subarray(at + id * 4 * hd, at + (id + 1) * 4 * hd));
      for (let j = 0; j < hd; j++) {
        expect(bitsOf(f)[i * hd + j]).toBe(u[id * hd + j]);
        expect(b[i * hd + j]).toBe(f32ToBf16(values[id * hd + j]!));
      }
    });
    expect(b.subarray(0, 6)).toEqual(Uint16Array.of(0x7fc0, 0xffc0, 0x7f80, 0x3f80, 0x3f82, 0x7f80));
    m.close();
  });

  test('async gathers equal the synchronous ones; close() while they run leaves the mapping until they end', async () => {
    const t = packedTable(2000, 256, 3);
    const m = open(t.path, t.spec);
    const ids = Int32Array.from({ length: 3000 }, (_, i) => (i * 7919) % 2000);
    const want = pickPacked(t, ids);
    const pendingRaw = Array.from({ length: 6 }, () => m.gatherRawAsync(ids));
    const pendingF32 = Array.from({ length: 6 }, () => m.gatherAsync(ids, 'fp32'));
    const pendingBf16 = m.gatherAsync(ids, 'bf16');
    m.close();
    m.close();
    const raws = (await Promise.all(pendingRaw)).map((b) => new Uint8Array(b));
    const floats = (await Promise.all(pendingF32)).map((b) => new Float32Array(b));
    for (const r of raws) expectSameBytes(r, want.records);
    expectF32(floats[5]!, want.weights, want.scales, 256);
    for (const f of floats) expectSameBytes(f, floats[5]!);
    const bf16 = new Uint16Array(ids.length * 256);
    const again = open(t.path, t.spec);
    again.gather(ids, bf16);
    again.close();
    expectSameBytes(new Uint16Array(await pendingBf16), bf16);
    expect((await rejectionOf(() => m.gatherAsync(ids, 'fp32'))).code).toBe('E_DISPOSED');
  });

  test('gatherBlocksAsync: rows in blocks at a stride, straight into a SharedArrayBuffer view; anything else refused', async () => {
    const t = packedTable(200, 64, 8);
    const m = open(t.path, t.spec);
    const ids = Int32Array.from({ length: 12 }, (_, i) => (i * 37) % 200);
    const stride = 3 * 4 * 66; // blocks of 4 records, 3 blocks' room apart
    const out = new Uint8Array(new SharedArrayBuffer(stride * 3));
    await m.gatherBlocksAsync(ids, 'raw', out, 4, stride);
    const want = pickPacked(t, ids).records;
    for (let b = 0; b < 3; b++) expectSameBytes(out.subarray(b * stride, b * stride + 4 * 66), want.subarray(b * 4 * 66, (b + 1) * 4 * 66));
    expect(out.subarray(4 * 66, stride).every((v) => v === 0)).toBe(true);
    const f = new Float32Array(new SharedArrayBuffer(12 * 64 * 4));
    await m.gatherBlocksAsync(ids, 'fp32', f, 12, 12 * 64 * 4);
    const sync = new Float32Array(12 * 64);
    m.gather(ids, sync);
    expectSameBytes(f, sync);
    const refusals: [() => unknown, string, string][] = [
      [() => m.gatherBlocksAsync(ids, 'raw', new Uint8Array(stride * 3), 4, stride), 'E_VALUE', 'out'],
      [() => m.gatherBlocksAsync(ids, 'bf16', out, 4, stride), 'E_DTYPE', 'out'],
      [() => m.gatherBlocksAsync(ids, 'raw', out, 5, stride), 'E_VALUE', 'blockRows'],
      [() => m.gatherBlocksAsync(ids, 'raw', out, 4, 4 * 66 - 1), 'E_VALUE', 'blockStride'],
      [() => m.gatherBlocksAsync(ids, 'raw', out.subarray(0, 2 * stride + 4 * 66 - 1), 4, stride), 'E_BUFFER', 'out'],
      [() => m.gatherBlocksAsync(Int32Array.of(200, 0, 0, 0), 'raw', out, 4, stride), 'E_RANGE', 'rowIds[0]'],
      [() => m.gatherBlocksAsync(ids, 'fp16' as never, out, 4, stride), 'E_VALUE', 'kind'],
    ];
    for (const [call, code, argument] of refusals) {
      const e = await rejectionOf(call);
      expect([e.code, e.argument]).toEqual([code, argument]);
    }
    m.close();
  });

  test('a changed ids array after an async call does not change what it gathers (ids are copied at the call)', async () => {
    const t = packedTable(50, 64, 5);
    const m = open(t.path, t.spec);
    const ids = Int32Array.of(1, 2, 3);
    const done = m.gatherRawAsync(ids);
    ids.fill(-1);
    expectSameBytes(new Uint8Array(await done), pickPacked(t, Int32Array.of(1, 2, 3)).records);
    m.close();
  });

  test('async gathers write only memory of the addon\'s: the result is a fresh ArrayBuffer that may be transferred and dropped', async () => {
    const t = packedTable(300, 64, 6);
    const m = open(t.path, t.spec);
    const ids = Int32Array.from({ length: 5000 }, (_, i) => (i * 31) % 300);
    const results = await Promise.all(Array.from({ length: 8 }, () => m.gatherRawAsync(ids)));
    expect(new Set(results).size).toBe(8);
    for (const r of results) {
      expect(r.byteLength).toBe(ids.length * t.record);
      // Node may copy rather than move a buffer of the addon's; either way the bytes arrive whole.
      const moved = structuredClone(r, { transfer: [r] });
      expectSameBytes(new Uint8Array(moved), pickPacked(t, ids).records);
    }
    expect((await rejectionOf(() => m.gatherAsync(ids, 'fp16' as never))).argument).toBe('dtype');
    m.close();
  });

  test('bad row ids: E_RANGE naming rowIds[i], nothing written; short or mistyped outputs; sync throws, async rejects', async () => {
    const t = packedTable(10, 64, 9);
    const m = open(t.path, t.spec);
    const out = new Uint8Array(4 * 66).fill(0xaa);
    for (const bad of [-1, 10, 2 ** 31 - 1, -(2 ** 31)]) {
      const e = await rejectionOf(() => m.gatherRaw(Int32Array.of(0, 1, bad, 2), out));
      expect([e.code, e.argument]).toEqual(['E_RANGE', 'rowIds[2]']);
      expect(e.message).toContain(String(bad));
      expect(out.every((b) => b === 0xaa)).toBe(true);
      const a = await rejectionOf(() => m.gatherAsync(Int32Array.of(bad), 'fp32'));
      expect([a.code, a.argument]).toEqual(['E_RANGE', 'rowIds[0]']);
    }
    const short = await rejectionOf(() => m.gatherRaw(Int32Array.of(0, 1), new Uint8Array(131)));
    expect([short.code, short.argument]).toEqual(['E_BUFFER', 'out']);
    expect((await rejectionOf(() => m.gather(Int32Array.of(0, 1), new Float32Array(127)))).code).toBe('E_BUFFER');
    expect((await rejectionOf(() => m.gather(Int32Array.of(0, 1), new Uint16Array(127)))).argument).toBe('out');
    expect((await rejectionOf(() => m.gatherBaseline(Int32Array.of(0), new Uint8Array(65)))).code).toBe('E_BUFFER');
    const idsType = await rejectionOf(() => m.gatherRaw(Uint32Array.of(0) as unknown as Int32Array, out));
    expect([idsType.code, idsType.argument]).toEqual(['E_DTYPE', 'rowIds']);
    const outType = await rejectionOf(() => m.gather(Int32Array.of(0), new Uint8Array(256) as unknown as Float32Array));
    expect([outType.code, outType.argument]).toEqual(['E_DTYPE', 'out']);
    expect((await rejectionOf(() => m.gatherRaw(Int32Array.of(0), new Float32Array(66) as unknown as Uint8Array))).argument).toBe('out');
    m.gatherRaw(new Int32Array(0), new Uint8Array(0)); // nothing to gather is not an error
    expect((await m.gatherAsync(new Int32Array(0), 'fp32')).byteLength).toBe(0);
    m.close();
  });

  test('closed mapping: E_DISPOSED from every gather; close() is idempotent', async () => {
    const t = packedTable(4, 32, 2);
    const m = open(t.path, t.spec);
    m.close();
    m.close();
    const ids = Int32Array.of(0), raw = new Uint8Array(33), f = new Float32Array(32);
    for (const call of [() => m.gatherRaw(ids, raw), () => m.gatherBaseline(ids, raw), () => m.gather(ids, f), () => m.gatherRawAsync(ids), () => m.gatherAsync(ids, 'fp32')]) {
      expect((await rejectionOf(call)).code).toBe('E_DISPOSED');
    }
  });

  test('a spec that does not fit the file, or is malformed, is E_VALUE before anything is mapped', async () => {
    const t = packedTable(10, 64, 4); // 13 + 660 bytes
    const spec = t.spec;
    const cases: [Partial<Record<keyof NativeEngramSpec, unknown>>, string][] = [
      [{ rows: 11 }, 'spec'], // the last row would end past the file: a short file
      [{ weightOffset: 2 ** 40 }, 'spec'], // a lying header far past the end
      [{ scaleOffset: 13 + 660 - 1 }, 'spec'], // weights fit, the last scales do not
      [{ weightStride: 2 ** 52 }, 'spec'], // (rows − 1) · stride overflows 64 bits without 128-bit arithmetic
      [{ rows: -1 }, 'spec.rows'], [{ rows: 2 ** 31 }, 'spec.rows'], [{ rows: 1.5 }, 'spec.rows'], [{ rows: '10' }, 'spec.rows'],
      [{ headDim: 48 }, 'spec.headDim'], [{ headDim: 0 }, 'spec.headDim'], [{ format: 'bf16' }, 'spec.format'],
      [{ weightOffset: 2 ** 53 }, 'spec.weightOffset'], [{ scaleStride: NaN }, 'spec.scaleStride'], [{ scaleOffset: undefined }, 'spec.scaleOffset'],
    ];
    for (const [change, argument] of cases) {
      const e = await rejectionOf(() => open(t.path, { ...spec, ...change } as NativeEngramSpec));
      expect([e.code, e.argument], JSON.stringify(change)).toEqual(['E_VALUE', argument]);
    }
    const exact = open(t.path, spec); // rows ending exactly at the end of the file fit
    exact.close();
    const empty = open(fileOf(new Uint8Array(0)), { ...spec, rows: 0 });
    expect(empty.fileBytes).toBe(0);
    expect((await rejectionOf(() => empty.gatherRaw(Int32Array.of(0), new Uint8Array(66)))).code).toBe('E_RANGE');
    empty.close();
    expect((await rejectionOf(() => empty.gatherRaw(new Int32Array(0), new Uint8Array(0)))).code).toBe('E_DISPOSED');
  });

  test('a missing file, a directory or a bad path argument: E_VALUE naming path', async () => {
    const spec: NativeEngramSpec = { rows: 0, headDim: 32, format: 'fp8', weightOffset: 0, weightStride: 33, scaleOffset: 32, scaleStride: 33 };
    const missing = await rejectionOf(() => new EngramMapping!(join(dir, 'no-such-file'), spec));
    expect([missing.code, missing.argument]).toEqual(['E_VALUE', 'path']);
    expect(missing.message).toMatch(/No such file/);
    expect((await rejectionOf(() => new EngramMapping!(dir, spec))).argument).toBe('path');
    expect((await rejectionOf(() => new EngramMapping!(`${dir}\0x`, spec))).argument).toBe('path');
    expect((await rejectionOf(() => new EngramMapping!(42 as unknown as string, spec))).argument).toBe('path');
    expect((await rejectionOf(() => new EngramMapping!(dir, null as unknown as NativeEngramSpec))).argument).toBe('spec');
  });

  test('a 40 GiB sparse file opens and serves rows at far offsets (zeros elsewhere) without reading the file', () => {
    const GiB = 2 ** 30, record = 264;
    const path = join(dir, 'sparse.bin');
    const fd = openSync(path, 'w');
    try {
      ftruncateSync(fd, 40 * GiB);
      const rows = Math.floor((40 * GiB) / record);
      const far = [0, Math.floor((4 * GiB) / record) + 1, Math.floor((33 * GiB) / record), rows - 1];
      const payload = far.map((_, i) => randomBytes(record, 100 + i).map((b, j) => (j >= 256 ? 120 + (b % 10) : b)));
      far.forEach((row, i) => writeSync(fd, payload[i]!, 0, record, row * record));
      closeSync(fd);
      const rssBefore = process.memoryUsage().rss;
      const m = open(path, { rows, headDim: 256, format: 'fp8', weightOffset: 0, weightStride: record, scaleOffset: 256, scaleStride: record });
      expect(m.fileBytes).toBe(40 * GiB);
      const hole = far[2]! - 1000;
      const ids = Int32Array.of(...far, hole);
      const raw = new Uint8Array(ids.length * record);
      m.gatherRaw(ids, raw);
      far.forEach((_, i) => expect(raw.subarray(i * record, (i + 1) * record)).toEqual(payload[i]));
      expect(raw.subarray(4 * record).every((b) => b === 0)).toBe(true);
      const f = new Float32Array(ids.length * 256);
      m.gather(ids, f);
      expectF32(f.subarray(3 * 256, 4 * 256), payload[3]!.subarray(0, 256), payload[3]!.subarray(256), 256);
      expect(f.subarray(4 * 256).every((x) => x === 0)).toBe(true);
      // Only the touched pages (a few 4 KiB pages, or 2 MiB huge pages) came in: far below the 40 GiB mapped.
      expect(process.memoryUsage().rss - rssBefore).toBeLessThan(64 * 2 ** 20);
      m.close();
    } finally {
      rmSync(path, { force: true });
    }
  });

  test('close() unmaps at once when no gather runs, after the last async gather otherwise; a collected mapping is unmapped by its finaliser (/proc/self/maps)', () => {
    const t = packedTable(64, 256, 13);
    const script = `
      const a = require(process.argv[1]);
      const fs = require('node:fs');
      const mapped = () => fs.readFileSync('/proc/self/maps', 'utf8').includes(process.argv[2]);
      const spec = JSON.parse(process.argv[3]);
      const seen = [];
      let m = new a.EngramMapping(process.argv[2], spec);
      seen.push(mapped());
      m.close();
      seen.push(mapped());
      m = new a.EngramMapping(process.argv[2], spec);
      seen.push(mapped());
      m = null;
      (async () => {
        for (let i = 0; i < 20 && mapped(); i++) { globalThis.gc(); await new Promise((r) => setImmediate(r)); }
        seen.push(mapped());
        // An async gather holds the mapping past close() until it has ended.
        m = new a.EngramMapping(process.argv[2], spec);
        const ids = new Int32Array(200000).map((_, i) => i % spec.rows);
        const done = m.gatherRawAsync(ids);
        m.close();
        seen.push(mapped());
        await done;
        seen.push(mapped());
        process.stdout.write(JSON.stringify(seen));
      })();`;
    const seen = execFileSync(process.execPath, ['--expose-gc', '-e', script, loaded.ok ? loaded.path : '', t.path, JSON.stringify(t.spec)], { encoding: 'utf8' });
    expect(JSON.parse(seen)).toEqual([true, false, true, false, true, false]);
  });

  test('worker threads: each environment has its own class and error class; gathers there match the main thread; terminate() with gathers in flight', async () => {
    const t = packedTable(100, 256, 11);
    const ids = Int32Array.of(3, 99, 42);
    const want = new Float32Array(3 * 256);
    const m = open(t.path, t.spec);
    m.gather(ids, want);
    const code = `
      const { parentPort, workerData } = require('node:worker_threads');
      const addon = require(workerData.addon);
      class WorkerError extends Error { constructor(code, message, argument) { super(message); this.code = code; this.argument = argument; } }
      addon.setErrorClass(WorkerError);
      const m = new addon.EngramMapping(workerData.path, workerData.spec);
      m.gatherAsync(Int32Array.from(workerData.ids), 'fp32').then((rows) => {
        const out = new Float32Array(rows);
        let error;
        try { m.gather(Int32Array.of(100), out); } catch (e) { error = { worker: e instanceof WorkerError, code: e.code, argument: e.argument }; }
        m.close();
        parentPort.postMessage({ out, error });
      });`;
    const worker = new Worker(code, { eval: true, workerData: { addon: loaded.ok ? loaded.path : '', path: t.path, spec: t.spec, ids: [...ids] } });
    const reply = await new Promise<{ out: Float32Array; error: unknown }>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    await worker.terminate();
    expectSameBytes(reply.out, want);
    expect(reply.error).toEqual({ worker: true, code: 'E_RANGE', argument: 'rowIds[0]' });
    // A worker terminated with gathers in flight: Node waits for its pool work before the
    // environment (and the output arrays) go; the mapping stays until the gathers end.
    const busy = new Worker(`
      const { parentPort, workerData } = require('node:worker_threads');
      const addon = require(workerData.addon);
      const m = new addon.EngramMapping(workerData.path, workerData.spec);
      const ids = new Int32Array(100000).map((_, i) => (i * 7) % 100);
      for (let k = 0; k < 4; k++) m.gatherAsync(ids, 'fp32');
      m.close();
      parentPort.postMessage('queued');`, { eval: true, workerData: { addon: loaded.ok ? loaded.path : '', path: t.path, spec: t.spec } });
    await new Promise((resolve, reject) => {
      busy.once('message', resolve);
      busy.once('error', reject);
    });
    await busy.terminate();
    // The main thread's class is still FlashMLAError.
    expect((await rejectionOf(() => m.gather(Int32Array.of(100), want))).argument).toBe('rowIds[0]');
    m.close();
  });
});
