// FlashMLA's sparse prefill host layer (csrc/api/sparse_fwd.h) as re-implemented in
// src/cuda/prefill-host-layer.ts (docs/cuda-path.md#prefill): pure computations on validated plans,
// for devices described by their facts.
import { describe, expect, it } from 'vitest';
import { FlashMLAError } from '../../src/errors.js';
import type { BuildFile } from '../../src/cuda/build-file.js';
import type { DeviceFacts } from '../../src/cuda/host-layer.js';
import { planPrefill, prefillKernelChoice, prefillRequestFields, PREFILL_LAUNCHERS, type PrefillCallKind } from '../../src/cuda/prefill-host-layer.js';
import { assess, launcherProblem } from '../../src/cuda/usability.js';
import { alternatesFor } from '../../src/cuda/library.js';
import type { NativeAddon } from '../../src/addon.js';
import { generatePrefillCase, type PrefillCaseParams } from '../../src/harness/prefill-cases.js';
import type { Bound } from '../../src/plan.js';
import { softmaxScaleLog2 } from '../../src/softmax-scale.js';
import { validateSparseFwd } from '../../src/validate/prefill.js';

const H100: DeviceFacts = { major: 9, minor: 0, sms: 132 };
const B200: DeviceFacts = { major: 10, minor: 0, sms: 148 };
const B300: DeviceFacts = { major: 10, minor: 3, sms: 160 };
const file: BuildFile = {
  path: '/build.so', size: 0, mtimeMs: 0, needed: [], soname: null, exports: new Set(),
  fatbin: { ok: true, entries: [{ kind: 'cubin', sm: 90, variant: 'a', compressed: true, kernels: null }, { kind: 'cubin', sm: 100, variant: 'f', compressed: true, kernels: null }] },
};
const withLaunchers = (keys: readonly string[]) => (d: DeviceFacts) => {
  const build = { file, launchers: Object.fromEntries(PREFILL_LAUNCHERS.map((k) => [k, keys.includes(k) ? k : null])) };
  return (key: string) => launcherProblem(build, key, d);
};
const ALL = withLaunchers(PREFILL_LAUNCHERS);
const hostBases = () => null;

const plan = (p: Partial<PrefillCaseParams> = {}) =>
  validateSparseFwd(generatePrefillCase({ sQ: 2, sKv: 128, topk: 128, hQ: 64, dQK: 576, ...p }, 3).args);
const call = (dQK: number, hQ: number, topk: number, topkLength = false): PrefillCallKind => ({ kind: 'prefill', dQK, hQ, topk, topkLength });

function refused(f: () => unknown, code: string, argument: string | undefined, message: RegExp): void {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(FlashMLAError);
    expect({ code: (e as FlashMLAError).code, argument: (e as FlashMLAError).argument }).toEqual({ code, argument });
    expect((e as Error).message).toMatch(message);
    return;
  }
  throw new Error('expected a FlashMLAError');
}

describe('the dispatch of sparse_fwd.h', () => {
  it('sm90: one phase1 kernel per d_qk, with or without topkLength', () => {
    expect(prefillKernelChoice(call(576, 64, 128), 'sm90')).toEqual({ implementation: 'sm90', launcher: 'sm90_prefill_k576' });
    expect(prefillKernelChoice(call(512, 128, 2048, true), 'sm90')).toEqual({ implementation: 'sm90', launcher: 'sm90_prefill_k512_topklen' });
    expect(prefillKernelChoice(call(576, 128, 256, true), 'sm90').launcher).toBe('sm90_prefill_k576_topklen');
  });

  it('sm100: head64 for h_q 64; small-topk for h_q 128, d_qk 512, topk ≤ 1280; head128 otherwise', () => {
    expect(prefillKernelChoice(call(512, 64, 64, true), 'sm100')).toEqual({ implementation: 'sm100-head64', launcher: 'sm100_prefill_h64_k512' });
    expect(prefillKernelChoice(call(576, 64, 2048), 'sm100').launcher).toBe('sm100_prefill_h64_k576');
    expect(prefillKernelChoice(call(512, 128, 64), 'sm100')).toEqual({ implementation: 'sm100-small-topk', launcher: 'sm100_prefill_small_topk' });
    expect(prefillKernelChoice(call(512, 128, 1280), 'sm100').launcher).toBe('sm100_prefill_small_topk');
    expect(prefillKernelChoice(call(512, 128, 1408), 'sm100')).toEqual({ implementation: 'sm100-head128', launcher: 'sm100_prefill_h128_k512' });
    expect(prefillKernelChoice(call(576, 128, 128), 'sm100')).toEqual({ implementation: 'sm100-head128', launcher: 'sm100_prefill_h128_k576' });
  });

  it('every launcher assertion is a FlashMLAError naming indices or q, saying which architecture needs what', () => {
    refused(() => prefillKernelChoice(call(576, 64, 64), 'sm90'), 'E_UNSUPPORTED', 'indices', /sm90 \(Hopper\).*multiple of 128, got 64/);
    refused(() => prefillKernelChoice(call(512, 128, 192), 'sm90'), 'E_UNSUPPORTED', 'indices', /multiple of 128/);
    refused(() => prefillKernelChoice(call(512, 96, 128), 'sm90'), 'E_UNSUPPORTED', 'q', /sm90 .*h_q a multiple of 64, got 96/);
    refused(() => prefillKernelChoice(call(576, 64, 96), 'sm100'), 'E_UNSUPPORTED', 'indices', /head64 .*multiple of 64, got 96/);
    refused(() => prefillKernelChoice(call(576, 128, 192), 'sm100'), 'E_UNSUPPORTED', 'indices', /sm100 \(Blackwell\) head128 .*multiple of 128, got 192/);
    refused(() => prefillKernelChoice(call(512, 128, 1344), 'sm100'), 'E_UNSUPPORTED', 'indices', /head128 .*multiple of 128, got 1344/);
    refused(() => prefillKernelChoice(call(512, 256, 128), 'sm100'), 'E_UNSUPPORTED', 'q', /h_q 64 or 128, got 256/);
    refused(() => prefillKernelChoice(call(576, 64, 0), 'sm100'), 'E_UNSUPPORTED', 'indices', /positive multiple/);
    // small-topk takes topk in steps of 64: 192 with d_qk 512 runs there
    expect(prefillKernelChoice(call(512, 128, 192), 'sm100').launcher).toBe('sm100_prefill_small_topk');
  });
});

