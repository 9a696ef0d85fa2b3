// The reference backend's sparse prefill (src/reference/prefill.ts, docs/reference-backend.md#prefill):
// every tier against the oracle over FlashMLA's test grid, the same bits for any thread count,
// buffers detached mid-call, device tensors refused.
import { describe, expect, test } from 'vitest';
import { flashMlaSparseFwd } from '../../src/index.js';
import { mintDeviceTensor } from '../../src/device-tensor.js';
import { FlashMLAError } from '../../src/errors.js';
import { f32ToBf16 } from '../../src/formats/bf16.js';
import { checkIsAllclose, TOLERANCES } from '../../src/harness/metrics.js';
import { oraclePrefill } from '../../src/harness/prefill-oracle.js';
import { generatePrefillCase, prefillTestGrid, type PrefillCaseParams } from '../../src/harness/prefill-cases.js';
import { PARALLEL_MIN_FLOPS, tierAvailable, TIERS, type Tier } from '../../src/reference/index.js';
import { ITEM, itemRows, runItem, workItems } from '../../src/reference/items.js';
import { kernelsFor } from '../../src/reference/kernels.js';
import { partialIn } from '../../src/reference/partial.js';
import { forgetQ } from '../../src/reference/qmemo.js';
import { nativeRunner, runItemsNative } from '../../src/reference/runner.js';
import { referenceSparseFwd } from '../../src/reference/prefill.js';
import type { HostTensor } from '../../src/tensor.js';
import type { HostSparseFwdArgs, SparseFwdResult } from '../../src/types.js';
import { validateSparseFwd } from '../../src/validate/prefill.js';
import { shared } from '../helpers/shared.js';

type Result = SparseFwdResult<HostTensor>;

const KEYS = [['out', TOLERANCES.prefillOut], ['maxLogits', TOLERANCES.prefillMaxLogits], ['lse', TOLERANCES.prefillLse]] as const;

/** Each failing output's verdict, '' when all three are within FlashMLA's tolerances of `ref`. */
function mismatch(res: Result, ref: Result): string {
  return KEYS.map(([k, tol]) => checkIsAllclose(k, res[k], ref[k], tol).reason).filter((r) => r !== '').join('; ');
}

/** The grid's cases and their oracles (oraclePrefill: the float64 oracle rounded to the output dtypes), made once for every tier. */
let gridMemo: { name: string; args: HostSparseFwdArgs; ref: Result }[] | undefined;
function grid(): NonNullable<typeof gridMemo> {
  gridMemo ??= prefillTestGrid().map((p, n) => {
    const c = generatePrefillCase(p, n);
    return { name: c.name, args: c.args, ref: oraclePrefill(c.args) };
  });
  return gridMemo;
}

const same = (a: Result, b: Result): boolean =>
  (['out', 'maxLogits', 'lse'] as const).every((k) => Buffer.from(a[k].data.buffer, a[k].data.byteOffset, a[k].data.byteLength)
    .equals(Buffer.from(b[k].data.buffer, b[k].data.byteOffset, b[k].data.byteLength)));

const available = TIERS.filter(tierAvailable);

describe.each(available.map((t) => [t] as const))('tier %s', (tier: Tier) => {
  test('FlashMLA\'s prefill grid within FlashMLA\'s tolerances of the oracle', async () => {
    const failures: string[] = [];
    for (const c of grid()) {
      const why = mismatch(await referenceSparseFwd(c.args, { tier, threads: 1 }), c.ref);
      if (why !== '') failures.push(`${c.name}: ${why}`);
    }
    expect(failures).toEqual([]);
  }, 300_000);
});

/** Cases above the single-thread threshold, several items per token (chunks merged), sink and lengths included. */
const threaded: PrefillCaseParams[] = [
  { sQ: 2, sKv: 3000, topk: 2048, hQ: 64, dQK: 576, sink: true },
  { sQ: 5, sKv: 1500, topk: 1024, hQ: 128, dQK: 512, withLength: true, nonContiguous: true },
];

