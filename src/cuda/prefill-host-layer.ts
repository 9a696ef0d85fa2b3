import { check, FlashMLAError } from '../errors.js';
import type { Bound, PrefillPlan } from '../plan.js';
import { softmaxScaleLog2 } from '../softmax-scale.js';
import type { NativePrefillFields } from '../addon.js';
import { archOf, ccText, expectAligned, expectRunnable, expectTmaStrides, type Arch, type BaseOf, type DeviceFacts, type LauncherProblem } from './host-layer.js';

/**
 * FlashMLA's sparse prefill host layer (`csrc/api/sparse_fwd.h` at 9241ae3, docs/cuda-path.md#prefill),
 * re-implemented: which launcher runs a call on an architecture, every condition under which that
 * launcher's KU_ASSERTs would end the process or its loads fault, and the SparseAttnFwdParams
 * scalars. Pure computation, like host-layer.ts for decode: no device access.
 */

/** The four prefill kernels of `sparse_fwd.h`. */
export type PrefillImplementation = 'sm90' | 'sm100-head64' | 'sm100-head128' | 'sm100-small-topk';

/** What the implementation choice depends on: the call's head dim, heads, top-k and whether topkLength is given. */
export interface PrefillCallKind {
  readonly kind: 'prefill';
  readonly dQK: number;
  readonly hQ: number;
  readonly topk: number;
  readonly topkLength: boolean;
}

/** The launcher a prefill call runs (a key of binding/flashmla_symbols.h). */
export interface PrefillChoice {
  readonly implementation: PrefillImplementation;
  readonly launcher: string;
}

/** Every prefill launcher key, in binding/flashmla_symbols.h order. */
export const PREFILL_LAUNCHERS: readonly string[] = [
  'sm90_prefill_k512', 'sm90_prefill_k512_topklen', 'sm90_prefill_k576', 'sm90_prefill_k576_topklen',
  'sm100_prefill_h64_k512', 'sm100_prefill_h64_k576', 'sm100_prefill_h128_k512', 'sm100_prefill_h128_k576',
  'sm100_prefill_small_topk',
];

/** `sparse_fwd.h`: h_q 128 with d_qk 512 uses the small-topk kernel up to this top-k. */
const SMALL_TOPK_MAX = 1280;

const ARCH_NAME: Readonly<Record<Arch, string>> = { sm90: 'sm90 (Hopper)', sm100: 'sm100 (Blackwell)' };

function expectTopkMultiple(call: PrefillCallKind, multiple: number, kernel: string): void {
  check(call.topk > 0 && call.topk % multiple === 0, 'E_UNSUPPORTED', 'indices',
    () => `FlashMLA's ${kernel} sparse prefill kernel needs topk (indices.shape[2]) a positive multiple of ${multiple}, got ${call.topk}`);
}

/**
 * FlashMLA's dispatch of `sparse_fwd.h` with the asserts of the chosen launcher checked first
 * (`csrc/sm90/prefill/sparse/phase1.cuh`, `csrc/sm100/prefill/sparse/fwd/head{64,128}/phase1.cuh`,
 * `csrc/sm100/prefill/sparse/fwd_for_small_topk/head128/phase1.cuh`): the launcher of a call on
 * `arch`, or a FlashMLAError (E_UNSUPPORTED naming `q` or `indices`) saying what that architecture needs.
 */
export function prefillKernelChoice(call: PrefillCallKind, arch: Arch): PrefillChoice {
  check(call.dQK === 512 || call.dQK === 576, 'E_UNSUPPORTED', 'q', () => `sparse prefill needs d_qk 512 or 576, got ${call.dQK}`);
  if (arch === 'sm90') {
    // One kernel for every h_q that is a multiple of B_H = 64; topk in steps of 2·B_TOPK = 128.
    check(call.hQ > 0 && call.hQ % 64 === 0, 'E_UNSUPPORTED', 'q', () => `FlashMLA's sm90 sparse prefill kernel needs h_q a multiple of 64, got ${call.hQ}`);
    expectTopkMultiple(call, 128, ARCH_NAME.sm90);
    return { implementation: 'sm90', launcher: `sm90_prefill_k${call.dQK}${call.topkLength ? '_topklen' : ''}` };
  }
  if (call.hQ === 64) {
    expectTopkMultiple(call, 64, `${ARCH_NAME.sm100} head64`);
    return { implementation: 'sm100-head64', launcher: `sm100_prefill_h64_k${call.dQK}` };
  }
  check(call.hQ === 128, 'E_UNSUPPORTED', 'q', () => `FlashMLA's ${ARCH_NAME.sm100} sparse prefill kernels need h_q 64 or 128, got ${call.hQ}`);
  if (call.dQK === 512 && call.topk <= SMALL_TOPK_MAX) {
    expectTopkMultiple(call, 64, `${ARCH_NAME.sm100} small-topk head128`);
    return { implementation: 'sm100-small-topk', launcher: 'sm100_prefill_small_topk' };
  }
  expectTopkMultiple(call, 128, `${ARCH_NAME.sm100} head128`);
  return { implementation: 'sm100-head128', launcher: `sm100_prefill_h128_k${call.dQK}` };
}

