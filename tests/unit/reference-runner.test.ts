// The native tier's item runner (binding/cpu_runner.cc, src/reference/runner.ts): the same partials,
// bit for bit, as the JavaScript-driven native workspaces for any thread count; every range it
// reads re-checked in C++ (a FlashMLAError, never a read outside an array); callers that detach or
// transfer buffers right after issuing a call, and pool workers that die mid-call, end in a
// result or a FlashMLAError, never a hang; warmup().
import { afterAll, describe, expect, test } from 'vitest';
import type { Worker } from 'node:worker_threads';
import { FlashMLAError } from '../../src/errors.js';
import { generateDenseCase, generateSparseCase, type DecodeCase } from '../../src/harness/cases.js';
import { oracleDecode } from '../../src/harness/oracle.js';
import type { DecodePlan, DensePlan } from '../../src/plan.js';
import { allocateOutputs } from '../../src/reference/finalize.js';
import { ITEM, itemRows, runItem, workItems } from '../../src/reference/items.js';
import { merger, referenceDecode, TIER_ENV } from '../../src/reference/index.js';
import { kernelsFor } from '../../src/reference/kernels.js';
import { partialIn } from '../../src/reference/partial.js';
import { pool } from '../../src/reference/pool.js';
import { forgetQ } from '../../src/reference/qmemo.js';
import { nativeRunner, runFinishing, runItemsNative, type RunnerFinish } from '../../src/reference/runner.js';
import { warmup } from '../../src/reference/warmup.js';
import type { HostTensor } from '../../src/tensor.js';
import type { DecodeResult } from '../../src/types.js';
import { validateDecode } from '../../src/validate/index.js';
import { expectClose, withMeta } from '../helpers/decode.js';

const runner = nativeRunner()!;

const cases: DecodeCase[] = [
  generateDenseCase({ b: 2, sQ: 2, sK: 700, hQ: 16, hK: 1, varlen: true, causal: true }, 41),
  generateDenseCase({ b: 1, sQ: 3, sK: 300, hQ: 8, hK: 8, varlen: false, causal: true, dtype: 'fp16' }, 42),
  generateDenseCase({ b: 3, sQ: 1, sK: 500, hQ: 128, hK: 1, varlen: true, causal: false, nonContiguous: true, zeroSeqlen: true }, 43),
  generateDenseCase({ b: 1, sQ: 2, sK: 1200, hQ: 128, hK: 1, varlen: false, causal: true }, 44),
  generateSparseCase({ b: 2, sQ: 2, hQ: 64, dQK: 576, main: { sK: 900, topk: 640, blockSize: 61, varlen: true } }, 45),
  generateSparseCase({ b: 2, sQ: 1, hQ: 128, dQK: 512, main: { sK: 300, topk: 128, blockSize: 64, withLength: true },
    extra: { sK: 200, topk: 64, blockSize: 2, withLength: true }, sink: true }, 46),
];

const planOf = (c: DecodeCase): DecodePlan => validateDecode(withMeta(c.args));

/** Every item's partial, as one Float32Array of equal slots: through the runner, or item by item on NativeWorkspaces. */
function partials(plan: DecodePlan, how: 'js' | number): Float32Array {
  const items = workItems(plan);
  const n = items.length / ITEM;
  const slot = itemRows(plan) * (plan.dV + 2);
  const results = new Float32Array(n * slot).fill(NaN);
  if (how === 'js') {
    const kernels = kernelsFor('native');
    for (let j = 0; j < n; j++) runItem(plan, items, j, kernels, partialIn(results, j * slot, items[ITEM * j + 5]! - items[ITEM * j + 4]!, plan.dV));
    forgetQ();
  } else {
    runItemsNative(runner, plan, items, n, results, slot, how);
  }
  return results;
}

const same = (a: Float32Array, b: Float32Array): boolean => Buffer.from(a.buffer).equals(Buffer.from(b.buffer));

test('the addon has the runner', () => {
  expect(runner).not.toBeNull();
});

describe.each(cases.map((c) => [c.name, c] as const))('%s', (_, c) => {
  test('the runner\'s partials on 1, 2 and 5 threads are the JavaScript-driven native tier\'s, bit for bit', () => {
    const plan = planOf(c);
    const want = partials(plan, 'js');
    for (const threads of [1, 2, 5]) expect(same(partials(plan, threads), want), `${threads} threads`).toBe(true);
  });
});

