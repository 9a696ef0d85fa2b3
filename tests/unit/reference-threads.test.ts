// The reference backend gives the same bits for any thread count: work items are split the same
// way whatever the count and merged in the same order; workers only change who computes an item.
// Cases are above the size threshold so that threads > 1 really run on the worker pool.
import { describe, expect, test } from 'vitest';
import { FlashMLAError } from '../../src/errors.js';
import { generateDenseCase, generateSparseCase, type DecodeCase } from '../../src/harness/cases.js';
import { checkIsAllclose, TOLERANCES } from '../../src/harness/metrics.js';
import { oracleDecode } from '../../src/harness/oracle.js';
import { PARALLEL_MIN_FLOPS, referenceDecode } from '../../src/reference/index.js';
import { getMlaMetadata } from '../../src/sched-meta.js';
import type { DecodeArgs } from '../../src/types.js';
import { f32ToBf16 } from '../../src/formats/bf16.js';
import { validateDecode } from '../../src/validate/index.js';
import { encodeRows } from '../../src/reference/finalize.js';
import { ITEM, MAX_CHUNK, MIN_CHUNK, workItems } from '../../src/reference/items.js';
import { mergeIntoJs, partialIn, type Partial } from '../../src/reference/partial.js';
import { nativeTileApi, type CpuTileApi } from '../../src/reference/tile-native.js';
import { shared } from '../helpers/shared.js';

const cases: DecodeCase[] = [
  generateDenseCase({ b: 3, sQ: 2, sK: 2500, hQ: 16, hK: 1, varlen: true, causal: true }, 11),
  generateDenseCase({ b: 1, sQ: 2, sK: 1100, hQ: 128, hK: 1, varlen: false, causal: true }, 17),
  generateDenseCase({ b: 4, sQ: 1, sK: 1500, hQ: 16, hK: 4, varlen: true, causal: false, nonContiguous: true, zeroSeqlen: true }, 16),
  generateSparseCase({ b: 2, sQ: 2, hQ: 64, dQK: 576, main: { sK: 3000, topk: 1024, blockSize: 64, varlen: true } }, 13),
  generateSparseCase({ b: 2, sQ: 1, hQ: 64, dQK: 512, main: { sK: 2000, topk: 1024, blockSize: 61, withLength: true },
    extra: { sK: 700, topk: 512, blockSize: 2 }, sink: true }, 14),
];

const run = (args: DecodeCase['args'], threads: number) =>
  referenceDecode({ ...args, schedMeta: getMlaMetadata() } as DecodeArgs, { threads });

describe.each(cases.map((c) => [c.name, c] as const))('%s', (_, c) => {
  test('is above the single-thread threshold', () => {
    expect(c.flops).toBeGreaterThan(PARALLEL_MIN_FLOPS);
  });

  test('1, 2 and 3 threads, plain and SharedArrayBuffer inputs: identical bits, matching the oracle', async () => {
    const one = await run(c.args, 1);
    for (const threads of [2, 3]) {
      for (const args of [c.args, shared(c.args)]) {
        const r = await run(args, threads);
        expect(Buffer.from(r.out.data.buffer).equals(Buffer.from(one.out.data.buffer)), `out, ${threads} threads`).toBe(true);
        expect(Buffer.from(r.lse.data.buffer).equals(Buffer.from(one.lse.data.buffer)), `lse, ${threads} threads`).toBe(true);
      }
    }
    const o = oracleDecode({ ...c.args, schedMeta: getMlaMetadata() });
    const dense = c.kind === 'dense';
    expect(checkIsAllclose('out', one.out, o.out, dense ? TOLERANCES.denseOut : TOLERANCES.sparseOut).pass).toBe(true);
    expect(checkIsAllclose('lse', one.lse, o.lse, dense ? TOLERANCES.denseLse : TOLERANCES.sparseLse).pass).toBe(true);
  });
});

test('concurrent calls share the pool and each gets its own result', async () => {
  const [a, b] = [cases[0]!, cases[2]!];
  const [ra, rb, ra1, rb1] = await Promise.all([run(a.args, 2), run(b.args, 2), run(a.args, 1), run(b.args, 1)]);
  expect(Buffer.from(ra.out.data.buffer).equals(Buffer.from(ra1.out.data.buffer))).toBe(true);
  expect(Buffer.from(rb.out.data.buffer).equals(Buffer.from(rb1.out.data.buffer))).toBe(true);
});

test.each([0, -1, 1.5, NaN, '2'])('options.threads = %s is E_VALUE', async (threads) => {
  await expect(referenceDecode({ ...cases[0]!.args, schedMeta: getMlaMetadata() }, { threads: threads as number }))
    .rejects.toMatchObject({ code: 'E_VALUE', argument: 'options.threads' });
});