/** The kind of a validated prefill call. */
export const prefillCallKind = (p: PrefillPlan): PrefillCallKind =>
  ({ kind: 'prefill', dQK: p.dQK, hQ: p.hQ, topk: p.topk, topkLength: p.topkLength !== null });

/** A planned prefill launch: the launcher and the scalars of SparseAttnFwdParams that are not shapes or strides. */
export interface PrefillLaunch {
  readonly implementation: PrefillImplementation;
  readonly launcher: string;
  /** `num_sm`: the device's SM count (`Arch::num_sms`). */
  readonly numSm: number;
  /** `sm_scale`: the scale rounded to float (the C++ parameter is a float). */
  readonly smScale: number;
  /** `sm_scale_div_log2` = sm_scale·LOG_2_E in float (docs/flashmla-interface.md#softmax-scale). */
  readonly smScaleLog2: number;
}

/** 4-byte scalar loads (attnSink, topkLength) need naturally aligned bases. */
function expectScalarAligned(b: Bound | null, name: string, baseOf: BaseOf): void {
  if (b !== null) expectAligned(baseOf(b), 4, name, '4-byte loads');
}

/**
 * The launch plan of a validated prefill on a device, or a FlashMLAError before anything runs:
 * E_BACKEND for a device FlashMLA has no kernels for, E_UNSUPPORTED for a shape the device's
 * kernel does not take or a launcher the build cannot run there, E_STRIDE for a base or stride
 * the kernel's loads cannot use (docs/cuda-path.md#prefill).
 */
export function planPrefill(plan: PrefillPlan, device: DeviceFacts, problem: LauncherProblem, baseOf: BaseOf): PrefillLaunch {
  const arch = archOf(device);
  if (arch === null) {
    throw new FlashMLAError('E_BACKEND', `FlashMLA's sparse prefill kernels need compute capability 9.0 or 10.x; this device is ${ccText(device)}`);
  }
  const choice = prefillKernelChoice(prefillCallKind(plan), arch);
  expectRunnable(problem, [choice.launcher]);
  // q and kv are read through TMA descriptors on every architecture (16-byte aligned base; the
  // strides were checked by validateSparseFwd).
  expectAligned(baseOf(plan.q), 16, 'q', 'TMA');
  expectAligned(baseOf(plan.kv), 16, 'kv', 'TMA');
  expectTmaStrides(plan.q, 'q');
  expectTmaStrides(plan.kv, 'kv');
  if (arch === 'sm100') {
    // Every sm100 prefill kernel reads a query token's indices 8 at a time with 256-bit loads
    // (csrc/sm100/prefill/sparse/common_subroutine.h, fwd/head128/phase1.cuh ldg_256_indices):
    // each index row must start 32-byte aligned.
    expectAligned(baseOf(plan.indices), 32, 'indices', '256-bit index loads on sm100');
    const rowStride = plan.indices.view.strides[0]!;
    check(plan.sQ === 1 || rowStride % 8 === 0, 'E_STRIDE', 'indices',
      () => `indices.strides[0] = ${rowStride} must be a multiple of 8 elements on sm100 (each row is read with 32-byte loads)`);
  } else {
    expectScalarAligned(plan.indices, 'indices', baseOf);
  }
  expectScalarAligned(plan.attnSink, 'attnSink', baseOf);
  expectScalarAligned(plan.topkLength, 'topkLength', baseOf);
  return {
    implementation: choice.implementation, launcher: choice.launcher, numSm: device.sms,
    smScale: Math.fround(plan.smScale), smScaleLog2: softmaxScaleLog2('sparse', plan.smScale),
  };
}

/** The scalar part of the addon's prefill request (binding/prefill.h `PrefillRequest`). */
export function prefillRequestFields(plan: PrefillPlan, launch: PrefillLaunch, launcherId: (key: string) => number): NativePrefillFields {
  const [qS, qH] = plan.q.view.strides as [number, number, number];
  const [kvS, kvH] = plan.kv.view.strides as [number, number, number];
  const [idxS, idxH] = plan.indices.view.strides as [number, number, number];
  return {
    launcher: launcherId(launch.launcher),
    sQ: plan.sQ, sKv: plan.sKv, hQ: plan.hQ, hKv: plan.hKv, dQK: plan.dQK, dV: plan.dV, topk: plan.topk,
    smScale: launch.smScale, smScaleLog2: launch.smScaleLog2,
    strideQS: qS, strideQH: qH, strideKvS: kvS, strideKvH: kvH, strideIndicesS: idxS, strideIndicesH: idxH,
    numSm: launch.numSm,
  };
}

/** The plan's tensors by the addon's prefill operand names. */
export function prefillOperandsOf(plan: PrefillPlan): Record<string, Bound | null> {
  return { q: plan.q, kv: plan.kv, indices: plan.indices, attnSink: plan.attnSink, topkLength: plan.topkLength };
}
