// The reference backend gives the same bits for any thread count: work items are split the same
// way whatever the count and merged in the same order; workers only change who computes an item.
// Cases are above the size threshold so that threads > 1 really run on the worker pool.
import { describe, expect, test } from 'vitest';
import { generateDenseCase, generateSparseCase, type DecodeCase } from '../src/harness/cases.js';
import { checkIsAllclose, TOLERANCES } from '../src/harness/metrics.js';
import { oracleDecode } from '../src/harness/oracle.js';
import { PARALLEL_MIN_FLOPS, referenceDecode } from '../src/reference/index.js';
import { getMlaMetadata } from '../src/sched-meta.js';
import type { DecodeArgs } from '../src/types.js';
import type { HostTensor, Tensor } from '../src/tensor.js';

const cases: DecodeCase[] = [
  generateDenseCase({ b: 3, sQ: 2, sK: 2500, hQ: 16, hK: 1, varlen: true, causal: true }, 11),
  generateDenseCase({ b: 1, sQ: 2, sK: 1100, hQ: 128, hK: 1, varlen: false, causal: true }, 17),
  generateDenseCase({ b: 4, sQ: 1, sK: 1500, hQ: 16, hK: 4, varlen: true, causal: false, nonContiguous: true, zeroSeqlen: true }, 16),
  generateSparseCase({ b: 2, sQ: 2, hQ: 64, dQK: 576, main: { sK: 3000, topk: 1024, blockSize: 64, varlen: true } }, 13),
  generateSparseCase({ b: 2, sQ: 1, hQ: 64, dQK: 512, main: { sK: 2000, topk: 1024, blockSize: 61, withLength: true },
    extra: { sK: 700, topk: 512, blockSize: 2 }, sink: true }, 14),
];

/** The same arguments with every host tensor copied into a SharedArrayBuffer (the zero-copy path). */
function shared(args: DecodeCase['args']): DecodeCase['args'] {
  const out: Record<string, unknown> = { ...args };
  for (const [name, v] of Object.entries(args)) {
    const t = v as HostTensor | null;
    if (!t || typeof t !== 'object' || !('data' in t)) continue;
    const data = new (t.data.constructor as new (b: SharedArrayBuffer) => HostTensor['data'])(new SharedArrayBuffer(t.data.byteLength));
    data.set(t.data as never);
    out[name] = { ...t, data } as Tensor;
  }
  return out as DecodeCase['args'];
}

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