describe('work items', () => {
  const items = (c: DecodeCase): number => workItems(validateDecode({ ...c.args, schedMeta: getMlaMetadata() } as DecodeArgs)).length / ITEM;

  test('short calls get smaller chunks, down to MIN_CHUNK, so threads balance; long calls keep MAX_CHUNK', () => {
    // b = 1, one KV head, 4096 keys: 4 items of MAX_CHUNK would leave one thread idle for a quarter of the call.
    const short = generateDenseCase({ b: 1, sQ: 1, sK: 4096, hQ: 16, hK: 1, varlen: false, causal: false }, 3);
    expect(items(short)).toBe(4096 / MIN_CHUNK);
    const long = generateDenseCase({ b: 4, sQ: 1, sK: 4096, hQ: 16, hK: 1, varlen: false, causal: false }, 3);
    expect(items(long)).toBe((4 * 4096) / MAX_CHUNK);
    expect(items(cases[3]!)).toBe(2 * 2 * (1024 / MIN_CHUNK));
  });
});

// The calling thread's merges, final rounding and sparse staging run in the addon when it loads;
// those must give the same bits as the TypeScript they replace, or the thread count would matter
// between processes with and without the addon only by tolerance, not by design.
const api = nativeTileApi();
describe.skipIf(typeof api === 'string')('addon helpers of the calling thread', () => {
  const native = api as CpuTileApi;
  const rows = 37, dv = 64;
  const random = (n: number, scale: number, seed: number): Float32Array => {
    let x = seed;
    return Float32Array.from({ length: n }, () => ((x = (x * 1103515245 + 12345) >>> 0) / 2 ** 32 - 0.5) * scale);
  };
  const partial = (seed: number): Partial => {
    const p = partialIn(random(rows * (dv + 2), 8, seed), 0, rows, dv);
    p.m[3] = -Infinity;
    p.l[3] = 0;
    return p;
  };

  test('merge equals mergeIntoJs bit for bit (rows with m = −Infinity on either side)', () => {
    const [a, b, src] = [partial(1), partial(1), partial(2)];
    src.m[5] = -Infinity;
    native.merge!(a.m, a.l, a.o, src.m, src.l, src.o, rows, dv);
    mergeIntoJs(b, src);
    for (const k of ['m', 'l', 'o'] as const) expect(Buffer.from(a[k].slice().buffer).equals(Buffer.from(b[k].slice().buffer)), k).toBe(true);
  });

  test('bf16Rows equals encodeRows with f32ToBf16 bit for bit (rounding ties, NaN, Inf, skipped rows)', () => {
    const o = random(rows * dv, 1e4, 3);
    o.set([NaN, -NaN, Infinity, -Infinity, 3.4e38, 1 + 2 ** -8, 1 + 3 * 2 ** -8, -0], 0);
    const factors = Float64Array.from({ length: rows }, (_, r) => 1 / (r + 0.3));
    const at = Float64Array.from({ length: rows }, (_, r) => (r === 7 ? -1 : (rows - 1 - r) * dv));
    const [x, y] = [new Uint16Array(rows * dv).fill(0xabcd), new Uint16Array(rows * dv).fill(0xabcd)];
    native.bf16Rows!(o, factors, x, at, rows, dv);
    encodeRows(o, factors, y, at, rows, dv, f32ToBf16);
    expect(Buffer.from(x.buffer).equals(Buffer.from(y.buffer))).toBe(true);
  });

  test('gather copies each (from, to, bytes) run and rejects runs past either array', () => {
    const src = Uint8Array.from({ length: 1000 }, (_, i) => i % 251);
    const dst = new Uint8Array(600);
    native.gather!(src, dst, Float64Array.of(990, 0, 10, 3, 100, 490, 0, 600, 0), 3);
    expect([...dst.subarray(0, 10)]).toEqual([...src.subarray(990, 1000)]);
    expect([...dst.subarray(100, 590)]).toEqual([...src.subarray(3, 493)]);
    expect(dst.subarray(10, 100).every((v) => v === 0) && dst.subarray(590).every((v) => v === 0)).toBe(true);
    expect(() => native.gather!(src, dst, Float64Array.of(995, 0, 10), 1)).toThrow(FlashMLAError);
    expect(() => native.gather!(src, dst, Float64Array.of(0, 595, 10), 1)).toThrow(FlashMLAError);
    expect(() => native.gather!(src, dst, Float64Array.of(0, 0, 10), 2)).toThrow(FlashMLAError);
  });
});