/** The same plan without its attention sink (whose out scaling needs the LSE: those calls finish in JavaScript). */
const sinkless = (plan: DecodePlan): DecodePlan => (plan.kind === 'sparse' ? { ...plan, attnSink: null } : plan);

/** out and lse as index.ts's merger writes them from the runner's partials: the path the runner's finishing replaces. */
function mergedInJs(plan: DecodePlan): DecodeResult<HostTensor> {
  const items = workItems(plan);
  const n = items.length / ITEM;
  const slot = itemRows(plan) * (plan.dV + 2);
  const results = new Float32Array(n * slot);
  expect(runItemsNative(runner, plan, items, n, results, slot, 1)).toBe(-1);
  const res = allocateOutputs(plan);
  const absorb = merger(plan, items, res);
  for (let j = 0; j < n; j++) absorb(j, partialIn(results, j * slot, items[ITEM * j + 5]! - items[ITEM * j + 4]!, plan.dV));
  return res;
}

const bitsOf = (r: DecodeResult<HostTensor>): [Buffer, Buffer] => [Buffer.from(r.out.data.buffer), Buffer.from(r.lse.data.buffer)];

describe.each(cases.map((c) => [c.name, c] as const))('%s', (_, c) => {
  test('the runner\'s finished rows are the JavaScript merge and rounding of its partials, bit for bit, on 1, 2 and 5 threads, in one wave or in waves of 1–3 items', () => {
    const plan = sinkless(planOf(c));
    const [out, lse] = bitsOf(mergedInJs(plan));
    const items = workItems(plan);
    const n = items.length / ITEM;
    const slot = itemRows(plan) * (plan.dV + 2);
    for (const threads of [1, 2, 5]) {
      for (const wave of [n, 1, 2, 3]) {
        const res = allocateOutputs(plan);
        (res.out.data as Uint16Array).fill(0xabcd);
        runFinishing(runner, plan, items, res, slot, threads, wave);
        const [o, l] = bitsOf(res);
        expect(o.equals(out), `out, ${threads} threads, waves of ${wave}`).toBe(true);
        expect(l.equals(lse), `lse, ${threads} threads, waves of ${wave}`).toBe(true);
      }
    }
  });
});

test('cases 0, 3 and 4 have groups of several items, so waves of 1–3 items leave groups open (carried to the next wave)', () => {
  const groups = (c: DecodeCase): number => {
    const items = workItems(planOf(c));
    return new Set(Array.from({ length: items.length / ITEM }, (_, j) => `${items[ITEM * j]},${items[ITEM * j + 1]},${items[ITEM * j + 4]}`)).size;
  };
  const several = cases.filter((c) => workItems(planOf(c)).length / ITEM > groups(c));
  expect(several.map((c) => c.name)).toEqual([0, 3, 4].map((k) => cases[k]!.name));
});

describe('q\'s NaN / ±Infinity check on the runner\'s threads', () => {
  /** The error validateDecode gives for these arguments, and the one the native tier's call gives at `threads`. */
  async function both(args: DecodeCase['args'], threads: number): Promise<[FlashMLAError, FlashMLAError]> {
    let want: unknown;
    try {
      validateDecode(withMeta(args));
    } catch (e) {
      want = e;
    }
    const got = await referenceDecode(withMeta(args), { threads, tier: 'native' }).then(() => undefined, (e: unknown) => e);
    expect(want).toBeInstanceOf(FlashMLAError);
    expect(got).toBeInstanceOf(FlashMLAError);
    return [want as FlashMLAError, got as FlashMLAError];
  }
  const poisoned = (c: DecodeCase, at: number[], bits: number): DecodeCase['args'] => {
    const q = c.args.q as HostTensor<'bf16'>;
    const data = q.data.slice();
    for (const x of at) data[x] = bits;
    return { ...c.args, q: { ...q, data } };
  };

  test.each([
    ['dense bf16, NaN in the last group and the first', 0, 0x7fc0],
    ['dense fp16, +Infinity', 1, 0x7c00],
    ['dense bf16, non-contiguous q, -Infinity', 2, 0xff80],
    ['sparse bf16, NaN', 4, 0xffc1],
    ['sparse MODEL1 with an attention sink (merged in JavaScript), NaN', 5, 0x7fc0],
  ] as const)('%s: the same E_VALUE on q, naming the first element, as validateDecode, on 1, 2 and 5 threads', async (_, k, bits) => {
    const c = cases[k]!;
    const q = c.args.q as HostTensor<'bf16'>;
    // Elements of q's buffer that q's view reaches: the last and one near the start.
    const plan = planOf(c);
    const v = plan.q.view;
    const last = v.offset + (v.shape[0]! - 1) * v.strides[0]! + (v.shape[1]! - 1) * v.strides[1]! + (v.shape[2]! - 1) * v.strides[2]! + v.shape[3]! - 1;
    const args = poisoned(c, [last, v.offset + v.strides[2]! + 7], bits);
    expect(q.data.length).toBeGreaterThan(last);
    for (const threads of [1, 2, 5]) {
      const [want, got] = await both(args, threads);
      expect(got.code).toBe('E_VALUE');
      expect(got.argument).toBe('q');
      expect(got.message).toBe(want.message);
      expect(got.message).toContain(`q[0, 0, 1, 7]`);
    }
  });

  test('finite q: the runner reports nothing', () => {
    for (const c of cases) {
      const plan = planOf(c);
      const items = workItems(plan);
      const n = items.length / ITEM;
      const slot = itemRows(plan) * (plan.dV + 2);
      expect(runItemsNative(runner, plan, items, n, new Float32Array(n * slot), slot, 2)).toBe(-1);
    }
  });
});

