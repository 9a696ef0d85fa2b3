// FlashMLA's host layer as re-implemented in src/cuda/host-layer.ts (docs/flashmla-interface.md#dense-host-layer, docs/flashmla-interface.md#sparse-host-layer): pure
// computations on validated plans, for devices described by their facts.
import { describe, expect, it } from 'vitest';
import { FlashMLAError } from '../../src/errors.js';
import { generateDenseCase, generateSparseCase } from '../../src/harness/cases.js';
import type { BuildFile } from '../../src/cuda/build-file.js';
import { lseStrides, planLaunch, type DeviceFacts } from '../../src/cuda/host-layer.js';
import { launcherProblem } from '../../src/cuda/usability.js';
import type { SparsePlan } from '../../src/plan.js';
import { getMlaMetadata } from '../../src/sched-meta.js';
import type { DecodeArgs } from '../../src/types.js';
import { validateDecode } from '../../src/validate/index.js';

const H100: DeviceFacts = { major: 9, minor: 0, sms: 132 };
const B200: DeviceFacts = { major: 10, minor: 0, sms: 148 };
const KEYS = ['dense_bf16', 'dense_fp16', 'sm90_sparse_v32_h64', 'sm90_sparse_v32_h128', 'sm90_sparse_model1_h64', 'sm90_sparse_model1_h128',
  'sm100_head64_v32', 'sm100_head64_model1', 'sm100_head128_model1', 'combine_bf16', 'combine_fp16', 'sched_meta'];
// A build that resolves `keys` and carries sm_90a and sm_100f code whose kernels cannot be attributed (so it covers every launcher).
const file: BuildFile = {
  path: '/build.so', size: 0, mtimeMs: 0, needed: [], soname: null, exports: new Set(),
  fatbin: { ok: true, entries: [{ kind: 'cubin', sm: 90, variant: 'a', compressed: true, kernels: null }, { kind: 'cubin', sm: 100, variant: 'f', compressed: true, kernels: null }] },
};
const withLaunchers = (keys: readonly string[]) => (d: DeviceFacts) => {
  const build = { file, launchers: Object.fromEntries(KEYS.map((k) => [k, keys.includes(k) ? k : null])) };
  return (key: string) => launcherProblem(build, key, d);
};
const ALL = withLaunchers(KEYS);
const hostBases = () => null;

const plan = (args: Omit<DecodeArgs, 'schedMeta'>) => validateDecode({ ...args, schedMeta: getMlaMetadata() });
const dense = (sQ: number, hQ: number, hK: number, dtype: 'bf16' | 'fp16' = 'bf16') =>
  plan(generateDenseCase({ b: 1, sQ, sK: 64, hQ, hK, varlen: false, causal: false, dtype }, 1).args);
const sparse = (sQ: number, hQ: 64 | 128, dQK: 576 | 512) =>
  plan(generateSparseCase({ b: 1, sQ, hQ, dQK, main: { sK: 64, topk: 64, blockSize: 64 } }, 2).args);

describe('num_sm_parts and implementation choice', () => {
  it('dense: P = max(num_sms / h_k / ceil(s_q·h_q/h_k / 64), 1) (docs/flashmla-interface.md#dense-host-layer examples)', () => {
    expect(planLaunch(dense(1, 128, 1), H100, ALL(H100), hostBases).numSmParts).toBe(66);
    expect(planLaunch(dense(2, 128, 1), H100, ALL(H100), hostBases).numSmParts).toBe(33);
    expect(planLaunch(dense(1, 64, 1), H100, ALL(H100), hostBases).numSmParts).toBe(132);
    const l = planLaunch(dense(1, 64, 1), H100, ALL(H100), hostBases);
    expect([l.implementation, l.main, l.combine, l.fixedOverhead, l.totalSplits]).toEqual(['sm90-dense', 'dense_bf16', 'combine_bf16', 5, 133]);
    expect(l.oAccumBytes).toBe(4 * 512 * 133 * 64);
  });

  it('sparse: the docs/flashmla-interface.md#sparse-host-layer table', () => {
    const pick = (p: ReturnType<typeof sparse>, d: DeviceFacts) => {
      const l = planLaunch(p, d, ALL(d), hostBases);
      return [l.implementation, l.main, l.twice, l.numSmParts, l.fixedOverhead];
    };
    expect(pick(sparse(2, 128, 576), H100)).toEqual(['sm90-sparse', 'sm90_sparse_v32_h128', false, 33, 5]);
    expect(pick(sparse(1, 64, 512), H100)).toEqual(['sm90-sparse', 'sm90_sparse_model1_h64', false, 132, 5]);
    expect(pick(sparse(1, 64, 576), B200)).toEqual(['sm100-head64', 'sm100_head64_v32', false, 148, 5]);
    expect(pick(sparse(2, 128, 576), B200)).toEqual(['sm100-head64x2', 'sm100_head64_v32', true, 74, 5]);
    expect(pick(sparse(1, 128, 512), B200)).toEqual(['sm100-head128', 'sm100_head128_model1', false, 74, 3]);
  });
});

