import { describe, expect, test } from 'vitest';
import { f32ToBf16 } from '../../src/formats/bf16.js';
import { generateDenseCase, generateSparseCase, type DenseCaseParams, type SparseCaseParams } from '../../src/harness/cases.js';
import { zeros, type HostTensor } from '../../src/tensor.js';
import { expectMatchesOracle, reference } from '../helpers/decode.js';

const dense = (p: Partial<DenseCaseParams>, seed = 1) =>
  generateDenseCase({ b: 2, sQ: 1, sK: 140, hQ: 8, hK: 1, varlen: false, causal: false, ...p }, seed);
const sparse = (p: Partial<SparseCaseParams>, seed = 1) =>
  generateSparseCase({ b: 2, sQ: 1, hQ: 64, dQK: 512, main: { sK: 300, topk: 128, blockSize: 64 }, ...p }, seed);

/** Flat lse rows that are +Infinity, and whether their out rows are all zero. */
function lonelyRows(r: { out: HostTensor; lse: HostTensor }, b: number, sQ: number, hQ: number): { count: number; zero: boolean } {
  let count = 0;
  let zero = true;
  const lse = r.lse.data as Float32Array;
  const out = r.out.data as Uint16Array;
  for (let i = 0; i < b; i++) for (let h = 0; h < hQ; h++) for (let s = 0; s < sQ; s++) {
    if (lse[(i * hQ + h) * sQ + s] !== Infinity) continue;
    count++;
    const base = ((i * sQ + s) * hQ + h) * 512;
    for (let x = 0; x < 512; x++) if (out[base + x] !== 0) zero = false;
  }
  return { count, zero };
}

describe('dense decode matches the float64 oracle', () => {
  test.each([
    ['bf16, paged, s_q=1', {}],
    ['fp16', { dtype: 'fp16' as const }],
    ['varlen', { varlen: true, b: 3 }],
    ['causal with s_q=2', { sQ: 2, causal: true, varlen: true }],
    ['causal with s_q=4, short sequence (lonely rows)', { sQ: 4, causal: true, sK: 20 }],
    ['h_k=2 (GQA regrouping)', { hQ: 6, hK: 2, sQ: 2, causal: true }],
    ['h_k=3, h_q=9', { hQ: 9, hK: 3 }],
    ['h_q=1', { hQ: 1 }],
    ['non-contiguous q and cache', { nonContiguous: true, sQ: 2 }],
  ])('%s', async (_, p) => {
    const c = dense(p);
    await expectMatchesOracle(c);
  });

  test('zero-length requests: out 0, lse +Infinity', async () => {
    const c = dense({ b: 4, zeroSeqlen: true, varlen: true }, 3);
    const L = c.args.cacheSeqlens!.data as Int32Array;
    expect(Array.from(L)).toContain(0);
    const r = await expectMatchesOracle(c);
    const lonely = lonelyRows(r, 4, 1, 8);
    expect(lonely.count).toBe(Array.from(L).filter((x) => x === 0).length * 8);
    expect(lonely.zero).toBe(true);
  });

  test('causal rows with no visible key are lonely (L < s_q − s)', async () => {
    const c = dense({ b: 1, sQ: 4, causal: true, sK: 2 });
    (c.args.cacheSeqlens!.data as Int32Array)[0] = 2; // query s sees keys t ≤ 2 − 4 + s: s = 0, 1 see nothing
    const r = await expectMatchesOracle(c);
    expect(lonelyRows(r, 1, 4, 8).count).toBe(2 * 8);
  });

  test('causal is ignored when s_q = 1 (docs/flashmla-interface.md#dense-host-layer step 7)', async () => {
    const a = dense({ causal: true });
    const b = dense({ causal: false });
    const ra = await reference(a.args);
    const rb = await reference(b.args);
    expect(ra.out.data).toEqual(rb.out.data);
  });

  test('garbage in unused cache slots and block-table entries does not matter', async () => {
    const c = dense({ varlen: true, b: 3 }, 7);
    const base = await reference(c.args);
    const k = c.args.kCache as HostTensor;
    const data = k.data as Uint16Array;
    const poisoned = new Uint16Array(data);
    // NaN slots (the generator's poison) become other garbage: Inf and huge finite values.
    for (let i = 0; i < poisoned.length; i++) if ((poisoned[i]! & 0x7fff) > 0x7f80) poisoned[i] = i % 2 ? 0x7f80 : f32ToBf16(3e38);
    const table = new Int32Array(c.args.blockTable!.data as Int32Array);
    const other = await reference({
      ...c.args,
      kCache: { ...k, data: poisoned },
      blockTable: { dtype: 'int32', shape: c.args.blockTable!.shape, data: table.map((x) => (x === 2147480000 ? -5 : x)) },
    });
    expect(other.out.data).toEqual(base.out.data);
    expect(other.lse.data).toEqual(base.lse.data);
  });

  test('outputs: out (b, s_q, h_q, 512) in q dtype, lse (b, h_q, s_q) fp32', async () => {
    const r = await reference(dense({ sQ: 2, dtype: 'fp16' }).args);
    expect(r.out.dtype).toBe('fp16');
    expect(r.out.shape).toEqual([2, 2, 8, 512]);
    expect(r.lse.dtype).toBe('fp32');
    expect(r.lse.shape).toEqual([2, 8, 2]);
  });
});