describe('the runner re-checks every range it reads', () => {
  const dense = cases[0]!;
  const sparse = cases[4]!;
  const run = (plan: DecodePlan, edit: (items: Int32Array) => void = () => undefined, results?: Float32Array): void => {
    const items = workItems(plan);
    edit(items);
    const n = items.length / ITEM;
    const slot = itemRows(plan) * (plan.dV + 2);
    runItemsNative(runner, plan, items, n, results ?? new Float32Array(n * slot), slot, 2);
  };
  const internal = (fn: () => void): void => {
    expect(fn).toThrow(FlashMLAError);
    try {
      fn();
    } catch (e) {
      expect((e as FlashMLAError).code).toBe('E_INTERNAL');
    }
  };

  test('items naming a request, head, row or key range outside the call', () => {
    const plan = planOf(dense);
    internal(() => run(plan, (it) => { it[0] = plan.b; }));
    internal(() => run(plan, (it) => { it[1] = -1; }));
    internal(() => run(plan, (it) => { it[5] = 10_000; }));
    internal(() => run(plan, (it) => { it[2] = -64; }));
    const sp = planOf(sparse);
    internal(() => run(sp, (it) => { it[1] = sp.sQ; }));
    internal(() => run(sp, (it) => { it[4] = 1; }));
  });

  test('results shorter than the items, arrays shorter than the plan says', () => {
    const plan = planOf(dense) as DensePlan;
    internal(() => run(plan, undefined, new Float32Array(10)));
    const q = plan.q.tensor as HostTensor<'bf16'>;
    internal(() => run({ ...plan, q: { ...plan.q, tensor: { ...q, data: q.data.subarray(0, q.data.length - 1) } } }));
    const kc = plan.kCache.tensor as HostTensor<'bf16'>;
    internal(() => run({ ...plan, kCache: { ...plan.kCache, tensor: { ...kc, data: kc.data.subarray(0, kc.data.length >> 1) } } }));
    const bt = (plan.blockTable.tensor as HostTensor<'int32'>).data.slice();
    bt[0] = 1 << 30;
    internal(() => run({ ...plan, blockTable: { ...plan.blockTable, tensor: { ...(plan.blockTable.tensor as HostTensor), data: bt } } }));
  });

  test('sparse indices past the cache, caches too short', () => {
    const plan = planOf(sparse);
    if (plan.kind !== 'sparse') throw new Error('sparse case expected');
    const idx = (plan.main.indices.tensor as HostTensor<'int32'>).data.slice();
    idx.fill(2 ** 30);
    internal(() => run({ ...plan, main: { ...plan.main, indices: { ...plan.main.indices, tensor: { ...(plan.main.indices.tensor as HostTensor), data: idx } } } }));
    idx.fill(-7);
    internal(() => run({ ...plan, main: { ...plan.main, indices: { ...plan.main.indices, tensor: { ...(plan.main.indices.tensor as HostTensor), data: idx } } } }));
    const cache = plan.main.cache.tensor as HostTensor<'uint8'>;
    internal(() => run({ ...plan, main: { ...plan.main, cache: { ...plan.main.cache, tensor: { ...cache, data: cache.data.subarray(0, 1000) } } } }));
  });

  test('finishing: out, lse or a carry shorter than the call, overlapping carries, bad flags, one group\'s items with different rows', () => {
    const plan = planOf(dense);
    const items = workItems(plan);
    const n = items.length / ITEM;
    const slot = itemRows(plan) * (plan.dV + 2);
    const res = allocateOutputs(plan);
    const out = res.out.data as Uint16Array, lse = res.lse.data as Float32Array;
    const finish = (f: Partial<RunnerFinish>, edit: (it: Int32Array) => void = () => undefined): void => {
      const it = items.slice();
      edit(it);
      runItemsNative(runner, plan, it, n, new Float32Array(n * slot), slot, 2,
        { out, lse, sums: new Float32Array(lse.length), carryIn: new Float32Array(slot), carryOut: new Float32Array(slot), flags: 0, ...f });
    };
    finish({});
    internal(() => finish({ out: out.subarray(1) }));
    internal(() => finish({ lse: lse.subarray(1) }));
    internal(() => finish({ sums: new Float32Array(lse.length - 1) }));
    internal(() => finish({ carryIn: new Float32Array(slot - 1), flags: 1 }));
    internal(() => finish({ carryOut: new Float32Array(slot - 1), flags: 2 }));
    const carry = new Float32Array(2 * slot);
    internal(() => finish({ carryIn: carry.subarray(0, slot + 1), carryOut: carry.subarray(slot), flags: 3 }));
    internal(() => finish({ flags: 4 }));
    internal(() => finish({}, (it) => { it[ITEM + 5] = it[5]! - 1; }));
  });

  test('bad parameter blocks and array types', () => {
    const items = new Int32Array(ITEM);
    expect(() => runner.runDense(new Float64Array(3), new Uint16Array(1), new Uint16Array(1), new Int32Array(1), new Int32Array(1), items, 1, new Float32Array(1), 1, 1))
      .toThrow(FlashMLAError);
    expect(() => runner.runSparse(Float64Array.of(0, 1, 1, 16, 512, 1, 0, 0, 0, 0, 1, 64, 1, 0, 0, 0, 0, 0, 0, 0, 0), new Uint16Array(1),
      new Int8Array(1) as unknown as Uint8Array, new Int32Array(1), null, null, null, null, items, 1, new Float32Array(1 << 16), 1 << 14, 1)).toThrow(FlashMLAError);
    expect(() => runner.startHelpers(-1)).toThrow(FlashMLAError);
    expect(() => runner.prime(-1, 100)).toThrow(FlashMLAError);
    expect(() => runner.prime(1, 10_001)).toThrow(FlashMLAError);
    expect(() => runner.prime(1, 0.5)).toThrow(FlashMLAError);
  });

  test('primed helpers that get no call go back to sleep; the next call still gets them and the same bits', async () => {
    const plan = planOf(cases[3]!);
    const want = partials(plan, 1);
    runner.prime(2, 200);
    await new Promise((resolve) => setTimeout(resolve, 20));
    runner.prime(2, 10_000);
    expect(same(partials(plan, 3), want)).toBe(true);
    expect(same(partials(plan, 3), want)).toBe(true);
    expect(runner.startHelpers(0)).toBeGreaterThanOrEqual(2);
  });
});