describe('q regrouping and output reshapes', () => {
  it('h_k = 1 or s_q = 1 or h_q = h_k is a view; h_k > 1, hpk > 1, s_q > 1 is a copy', () => {
    const v = planLaunch(dense(2, 8, 1), H100, ALL(H100), hostBases);
    expect([v.regroupQ, v.outDirect, v.lseDirect]).toEqual([false, true, true]);
    expect(lseStrides(dense(2, 8, 1))).toEqual([16, 1, 8]); // FlashMLA's lse view of the kernels' (b, s_q, h_q)
    const one = planLaunch(dense(1, 8, 2), H100, ALL(H100), hostBases);
    expect([one.regroupQ, one.outDirect, one.lseDirect]).toEqual([false, true, true]);
    expect(lseStrides(dense(1, 8, 2))).toEqual([8, 1, 1]);
    const same = planLaunch(dense(2, 4, 4), H100, ALL(H100), hostBases);
    expect([same.regroupQ, same.outDirect, same.lseDirect]).toEqual([false, false, true]);
    expect(lseStrides(dense(2, 4, 4))).toEqual([8, 2, 1]);
    const g = planLaunch(dense(2, 8, 2), H100, ALL(H100), hostBases);
    expect([g.regroupQ, g.outDirect, g.lseDirect]).toEqual([true, false, false]);
    expect(lseStrides(dense(2, 8, 2))).toEqual([16, 2, 1]);
    expect(g.qReStrides).toEqual([2 * 8 * 576, 576, 8 * 576]);
    // Sparse: always the kernels' layout, a view for s_q > 1.
    expect([planLaunch(sparse(2, 64, 512), H100, ALL(H100), hostBases).lseDirect, lseStrides(sparse(2, 64, 512))]).toEqual([true, [128, 1, 64]]);
    expect(lseStrides(sparse(1, 64, 512))).toEqual([64, 1, 1]);
  });
});

describe('architecture-specific checks', () => {
  const code = (f: () => unknown) => {
    try {
      f();
    } catch (e) {
      expect(e).toBeInstanceOf(FlashMLAError);
      return (e as FlashMLAError).code + ': ' + (e as Error).message;
    }
    return 'no error';
  };
  it('rejects other compute capabilities, dense off sm90, and missing symbols', () => {
    expect(code(() => planLaunch(dense(1, 8, 1), { major: 8, minor: 0, sms: 108 }, ALL({ major: 8, minor: 0, sms: 108 }), hostBases))).toMatch(/^E_BACKEND/);
    expect(code(() => planLaunch(dense(1, 8, 1), { major: 9, minor: 1, sms: 132 }, ALL({ major: 9, minor: 1, sms: 132 }), hostBases))).toMatch(/^E_BACKEND/);
    expect(code(() => planLaunch(dense(1, 8, 1), B200, ALL(B200), hostBases))).toMatch(/^E_UNSUPPORTED.*9\.0/);
    const noFp16 = withLaunchers(KEYS.filter((k) => !k.endsWith('fp16')))(H100);
    expect(code(() => planLaunch(dense(1, 8, 1, 'fp16'), H100, noFp16, hostBases))).toMatch(/^E_UNSUPPORTED.*FLASH_MLA_DISABLE_FP16/);
    expect(code(() => planLaunch(dense(1, 8, 1, 'bf16'), H100, noFp16, hostBases))).toBe('no error');
    const noHead128 = withLaunchers(KEYS.filter((k) => k !== 'sm100_head128_model1'))(B200);
    expect(code(() => planLaunch(sparse(1, 128, 512), B200, noHead128, hostBases))).toMatch(/^E_UNSUPPORTED.*sm100_head128_model1/);
  });

  it('checks device base alignment of q and the caches', () => {
    const p = sparse(1, 64, 512) as SparsePlan;
    expect(code(() => planLaunch(p, H100, ALL(H100), (b) => (b === p.q ? 0x1008n : 0x1000n)))).toMatch(/^E_STRIDE: q/);
    expect(code(() => planLaunch(p, B200, ALL(B200), (b) => (b === p.main.cache ? 0x1004n : 0x1000n)))).toMatch(/^E_STRIDE: kCache/);
    expect(code(() => planLaunch(p, H100, ALL(H100), () => 0x1000n))).toBe('no error');
  });

  it('P ≤ 160 (combine MAX_SPLITS)', () => {
    expect(code(() => planLaunch(sparse(1, 64, 576), { ...B200, sms: 161 }, ALL({ ...B200, sms: 161 }), hostBases))).toMatch(/^E_UNSUPPORTED.*num_sm_parts = 161/);
  });

  it('s_q at most 65535: builds before 9241ae3 launch the combine with s_q as grid dimension y', () => {
    expect(code(() => planLaunch(dense(65536, 1, 1), H100, ALL(H100), hostBases))).toMatch(/^E_UNSUPPORTED: .*s_q = 65536.*65535/);
    expect(code(() => planLaunch(dense(65535, 1, 1), H100, ALL(H100), hostBases))).toBe('no error');
  });
});

describe('softmax scale factors (dense_decode.h vs sparse_decode.h)', () => {
  it('dense rounds the scale to float first, then multiplies by the double log2(e) and rounds once', () => {
    const s = 192 ** -0.5;
    const p = plan({ ...generateDenseCase({ b: 1, sQ: 1, sK: 64, hQ: 8, hK: 1, varlen: false, causal: false, dtype: 'bf16' }, 1).args, softmaxScale: s });
    const l = planLaunch(p, H100, ALL(H100), hostBases);
    expect(l.scaleLog2).toBe(Math.fround(Math.fround(s) * Math.LOG2E));
    expect(l.scaleLog2).not.toBe(Math.fround(s * Math.LOG2E)); // the bit the double-first order gets wrong
    expect(l.scale).toBe(Math.fround(s));
  });

  it('sparse multiplies two floats', () => {
    const p = plan({ ...generateSparseCase({ b: 1, sQ: 1, hQ: 64, dQK: 512, main: { sK: 64, topk: 64, blockSize: 64 } }, 2).args, softmaxScale: 192 ** -0.5 });
    expect(planLaunch(p, H100, ALL(H100), hostBases).scaleLog2).toBe(Math.fround(Math.fround(192 ** -0.5) * Math.fround(1.44269504)));
  });
});
