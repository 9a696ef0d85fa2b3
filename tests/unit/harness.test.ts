import { describe, expect, test } from 'vitest';
import { FlashMLAError } from '../../src/errors.js';
import { generateDenseCase, generateSparseCase, type DecodeCase } from '../../src/harness/cases.js';
import { compare, type CustomSide } from '../../src/harness/compare.js';
import { matrixEntries, type MatrixEntry } from '../../src/harness/matrix.js';
import { checkIsAllclose, TOLERANCES, type Tolerance } from '../../src/harness/metrics.js';
import { oracleDecode } from '../../src/harness/oracle.js';
import type { HostTensor } from '../../src/tensor.js';
import type { DecodeArgs, DecodeResult } from '../../src/types.js';

const fp32 = (values: number[], shape = [values.length]): HostTensor<'fp32'> => ({ dtype: 'fp32', shape, data: Float32Array.from(values) });
const loose: Tolerance = { absTol: 1e-3, relTol: 0.01, cosDiffTol: 1 };

describe('checkIsAllclose', () => {
  test('an element passes on the abs rule or on the rel rule, and fails only when both fail', () => {
    // |Δ| = 0.5 ≥ abs_tol but |Δ|/|r| = 0.005 < rel_tol: passes.
    expect(checkIsAllclose('x', fp32([100.5]), fp32([100]), loose).pass).toBe(true);
    // |Δ| = 5e-4 < abs_tol though |Δ|/|r| = 5: passes.
    expect(checkIsAllclose('x', fp32([6e-4]), fp32([1e-4]), loose).pass).toBe(true);
    const r = checkIsAllclose('x', fp32([1, 2, 3.5]), fp32([1, 2, 3]), loose);
    expect(r.pass).toBe(false);
    expect(r.failed).toBe(1);
    expect(r.firstFailure).toEqual({ index: 2, ans: 3.5, ref: 3 });
    expect(r.maxAbsErr).toBeCloseTo(0.5, 6);
  });

  test('inf and NaN must sit at the same positions; matching ones are ignored', () => {
    expect(checkIsAllclose('x', fp32([NaN, Infinity, 1]), fp32([NaN, Infinity, 1]), loose).pass).toBe(true);
    const moved = checkIsAllclose('x', fp32([NaN, 1, 1]), fp32([1, NaN, 1]), loose);
    expect(moved.pass).toBe(false);
    expect(moved.anomalyMismatches).toBe(2);
    expect(checkIsAllclose('x', fp32([Infinity]), fp32([-Infinity]), loose).anomalyMismatches).toBe(1);
  });

  test('cos_diff is checked after the element rule', () => {
    // Every element within abs_tol, yet the vectors point in different directions.
    const r = checkIsAllclose('x', fp32([5e-4, 0]), fp32([0, 5e-4]), { absTol: 1e-3, relTol: 0, cosDiffTol: 1e-6 });
    expect(r.failed).toBe(0);
    expect(r.cosDiff).toBeCloseTo(1, 12);
    expect(r.pass).toBe(false);
    expect(r.reason).toMatch(/cos_diff/);
  });

  test('shapes and dtypes must match', () => {
    expect(checkIsAllclose('x', fp32([1, 2], [2, 1]), fp32([1, 2], [1, 2]), loose).reason).toMatch(/shape/);
    const bf: HostTensor<'bf16'> = { dtype: 'bf16', shape: [1], data: Uint16Array.of(0x3f80) };
    expect(checkIsAllclose('x', bf, fp32([1]), loose).pass).toBe(false);
  });
});

/** Small cases of each kind: dense with h_k > 1 and causal, V3.2 with sinks, MODEL1 with every option. */
function smallCases(): DecodeCase[] {
  return [
    generateDenseCase({ b: 2, sQ: 2, sK: 100, hQ: 8, hK: 2, varlen: true, causal: true }, 11),
    generateSparseCase({ b: 2, sQ: 1, hQ: 64, dQK: 576, main: { sK: 256, topk: 64, blockSize: 61 }, sink: true }, 12),
    generateSparseCase({
      b: 2, sQ: 1, hQ: 64, dQK: 512, sink: true,
      main: { sK: 300, topk: 128, blockSize: 64, withLength: true }, extra: { sK: 100, topk: 64, blockSize: 2, withLength: true },
    }, 13),
  ];
}

/** The oracle with one mutation applied to its results. */
function corrupted(name: string, mutate: (r: DecodeResult<HostTensor>, args: DecodeArgs) => DecodeResult<HostTensor>): CustomSide {
  return { name, decode: async (args) => mutate(oracleDecode(args), args) };
}