describe('sparse decode matches the float64 oracle', () => {
  test.each([
    ['V3.2 layout, h_q=64', { dQK: 576 as const, main: { sK: 300, topk: 128, blockSize: 64 } }],
    ['V3.2 layout, h_q=128, page size 2, s_q=2', { dQK: 576 as const, hQ: 128 as const, sQ: 2, main: { sK: 200, topk: 64, blockSize: 2 } }],
    ['V3.2 layout, page size 61, sink', { dQK: 576 as const, sink: true, main: { sK: 512, topk: 64, blockSize: 61, varlen: true } }],
    ['MODEL1, page size 64', {}],
    ['MODEL1, page size 69, topk_length', { main: { sK: 300, topk: 128, blockSize: 69, withLength: true } }],
    ['MODEL1, page size 576, h_q=128', { hQ: 128 as const, main: { sK: 700, topk: 64, blockSize: 576 } }],
    ['MODEL1 with extra cache, extra_topk_length and sink', {
      sQ: 2, sink: true, main: { sK: 300, topk: 128, blockSize: 61, withLength: true },
      extra: { sK: 150, topk: 64, blockSize: 2, withLength: true },
    }],
    ['MODEL1 with -1 padding (sequences shorter than topk)', { main: { sK: 40, topk: 128, blockSize: 64, varlen: true } }],
  ])('%s', async (_, p) => {
    await expectMatchesOracle(sparse(p));
  });

  test('all-invalid rows and zero-length requests are lonely: out 0, lse +Infinity (also with a sink)', async () => {
    const c = sparse({ b: 3, sink: true, main: { sK: 100, topk: 64, blockSize: 64, allInvalid: true } });
    const r = await expectMatchesOracle(c);
    expect(lonelyRows(r, 3, 1, 64)).toEqual({ count: 3 * 64, zero: true });
    const z = sparse({ b: 4, main: { sK: 100, topk: 64, blockSize: 64, zeroSeqlen: true } }, 5);
    const rz = await expectMatchesOracle(z);
    expect(lonelyRows(rz, 4, 1, 64).count).toBeGreaterThan(0);
  });

  test('topk_length 0 makes a request lonely', async () => {
    const c = sparse({ main: { sK: 300, topk: 64, blockSize: 64, withLength: true } });
    (c.args.topkLength!.data as Int32Array).set([0, 64]);
    const r = await expectMatchesOracle(c);
    expect(lonelyRows(r, 2, 1, 64).count).toBe(64);
  });

  test('indices past topk_length are never read (garbage allowed there)', async () => {
    const c = sparse({ main: { sK: 300, topk: 128, blockSize: 64, withLength: true } });
    (c.args.topkLength!.data as Int32Array).set([10, 100]);
    const base = await reference(c.args);
    const idx = new Int32Array(c.args.indices!.data as Int32Array);
    for (let p = 10; p < 128; p++) idx[p] = 2147480000;
    for (let p = 100; p < 128; p++) idx[128 + p] = -77;
    const r = await reference({ ...c.args, indices: { dtype: 'int32', shape: c.args.indices!.shape, data: idx } });
    expect(r.out.data).toEqual(base.out.data);
  });

  test('attention sink: +Infinity zeroes out, -Infinity changes nothing, lse never includes it', async () => {
    const c = sparse({ sQ: 2 });
    const base = await reference(c.args);
    const sinkOf = (v: number) => ({ dtype: 'fp32' as const, shape: [64], data: new Float32Array(64).fill(v) });
    const minus = await reference({ ...c.args, attnSink: sinkOf(-Infinity) });
    expect(minus.out.data).toEqual(base.out.data);
    const plus = await reference({ ...c.args, attnSink: sinkOf(Infinity) });
    expect((plus.out.data as Uint16Array).every((x) => (x & 0x7fff) === 0)).toBe(true); // ±0
    expect(plus.lse.data).toEqual(base.lse.data);
    const zero = await reference({ ...c.args, attnSink: sinkOf(0) });
    expect(zero.lse.data).toEqual(base.lse.data);
    expect(zero.out.data).not.toEqual(base.out.data);
  });
});

describe('shared-memory host tensors', () => {
  test('zeros(..., { shared: true }) is backed by a SharedArrayBuffer and decodes like plain memory', async () => {
    const c = dense({ b: 2, sK: 4096, hQ: 128 }, 9);
    const k = c.args.kCache;
    const shared = zeros('bf16', k.shape, { shared: true });
    expect(shared.data.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(Array.from(shared.data.subarray(0, 4))).toEqual([0, 0, 0, 0]);
    shared.data.set(k.data as Uint16Array);
    const plain = await reference(c.args, 2);
    const viaShared = await reference({ ...c.args, kCache: { ...shared, strides: k.strides } }, 2);
    expect(viaShared.out.data).toEqual(plain.out.data);
    expect(viaShared.lse.data).toEqual(plain.lse.data);
  });
});