describe.each(threaded.map((p, n) => [generatePrefillCase(p, 100 + n).name, generatePrefillCase(p, 100 + n)] as const))('%s', (_, c) => {
  test('is above the single-thread threshold and has several items per token', () => {
    expect(c.flops).toBeGreaterThan(PARALLEL_MIN_FLOPS);
    expect(workItems(validateSparseFwd(c.args)).length / ITEM).toBeGreaterThan(c.args.q.shape[0]!);
  });

  test.each(available.map((t) => [t] as const))('tier %s: 1, 2 and 3 threads, plain and shared inputs, identical bits', async (tier) => {
    const one = await referenceSparseFwd(c.args, { tier, threads: 1 });
    expect(mismatch(one, oraclePrefill(c.args))).toBe('');
    for (const threads of [2, 3]) {
      for (const args of [c.args, shared(c.args)]) expect(same(await referenceSparseFwd(args, { tier, threads }), one), `${threads} threads`).toBe(true);
    }
    expect(same(await referenceSparseFwd(c.args, { tier, threads: 2 }), one), 'a second run').toBe(true);
  }, 120_000);
});

describe.runIf(available.includes('native'))('the native runner', () => {
  test('its partials on 1, 2 and 5 threads are the JavaScript-driven native tier\'s (prefill-item.ts on NativeWorkspaces), bit for bit', () => {
    for (const p of [threaded[0]!, threaded[1]!, { sQ: 3, sKv: 32, topk: 512, hQ: 128, dQK: 576, withLength: true } as PrefillCaseParams]) {
      const plan = validateSparseFwd(generatePrefillCase(p, 7).args);
      const items = workItems(plan);
      const n = items.length / ITEM;
      const slot = itemRows(plan) * (plan.dV + 2);
      const want = new Float32Array(n * slot).fill(NaN);
      for (let j = 0; j < n; j++) runItem(plan, items, j, kernelsFor('native'), partialIn(want, j * slot, plan.hQ, plan.dV));
      forgetQ();
      for (const threads of [1, 2, 5]) {
        const got = new Float32Array(n * slot).fill(NaN);
        expect(runItemsNative(nativeRunner()!, plan, items, n, got, slot, threads)).toBe(-1);
        expect(Buffer.from(got.buffer).equals(Buffer.from(want.buffer)), `${threads} threads`).toBe(true);
      }
    }
  });
});

describe('rows the kernels leave out', () => {
  /** One query token whose only used kv row gives every head the logit smScale·Σ q·k = `logit`. */
  function single(logit: number, sink: number | null): HostSparseFwdArgs {
    const hQ = 64, dQK = 512;
    const q = new Uint16Array(hQ * dQK).fill(f32ToBf16(1));
    const kv = new Uint16Array(2 * dQK).fill(f32ToBf16(logit / dQK));
    const idx = new Int32Array(64).fill(-1);
    idx[5] = 1;
    return {
      q: { dtype: 'bf16', shape: [1, hQ, dQK], data: q },
      kv: { dtype: 'bf16', shape: [2, 1, dQK], data: kv },
      indices: { dtype: 'int32', shape: [1, 1, 64], data: idx },
      smScale: 1,
      attnSink: sink === null ? null : { dtype: 'fp32', shape: [hQ], data: new Float32Array(hQ).fill(sink) },
    };
  }

  test.each(available.map((t) => [t] as const))('tier %s: a logit below −1e30·ln 2 is never seen (the kernels\' running max starts at −1e30); a sink scales out only', async (tier) => {
    const low = await referenceSparseFwd(single(-1e36, null), { tier, threads: 1 });
    expect(low.maxLogits.data[0]).toBe(-Infinity);
    expect(low.lse.data[0]).toBe(Infinity);
    expect(low.out.data.every((x) => x === 0)).toBe(true);
    const plain = await referenceSparseFwd(single(2, null), { tier, threads: 1 });
    const sunk = await referenceSparseFwd(single(2, 2), { tier, threads: 1 });
    expect(plain.maxLogits.data[0]).toBeCloseTo(2, 5);
    expect(sunk.lse.data[0]).toBe(plain.lse.data[0]);
    // out = v / (1 + e^(sink − logit)) = v / 2.
    expect(sunk.out.data[0]).toBe(f32ToBf16(2 / 512 / 2));
    const infinite = await referenceSparseFwd(single(2, Infinity), { tier, threads: 1 });
    expect(infinite.out.data.every((x) => x === 0)).toBe(true);
    expect(infinite.lse.data[0]).toBe(plain.lse.data[0]);
  });
});