describe('buffers detached or transferred right after a call is issued', () => {
  // Big enough for several threads.
  const c = () => generateDenseCase({ b: 4, sQ: 1, sK: 2048, hQ: 16, hK: 1, varlen: false, causal: false }, 51);
  const detachers: [string, (buf: ArrayBuffer) => void][] = [
    ['structuredClone transfer', (buf) => void structuredClone(buf, { transfer: [buf] })],
    ['postMessage transfer', (buf) => {
      const { port1, port2 } = new MessageChannel();
      port1.postMessage(buf, [buf]);
      port1.close();
      port2.close();
    }],
  ];
  const transfer = (ArrayBuffer.prototype as { transfer?: (n?: number) => ArrayBuffer }).transfer;
  if (typeof transfer === 'function') {
    detachers.push(['ArrayBuffer.prototype.transfer', (buf) => void transfer.call(buf, 16)]);
  }

  /** A result that matches the oracle, or E_BUFFER: never another error, never a hang. */
  async function settle(p: Promise<DecodeResult<HostTensor>>, want: DecodeResult<HostTensor>): Promise<'result' | 'E_BUFFER'> {
    const r = await p.then((x) => x, (e: unknown) => e);
    if (r instanceof FlashMLAError) {
      expect(r.code).toBe('E_BUFFER');
      return 'E_BUFFER';
    }
    expectClose('dense', r as DecodeResult<HostTensor>, want);
    return 'result';
  }

  test.each(detachers)('native tier, %s of q and the cache: the call read them before it returned', async (_, detach) => {
    const d = c();
    const want = oracleDecode(withMeta(d.args));
    for (const name of ['q', 'kCache'] as const) {
      const t = d.args[name] as HostTensor<'bf16'>;
      const copy = { ...t, data: t.data.slice() };
      const p = referenceDecode(withMeta({ ...d.args, [name]: copy }), { threads: 2 });
      detach(copy.data.buffer as ArrayBuffer);
      expect(copy.data.length).toBe(0);
      expect(await settle(p, want)).toBe('result');
    }
  });

  test.each(detachers)('worker-pool tier (simd), %s of the cache mid-call: E_BUFFER or a correct result', async (_, detach) => {
    const d = c();
    const want = oracleDecode(withMeta(d.args));
    const saved = process.env[TIER_ENV];
    process.env[TIER_ENV] = 'simd';
    try {
      const t = d.args.kCache as HostTensor<'bf16'>;
      const copy = { ...t, data: t.data.slice() };
      const p = referenceDecode(withMeta({ ...d.args, kCache: copy }), { threads: 2 });
      detach(copy.data.buffer as ArrayBuffer);
      await settle(p, want);
    } finally {
      if (saved === undefined) delete process.env[TIER_ENV];
      else process.env[TIER_ENV] = saved;
    }
  });
});

