import { FlashMLAError } from '../errors.js';
import type { DecodeArgs } from '../types.js';
import type { BuildFile } from './build-file.js';
import { archOf, kernelChoice, launchersOf, type Arch, type CallKind } from './host-layer.js';
import { missingCode } from './kernels.js';
import { prefillKernelChoice, type PrefillCallKind } from './prefill-host-layer.js';

/**
 * The one decision "can this FlashMLA build run this on this device, and if not, why": used by
 * `backendInfo`/doctor (per feature, per architecture), `FlashMLA.open` (any feature at all) and
 * every CUDA call (its own launchers; under `auto` a "no" sends the call to the reference).
 */

/** A yes/no with the reason a person can act on. */
export interface FeatureStatus {
  /** Whether it is available. */
  readonly ok: boolean;
  /** Why not, or what it is (a sentence a person can act on). */
  readonly reason: string;
}

/** The features a build can provide: four decode kinds and sparse prefill with each head dim. */
export type FeatureName = 'denseBf16' | 'denseFp16' | 'v32' | 'model1' | 'prefillV32' | 'prefillModel1';
export type Features = Readonly<Record<FeatureName, FeatureStatus>>;

export const FEATURE_LABELS: Readonly<Record<FeatureName, string>> = {
  denseBf16: 'dense bf16', denseFp16: 'dense fp16', v32: 'V3.2 sparse', model1: 'MODEL1 sparse',
  prefillV32: 'V3.2 prefill', prefillModel1: 'MODEL1 prefill',
};

/** Any call the CUDA backend runs: a decode or a sparse prefill. */
export type AnyCallKind = CallKind | PrefillCallKind;

/** A call standing for part of a feature; `label` names that part in "only …" reasons. */
interface FeatureCall {
  readonly call: AnyCallKind;
  readonly label: string;
}

const prefillCall = (dQK: number, hQ: number, topk: number, topkLength: boolean): PrefillCallKind => ({ kind: 'prefill', dQK, hQ, topk, topkLength });

// Together the calls of a prefill feature reach every launcher of its head dim on each
// architecture (docs/cuda-path.md#prefill): sm90 with and without topkLength; sm100 head64,
// head128 and (d_qk 512) the small-topk kernel.
const FEATURE_CALLS: Readonly<Record<FeatureName, readonly FeatureCall[]>> = {
  denseBf16: [{ call: { kind: 'dense', dtype: 'bf16' }, label: 'dense bf16' }],
  denseFp16: [{ call: { kind: 'dense', dtype: 'fp16' }, label: 'dense fp16' }],
  v32: [{ call: { kind: 'sparse', layout: 'v32', hQ: 64 }, label: 'h_q 64' }, { call: { kind: 'sparse', layout: 'v32', hQ: 128 }, label: 'h_q 128' }],
  model1: [{ call: { kind: 'sparse', layout: 'model1', hQ: 64 }, label: 'h_q 64' }, { call: { kind: 'sparse', layout: 'model1', hQ: 128 }, label: 'h_q 128' }],
  prefillV32: [
    { call: prefillCall(576, 64, 128, false), label: 'h_q 64' },
    { call: prefillCall(576, 64, 128, true), label: 'h_q 64 with topkLength' },
    { call: prefillCall(576, 128, 128, false), label: 'h_q 128' },
  ],
  prefillModel1: [
    { call: prefillCall(512, 64, 128, false), label: 'h_q 64' },
    { call: prefillCall(512, 64, 128, true), label: 'h_q 64 with topkLength' },
    { call: prefillCall(512, 128, 128, false), label: 'h_q 128, topk ≤ 1280' },
    { call: prefillCall(512, 128, 2048, false), label: 'h_q 128, topk > 1280' },
  ],
};

/** The launchers a call runs on an architecture (a FlashMLAError when FlashMLA has no kernel for it there). */
function launchersFor(call: AnyCallKind, arch: Arch): string[] {
  return call.kind === 'prefill' ? [prefillKernelChoice(call, arch).launcher] : launchersOf(kernelChoice(call, arch));
}

/** The nominal device of each architecture FlashMLA has kernels for (for reports without a device). */
export const ARCH_DEVICES: Readonly<Record<Arch, { readonly major: number; readonly minor: number }>> = {
  sm90: { major: 9, minor: 0 }, sm100: { major: 10, minor: 0 },
};

/** What usability depends on: the build's file facts and which launchers resolved (by key). */
export interface BuildFacts {
  readonly file: BuildFile;
  readonly launchers: Readonly<Record<string, string | null>>;
}