describe('planPrefill', () => {
  it('fills the scalars sparse_fwd.h does: num_sm, the float scale and sm_scale·LOG_2_E in float', () => {
    const p = plan({ withLength: true });
    const l = planPrefill(p, B200, ALL(B200), hostBases);
    expect(l).toEqual({ implementation: 'sm100-head64', launcher: 'sm100_prefill_h64_k576', numSm: 148, smScale: Math.fround(p.smScale), smScaleLog2: softmaxScaleLog2('sparse', p.smScale) });
    expect(planPrefill(p, B300, ALL(B300), hostBases).numSm).toBe(160);
    expect(planPrefill(p, H100, ALL(H100), hostBases).launcher).toBe('sm90_prefill_k576_topklen');
    const ids = new Map(PREFILL_LAUNCHERS.map((k, i) => [k, 12 + i]));
    const f = prefillRequestFields(p, l, (k) => ids.get(k)!);
    const [qS, qH] = p.q.view.strides;
    expect(f).toMatchObject({ launcher: 17, sQ: 2, sKv: 128, hQ: 64, hKv: 1, dQK: 576, dV: 512, topk: 128, strideQS: qS, strideQH: qH, numSm: 148 });
  });

  it('refuses other architectures, and launchers the build cannot run on the device', () => {
    refused(() => planPrefill(plan(), { major: 8, minor: 0, sms: 108 }, ALL(H100), hostBases), 'E_BACKEND', undefined, /9\.0 or 10\.x; this device is 8\.0/);
    refused(() => planPrefill(plan(), { major: 9, minor: 0, sms: 132 }, withLaunchers(['sm90_prefill_k512'])(H100), hostBases), 'E_UNSUPPORTED', undefined, /lacks the sm90_prefill_k576 launcher/);
    const sm90Only: BuildFile = { ...file, fatbin: { ok: true, entries: [{ kind: 'cubin', sm: 90, variant: 'a', compressed: true, kernels: null }] } };
    const build = { file: sm90Only, launchers: Object.fromEntries(PREFILL_LAUNCHERS.map((k) => [k, k])) };
    refused(() => planPrefill(plan(), B200, (k) => launcherProblem(build, k, B200), hostBases), 'E_UNSUPPORTED', undefined,
      /no GPU code for compute capability 10\.0 in its sm100_prefill_h64_k576 kernels \(they are built for sm_90a\)/);
  });

  it('device bases: q and kv 16-byte aligned (TMA); sm100 index rows 32-byte aligned; 4-byte scalars', () => {
    const p = plan({ sink: true, withLength: true });
    const at = (bases: Record<string, bigint>) => (b: Bound): bigint => {
      const named = Object.entries(bases).find(([name]) => b === (p as unknown as Record<string, Bound>)[name]);
      return named === undefined ? 0x1000n : named[1];
    };
    expect(planPrefill(p, B200, ALL(B200), at({})).launcher).toBe('sm100_prefill_h64_k576');
    refused(() => planPrefill(p, B200, ALL(B200), at({ q: 0x1008n })), 'E_STRIDE', 'q', /16-byte aligned .*TMA/);
    refused(() => planPrefill(p, H100, ALL(H100), at({ kv: 0x1004n })), 'E_STRIDE', 'kv', /16-byte aligned/);
    refused(() => planPrefill(p, B200, ALL(B200), at({ indices: 0x1010n })), 'E_STRIDE', 'indices', /32-byte aligned .*256-bit index loads on sm100/);
    expect(planPrefill(p, H100, ALL(H100), at({ indices: 0x1010n })).launcher).toBe('sm90_prefill_k576_topklen');
    refused(() => planPrefill(p, H100, ALL(H100), at({ indices: 0x1002n })), 'E_STRIDE', 'indices', /4-byte/);
    refused(() => planPrefill(p, H100, ALL(H100), at({ attnSink: 0x1002n })), 'E_STRIDE', 'attnSink', /4-byte/);
    refused(() => planPrefill(p, B200, ALL(B200), at({ topkLength: 0x1001n })), 'E_STRIDE', 'topkLength', /4-byte/);
  });

  it('sm100 index rows: a row stride that is not a multiple of 8 elements is refused there, fine on sm90', () => {
    const c = generatePrefillCase({ sQ: 3, sKv: 128, topk: 128, hQ: 64, dQK: 512 }, 5);
    const data = new Int32Array(3 * 132);
    const indices = { dtype: 'int32' as const, shape: [3, 1, 128], strides: [132, 128, 1], data };
    const p = validateSparseFwd({ ...c.args, indices });
    refused(() => planPrefill(p, B200, ALL(B200), hostBases), 'E_STRIDE', 'indices', /strides\[0\] = 132 must be a multiple of 8/);
    expect(planPrefill(p, H100, ALL(H100), hostBases).launcher).toBe('sm90_prefill_k512');
  });
});