describe('buffers and devices', () => {
  const c = generatePrefillCase({ sQ: 4, sKv: 900, topk: 512, hQ: 128, dQK: 576 }, 7);
  const ref = oraclePrefill(c.args);
  const pooled = available.filter((t) => t !== 'native');

  test.each(pooled.map((t) => [t] as const))('tier %s (worker pool): q or kv detached while the call runs → E_BUFFER', async (tier) => {
    for (const name of ['q', 'kv'] as const) {
      const t = c.args[name];
      const copy = { ...t, data: t.data.slice() };
      const p = referenceSparseFwd({ ...c.args, [name]: copy }, { tier, threads: 2 });
      structuredClone(copy.data.buffer, { transfer: [copy.data.buffer] });
      const e = await p.then(() => null, (x: unknown) => x);
      expect(e).toBeInstanceOf(FlashMLAError);
      expect({ code: (e as FlashMLAError).code, argument: (e as FlashMLAError).argument }).toEqual({ code: 'E_BUFFER', argument: name });
    }
  });

  test.runIf(available.includes('native'))('tier native: the runner computes before the call returns, so a later detach changes nothing', async () => {
    const copy = { ...c.args.kv, data: c.args.kv.data.slice() };
    const p = referenceSparseFwd({ ...c.args, kv: copy }, { tier: 'native', threads: 2 });
    structuredClone(copy.data.buffer, { transfer: [copy.data.buffer] });
    expect(mismatch(await p, ref)).toBe('');
  });

  test.each(available.map((t) => [t] as const))('tier %s: a non-finite q → E_VALUE naming the first element', async (tier) => {
    const data = c.args.q.data.slice();
    const at = (s: number, h: number, d: number): number => (s * 128 + h) * 576 + d;
    data[at(2, 3, 17)] = 0x7fc0;
    data[at(3, 0, 1)] = 0x7f80;
    const e = await referenceSparseFwd({ ...c.args, q: { ...c.args.q, data } }, { tier, threads: 2 }).then(() => null, (x: unknown) => x);
    expect(e).toBeInstanceOf(FlashMLAError);
    expect((e as FlashMLAError).code).toBe('E_VALUE');
    expect((e as FlashMLAError).message).toContain('q[2, 3, 17]');
  });

  test('a device tensor is refused with E_DEVICE naming it', async () => {
    const owner = { device: 0, disposed: false, release: (): void => undefined };
    const device = (t: HostTensor) =>
      mintDeviceTensor(owner, { dtype: t.dtype, shape: t.shape, strides: t.strides, capacity: t.data.length, address: 1n << 20n, allocation: null });
    for (const name of ['q', 'kv', 'indices'] as const) {
      const e = await flashMlaSparseFwd({ ...c.args, [name]: device(c.args[name]) }, { backend: 'reference' }).then(() => null, (x: unknown) => x);
      expect(e).toBeInstanceOf(FlashMLAError);
      expect({ code: (e as FlashMLAError).code, argument: (e as FlashMLAError).argument }).toEqual({ code: 'E_DEVICE', argument: name });
    }
  });
});
