// compare() on sparse prefill cases, the prefill matrices, and prefill cases mixed with decode.
import { describe, expect, test } from 'vitest';
import { prefillShapes } from '../../src/bench/prefill-shapes.js';
import { FlashMLA } from '../../src/flashmla.js';
import { generateDenseCase } from '../../src/harness/cases.js';
import { compare, type CustomSide } from '../../src/harness/compare.js';
import { TOLERANCES } from '../../src/harness/metrics.js';
import { oracleDecode } from '../../src/harness/oracle.js';
import { generatePrefillCase, prefillTestGrid, type PrefillCaseParams } from '../../src/harness/prefill-cases.js';
import { oraclePrefill } from '../../src/harness/prefill-oracle.js';
import { prefillMatrixEntries } from '../../src/harness/prefill-matrix.js';
import { validateSparseFwd } from '../../src/validate/prefill.js';

const small = (): ReturnType<typeof generatePrefillCase>[] => [
  generatePrefillCase({ sQ: 2, sKv: 100, topk: 128, hQ: 64, dQK: 512, sink: true, withLength: true }, 1),
  generatePrefillCase({ sQ: 2, sKv: 300, topk: 64, hQ: 128, dQK: 576, nonContiguous: true }, 2),
];

/** The prefill oracle with one change to its results. */
function corrupted(mutate: (r: ReturnType<typeof oraclePrefill>) => void): CustomSide {
  return { name: 'corrupted', sparseFwd: async (args) => { const r = oraclePrefill(args); mutate(r); return r; } };
}

describe('compare() on sparse prefill', () => {
  test('reference vs oracle passes, judging out, maxLogits and lse with the prefill tolerances', async () => {
    const report = await compare({ a: 'reference', b: 'oracle', cases: small() });
    expect(report.results.map((r) => [r.kind, r.pass, r.errors])).toEqual([['prefill', true, []], ['prefill', true, []]]);
    for (const r of report.results) {
      expect(r.out!.tolerance).toEqual(TOLERANCES.prefillOut);
      expect(r.maxLogits!.tolerance).toEqual(TOLERANCES.prefillMaxLogits);
      expect(r.lse!.tolerance).toEqual(TOLERANCES.prefillLse);
      expect(r.ms.a).toBeGreaterThan(0);
      expect(r.flops).toBeGreaterThan(0);
    }
    expect(report.pass).toBe(true);
  });

  test('a reference instance works as a side', async () => {
    const inst = await FlashMLA.open({ backend: 'reference' });
    try {
      const report = await compare({ a: inst, b: 'oracle', cases: small().slice(0, 1) });
      expect([report.a, report.pass]).toEqual(['reference', true]);
    } finally {
      await inst.dispose();
    }
  });

  test('a wrong maxLogits is caught while out and lse pass', async () => {
    const report = await compare({ a: corrupted((r) => { (r.maxLogits.data as Float32Array)[3]! += 0.01; }), b: 'oracle', cases: small().slice(0, 1) });
    const r = report.results[0]!;
    expect([r.out!.pass, r.maxLogits!.pass, r.lse!.pass, r.pass]).toEqual([true, false, true, false]);
    expect(r.maxLogits!.firstFailure!.index).toBe(3);
  });

  test('an lse of −inf where the oracle has +inf (a row with nothing valid) is caught', async () => {
    const c = generatePrefillCase({ sQ: 3, sKv: 64, topk: 64, hQ: 64, dQK: 512, withLength: true }, 3);
    (c.args.topkLength!.data as Int32Array)[1] = 0;
    const report = await compare({ a: corrupted((r) => { (r.lse.data as Float32Array)[64] = -Infinity; }), b: 'oracle', cases: [c] });
    expect(report.results[0]!.lse!.anomalyMismatches).toBe(1);
    expect(report.pass).toBe(false);
  });

  test('decode and prefill cases mix; a side without the kind fails those cases with E_UNSUPPORTED', async () => {
    const dense = generateDenseCase({ b: 1, sQ: 1, sK: 20, hQ: 2, hK: 1, varlen: false, causal: false }, 4);
    const decodeOnly: CustomSide = { name: 'decode-only', decode: async (args) => oracleDecode(args) };
    const report = await compare({ a: decodeOnly, b: 'reference', cases: [dense, small()[0]!] });
    expect(report.results.map((r) => [r.kind, r.pass])).toEqual([['dense', true], ['prefill', false]]);
    expect(report.results[0]!.maxLogits).toBeNull();
    expect(report.results[1]!.errors.map((e) => [e.side, e.code])).toEqual([['a', 'E_UNSUPPORTED']]);
  });

  test('a custom side with neither entry point is refused', async () => {
    await expect(compare({ a: { name: 'nothing' } as CustomSide, b: 'oracle', cases: small() })).rejects.toMatchObject({ code: 'E_VALUE', argument: 'a' });
  });

  test('maxWork skips large cases whatever the sides', async () => {
    const report = await compare({ a: 'reference', b: 'reference', cases: small(), maxWork: 20e6 });
    expect(report.results.map((r) => r.skipped === null)).toEqual([true, false]);
    expect(report.results[1]!.skipped).toMatch(/maxWork/);
    expect([report.passed, report.skipped, report.pass]).toEqual([1, 1, true]);
  });

  test("prefill-full cases above maxWork at full topk are skipped without being generated", async () => {
    const report = await compare({ a: 'reference', b: 'reference', cases: { matrix: 'prefill-full' }, maxWork: 1 });
    expect(report.results.length).toBe(376);
    expect(report.results.every((r) => r.kind === 'prefill' && /above maxWork .* at full topk \(not generated\)/.test(r.skipped ?? ''))).toBe(true);
    const biggest = report.results.find((r) => r.name === 'prefill s_q=4096 s_kv=2048 topk=2048 h_q=128 d_qk=576 sink topk_length all-invalid')!;
    expect(biggest.flops).toBe(2 * 4096 * 2048 * 128 * 1088);
    expect([report.skipped, report.pass]).toEqual([376, false]);
  });

  test("the 'prefill' matrix with a filter runs matching cases seeded by position", async () => {
    const report = await compare({ a: 'reference', b: 'oracle', cases: { matrix: 'prefill', seed: 3 }, filter: 's_q=1 s_kv=95 topk=128 h_q=64' });
    expect(report.results.length).toBe(2);
    expect(report.results.every((r) => r.kind === 'prefill' && r.pass)).toBe(true);
    const entries = prefillMatrixEntries('prefill');
    const first = entries.findIndex((p) => p.sQ === 1 && p.sKv === 95 && p.hQ === 64 && p.dQK === 512);
    expect(report.results[0]!.name).toBe(generatePrefillCase(entries[first]!, 3 + first).name);
    expect([report.source, report.seed]).toEqual(['prefill', 3]);
  });
});