describe('pool workers that die mid-call', () => {
  const saved = process.env[TIER_ENV];
  afterAll(() => {
    if (saved === undefined) delete process.env[TIER_ENV];
    else process.env[TIER_ENV] = saved;
  });

  test('end the call in E_INTERNAL or a correct result, never a hang; the next call gets new workers', async () => {
    process.env[TIER_ENV] = 'simd';
    const d = generateDenseCase({ b: 4, sQ: 1, sK: 4096, hQ: 16, hK: 1, varlen: false, causal: false }, 52);
    const want = oracleDecode(withMeta(d.args));
    const workers = (): Worker[] => (pool as unknown as { workers: Worker[] }).workers;
    await referenceDecode(withMeta(d.args), { threads: 3 });
    expect(workers().length).toBeGreaterThanOrEqual(2);
    const outcomes = new Set<string>();
    for (let round = 0; round < 4; round++) {
      const p = referenceDecode(withMeta(d.args), { threads: 3 });
      // Killed while the call awaits its workers (the calling thread has done its share by then).
      for (const w of [...workers()]) void w.terminate();
      const r = await p.then((x) => x, (e: unknown) => e);
      if (r instanceof FlashMLAError) {
        expect(r.code).toBe('E_INTERNAL');
        outcomes.add('E_INTERNAL');
      } else {
        expectClose('dense', r as DecodeResult<HostTensor>, want);
        outcomes.add('result');
      }
      expectClose('dense', await referenceDecode(withMeta(d.args), { threads: 3 }), want);
    }
    expect(outcomes.has('E_INTERNAL')).toBe(true);
  });
});

describe('warmup()', () => {
  test('readies the tier calls run on and the threads asked for', async () => {
    const r = await warmup({ threads: 3 });
    expect(r.tier).toBe(process.env[TIER_ENV] ?? 'native');
    expect(r.threads).toBe(3);
    expect(r.ms).toBeGreaterThan(0);
    if (r.tier === 'native') expect(runner.startHelpers(0)).toBeGreaterThanOrEqual(2);
  });

  test('bad options are FlashMLAErrors naming them', async () => {
    await expect(warmup({ threads: 0 })).rejects.toMatchObject({ code: 'E_VALUE', argument: 'options.threads' });
    await expect(warmup(null as never)).rejects.toMatchObject({ code: 'E_VALUE', argument: 'options' });
  });
});