describe('compare()', () => {
  test('reference vs oracle passes on dense, V3.2 and MODEL1 cases, with times and metrics', async () => {
    const report = await compare({ a: 'reference', b: 'oracle', cases: smallCases() });
    expect(report.results.map((r) => [r.name, r.pass, r.errors])).toEqual(smallCases().map((c) => [c.name, true, []]));
    expect(report.pass).toBe(true);
    expect(report.passed).toBe(3);
    for (const r of report.results) {
      expect(r.ms.a).toBeGreaterThan(0);
      expect(r.ms.b).toBeGreaterThan(0);
      expect(r.out!.tolerance).toEqual(r.kind === 'dense' ? TOLERANCES.denseOut : TOLERANCES.sparseOut);
      expect(r.lse!.tolerance).toEqual(r.kind === 'dense' ? TOLERANCES.denseLse : TOLERANCES.sparseLse);
    }
  });

  test('a wrong value in out is caught', async () => {
    const report = await compare({
      a: corrupted('wrong-value', (r) => {
        const out = r.out.data as Uint16Array;
        out[7] = out[7]! ^ 0x4000; // flips the top exponent bit of one bf16 element
        return r;
      }),
      b: 'oracle', cases: smallCases().slice(0, 1),
    });
    expect(report.pass).toBe(false);
    expect(report.results[0]!.out!.pass).toBe(false);
    expect(report.results[0]!.out!.firstFailure!.index).toBe(7);
    expect(report.results[0]!.lse!.pass).toBe(true);
  });

  test('a NaN in a different place of lse is caught', async () => {
    const report = await compare({
      a: corrupted('moved-nan', (r) => {
        (r.lse.data as Float32Array)[0] = NaN;
        return r;
      }),
      b: 'oracle', cases: smallCases().slice(1, 2),
    });
    expect(report.results[0]!.lse!.anomalyMismatches).toBe(1);
    expect(report.results[0]!.pass).toBe(false);
  });

  test('a wrong shape is caught', async () => {
    const report = await compare({
      a: corrupted('transposed-lse', (r) => ({ out: r.out, lse: { ...r.lse, shape: [r.lse.shape[0]!, r.lse.shape[2]!, r.lse.shape[1]!] } })),
      b: 'oracle', cases: smallCases().slice(0, 1),
    });
    expect(report.results[0]!.lse!.reason).toMatch(/shape/);
    expect(report.pass).toBe(false);
  });

  test('an error thrown by a side fails that case with its code and the other cases still run', async () => {
    let calls = 0;
    const flaky: CustomSide = {
      name: 'flaky',
      decode: async (args) => {
        if (calls++ === 0) throw new FlashMLAError('E_CUDA', 'launch failed');
        return oracleDecode(args);
      },
    };
    const report = await compare({ a: flaky, b: 'oracle', cases: smallCases().slice(0, 2) });
    expect(report.results[0]!.errors).toEqual([{ side: 'a', code: 'E_CUDA', message: 'launch failed' }]);
    expect(report.results[0]!.pass).toBe(false);
    expect(report.results[1]!.pass).toBe(true);
    expect([report.passed, report.failed, report.pass]).toEqual([1, 1, false]);
  });

  test('cases above maxOracleWork are skipped, not failed; a run with nothing compared does not pass', async () => {
    const report = await compare({ a: 'reference', b: 'oracle', cases: smallCases().slice(0, 1), maxOracleWork: 1 });
    expect(report.results[0]!.skipped).toMatch(/maxOracleWork/);
    expect([report.skipped, report.failed, report.pass]).toEqual([1, 0, false]);
  });

  test('a matrix source with a filter runs only matching cases, seeded by position', async () => {
    const seen: string[] = [];
    const report = await compare({
      a: 'reference', b: 'oracle', cases: { matrix: 'quick', seed: 5 }, filter: 'h_k=3',
      onProgress: (p) => { if (p.result) seen.push(p.name); },
    });
    expect(report.results.length).toBeGreaterThan(0);
    expect(report.results.every((r) => r.name.includes('h_k=3'))).toBe(true);
    expect(seen).toEqual(report.results.map((r) => r.name));
    expect([report.source, report.seed, report.pass]).toEqual(['quick', 5, true]);
  });
});

describe('matrices', () => {
  const features = (entries: MatrixEntry[]) => {
    const dense = entries.flatMap((e) => (e.kind === 'dense' ? [e.params] : []));
    const sparse = entries.flatMap((e) => (e.kind === 'sparse' ? [e.params] : []));
    const scopes = sparse.flatMap((p) => [p.main, ...(p.extra ? [p.extra] : [])]);
    return {
      hK: new Set(dense.map((p) => p.hK)),
      denseFlags: ['varlen', 'causal', 'zeroSeqlen', 'nonContiguous'].filter((f) => dense.some((p) => p[f as keyof typeof p])),
      fp16: dense.some((p) => p.dtype === 'fp16'),
      layouts: new Set(sparse.map((p) => p.dQK)),
      heads: new Set(sparse.map((p) => p.hQ)),
      blocks: new Set(scopes.map((s) => s.blockSize)),
      sink: sparse.some((p) => p.sink),
      extra: sparse.some((p) => p.extra),
      scopeFlags: ['allInvalid', 'zeroSeqlen', 'withLength', 'varlen'].filter((f) => scopes.some((s) => s[f as keyof typeof s])),
      // V3.2 takes neither topk_length nor an extra cache (docs/flashmla-interface.md#supported-shapes).
      v32Clean: sparse.filter((p) => p.dQK === 576).every((p) => !p.extra && !p.main.withLength),
    };
  };

  test.each(['quick', 'full'] as const)('%s covers every feature of the grids', (name) => {
    const f = features(matrixEntries(name));
    expect([...f.hK].some((h) => h > 1)).toBe(true);
    expect(f.denseFlags).toEqual(['varlen', 'causal', 'zeroSeqlen', 'nonContiguous']);
    expect(f.fp16).toBe(true);
    expect(f.layouts).toEqual(new Set([576, 512]));
    expect(f.heads).toEqual(new Set([64, 128]));
    for (const B of [2, 61, 64, 69, 576]) expect(f.blocks.has(B)).toBe(true);
    expect(f.sink && f.extra).toBe(true);
    expect(f.scopeFlags).toEqual(['allInvalid', 'zeroSeqlen', 'withLength', 'varlen']);
    expect(f.v32Clean).toBe(true);
  });

  test('full is FlashMLA-sized where quick is small', () => {
    const quick = matrixEntries('quick');
    const full = matrixEntries('full');
    expect(full.length).toBeGreaterThan(4 * quick.length);
    expect(Math.max(...full.map((e) => e.params.b))).toBe(128);
  });
});