describe('prefill matrices', () => {
  const flops = (p: PrefillCaseParams): number => 2 * p.sQ * p.topk * p.hQ * (p.dQK + 512);

  test("'prefill' is FlashMLA's grid cut to CPU size: both layouts and head counts, every feature, s_kv < topk", () => {
    const grid = prefillMatrixEntries('prefill');
    expect(grid).toEqual(prefillTestGrid());
    expect(new Set(grid.map((p) => p.dQK))).toEqual(new Set([512, 576]));
    expect(new Set(grid.map((p) => p.hQ))).toEqual(new Set([64, 128]));
    for (const f of ['sink', 'withLength', 'allInvalid', 'nonContiguous'] as const) expect(grid.some((p) => p[f])).toBe(true);
    expect(grid.some((p) => p.sKv < p.topk)).toBe(true);
    expect(Math.max(...grid.map(flops))).toBeLessThan(3e9);
  });

  test("'prefill-full' is the grid at FlashMLA's sizes (376 cases)", () => {
    const full = prefillMatrixEntries('prefill-full');
    expect(full.length).toBe(2 * 2 * (10 * 3 + 7 * 2 * 4 + 4 + 4));
    expect(new Set(full.map((p) => p.sQ))).toEqual(new Set([1, 62, 213, 1234, 4096, 1024]));
    expect(Math.max(...full.map((p) => p.topk))).toBe(8192);
    expect(full.filter((p) => p.allInvalid).length).toBe(16);
    // Each (shape, features) appears once.
    expect(new Set(full.map((p) => JSON.stringify(p))).size).toBe(full.length);
  });
});

describe('prefill bench shapes', () => {
  test("the GPU set is FlashMLA's performance cases; the CPU set cuts s_q and keeps each template's s_kv ends", () => {
    const gpu = prefillShapes('gpu').shapes;
    expect(gpu.map((s) => s.seqlen)).toEqual([8192, 32768, 65536, 98304, 131072, 8192, 32768, 49152, 65536, 8192, 32768, 49152, 65536]);
    expect(gpu.every((s) => s.name.includes('s_q=4096'))).toBe(true);
    const cpu = prefillShapes('cpu').shapes;
    expect(cpu.map((s) => [s.group, s.seqlen])).toEqual([
      ['V3.2', 8192], ['V3.2', 131072], ['MODEL1 config 1', 8192], ['MODEL1 config 1', 65536], ['MODEL1 config 2', 8192], ['MODEL1 config 2', 65536],
    ]);
  });

  test("inputs: distinct in-range indices per token, FlashMLA's FLOP and byte counts, and a valid call", () => {
    const shape = prefillShapes('cpu').shapes[2]!;
    const { args, flops, bytes } = shape.build();
    const [sQ, hQ, dQK] = args.q.shape as number[];
    const topk = args.indices.shape[2]!;
    const idx = args.indices.data as Int32Array;
    for (let s = 0; s < sQ!; s++) {
      const row = idx.subarray(s * topk, (s + 1) * topk);
      expect(new Set(row).size).toBe(topk);
      expect(row.every((t) => t >= 0 && t < args.kv.shape[0]!)).toBe(true);
    }
    expect(flops).toBe(2 * sQ! * topk * hQ! * (dQK! + 512));
    expect(bytes).toBe(sQ! * topk * dQK! * 2 + sQ! * hQ! * (dQK! + 512) * 2);
    expect(validateSparseFwd(args).topk).toBe(topk);
  });
});