export interface ComputeCapability {
  readonly major: number;
  readonly minor: number;
}

/** Why one launcher cannot run on a device of this capability, or null. */
export function launcherProblem(build: BuildFacts, key: string, cc: ComputeCapability): string | null {
  if (build.launchers[key] === null || build.launchers[key] === undefined) {
    return `this FlashMLA build lacks the ${key} launcher` + (key.endsWith('fp16') ? ' (it was built with FLASH_MLA_DISABLE_FP16)' : '');
  }
  return missingCode(build.file, key, cc.major, cc.minor);
}

/** Why a call of this kind cannot run on CUDA here, or null when it can. */
export function callProblem(build: BuildFacts, call: AnyCallKind, cc: ComputeCapability): string | null {
  const arch = archOf(cc);
  if (arch === null) return `FlashMLA's kernels run on compute capability 9.0 (Hopper) and 10.x (Blackwell); this device is ${cc.major}.${cc.minor}`;
  let keys: string[];
  try {
    keys = launchersFor(call, arch);
  } catch (e) {
    if (e instanceof FlashMLAError) return e.message;
    throw e;
  }
  for (const k of keys) {
    const why = launcherProblem(build, k, cc);
    if (why !== null) return why;
  }
  return null;
}

function hasKernel(call: AnyCallKind, arch: Arch): boolean {
  try {
    launchersFor(call, arch);
    return true;
  } catch {
    return false;
  }
}

function featureStatus(build: BuildFacts, feature: FeatureName, cc: ComputeCapability): FeatureStatus {
  const calls = FEATURE_CALLS[feature];
  const problems = calls.map((c) => callProblem(build, c.call, cc));
  if (problems.every((p) => p === null)) return { ok: true, reason: 'available' };
  const good = calls.filter((_, i) => problems[i] === null).map((c) => c.label);
  const bad = problems.find((p) => p !== null)!;
  return good.length > 0 ? { ok: true, reason: `only ${good.join(', ')}: ${bad}` } : { ok: false, reason: bad };
}

export interface Assessment {
  /** Whether any feature (decode or prefill) runs here. */
  readonly usable: boolean;
  /** What runs, or why nothing does (said once, not per feature). */
  readonly reason: string;
  readonly features: Features;
}

/** Every feature of a build on a device of this capability. */
export function assess(build: BuildFacts, cc: ComputeCapability): Assessment {
  const features = Object.fromEntries((Object.keys(FEATURE_CALLS) as FeatureName[]).map((f) => [f, featureStatus(build, f, cc)])) as Record<FeatureName, FeatureStatus>;
  const names = (Object.keys(features) as FeatureName[]);
  const ok = names.filter((f) => features[f].ok);
  if (ok.length > 0) return { usable: true, reason: `runs ${ok.map((f) => FEATURE_LABELS[f]).join(', ')}`, features };
  // Why nothing runs: the features FlashMLA has kernels for on this architecture say it (dense
  // decode on Blackwell is no news).
  const arch = archOf(cc);
  const relevant = names.filter((f) => arch !== null && FEATURE_CALLS[f].some((c) => hasKernel(c.call, arch)));
  const shown = relevant.length > 0 ? relevant : names;
  const reasons = [...new Set(shown.map((f) => features[f].reason))];
  const reason = reasons.length === 1 ? reasons[0]! : shown.map((f) => `${FEATURE_LABELS[f]}: ${features[f].reason}`).join('; ');
  return { usable: false, reason, features };
}

/** The same assessment for the nominal device of each architecture (what the build would provide). */
export function assessByArch(build: BuildFacts): Readonly<Record<Arch, Assessment>> {
  return { sm90: assess(build, ARCH_DEVICES.sm90), sm100: assess(build, ARCH_DEVICES.sm100) };
}

/**
 * The kind of a decode call, read from its arguments without validating them (validation stays
 * the backend's); null when they are too malformed to tell, and then the backend's validation
 * reports what is wrong.
 */
export function callKindOf(args: DecodeArgs): CallKind | null {
  try {
    const q = args.q;
    if (args.indices !== undefined && args.indices !== null) {
      const layout = q.shape[3] === 576 ? 'v32' : q.shape[3] === 512 ? 'model1' : null;
      const hQ = q.shape[2];
      return layout === null || typeof hQ !== 'number' ? null : { kind: 'sparse', layout, hQ };
    }
    return q.dtype === 'bf16' || q.dtype === 'fp16' ? { kind: 'dense', dtype: q.dtype } : null;
  } catch {
    return null;
  }
}