describe('prefill features per architecture', () => {
  const launchers = (keys: readonly string[]) => Object.fromEntries(PREFILL_LAUNCHERS.map((k) => [k, keys.includes(k) ? k : null]));
  it('a full build: both prefill features on sm90 and sm100', () => {
    for (const d of [H100, B200]) {
      const a = assess({ file, launchers: launchers(PREFILL_LAUNCHERS) }, d);
      expect([a.features.prefillV32, a.features.prefillModel1]).toEqual([{ ok: true, reason: 'available' }, { ok: true, reason: 'available' }]);
      expect(a.usable).toBe(true);
    }
  });

  it('a build without the small-topk launcher: MODEL1 prefill only partly on sm100, fully on sm90', () => {
    const build = { file, launchers: launchers(PREFILL_LAUNCHERS.filter((k) => k !== 'sm100_prefill_small_topk')) };
    expect(assess(build, B200).features.prefillModel1).toEqual({
      ok: true, reason: 'only h_q 64, h_q 64 with topkLength, h_q 128, topk > 1280: this FlashMLA build lacks the sm100_prefill_small_topk launcher',
    });
    expect(assess(build, H100).features.prefillModel1.reason).toBe('available');
  });

  it('a decode-only build: no prefill feature, with the missing launcher as the reason', () => {
    const a = assess({ file, launchers: launchers([]) }, H100);
    expect(a.features.prefillV32).toEqual({ ok: false, reason: 'this FlashMLA build lacks the sm90_prefill_k576 launcher' });
    expect(a.features.prefillModel1.ok).toBe(false);
  });
});

describe('the std::conditional fallback of the two small-topk launchers (docs/flashmla-interface.md#head128-fallback)', () => {
  const launchers = [
    { id: 0, key: 'combine_bf16', mangled: '_ZN4smxx6decode28run_flash_mla_combine_kernel' },
    { id: 1, key: 'sm100_head128_model1', mangled: '_ZN5sm100…Mode1…libstdc++', fallback: '36run_fwd_for_small_topk_phase1_kernelIL17SparseAttnFwdMode1ELi512E' },
    { id: 2, key: 'sm100_prefill_small_topk', mangled: '_ZN5sm100…Mode0…libstdc++', fallback: '36run_fwd_for_small_topk_phase1_kernelIL17SparseAttnFwdMode0ELi512E' },
  ];
  const addon = { launchers } as unknown as NativeAddon;
  const build = (exports: string[]): BuildFile => ({ ...file, exports: new Set(exports) });
  const otherLib = (mode: number) => `_ZN5sm10018fwd_for_small_topk7head12836run_fwd_for_small_topk_phase1_kernelIL17SparseAttnFwdMode${mode}ELi512EEEvRKNSt3__1…`;

  it('exact names: no alternates', () => {
    expect(alternatesFor(addon, build([launchers[1]!.mangled, launchers[2]!.mangled]))).toEqual([]);
  });

  it('each missing small-topk name is replaced by the symbol that holds its own stable part', () => {
    expect(alternatesFor(addon, build([otherLib(0), otherLib(1)]))).toEqual([null, otherLib(1), otherLib(0)]);
    expect(alternatesFor(addon, build([launchers[1]!.mangled, otherLib(0)]))).toEqual([null, null, otherLib(0)]);
    expect(alternatesFor(addon, build([]))).toEqual([null, null, null]);
  });
});
