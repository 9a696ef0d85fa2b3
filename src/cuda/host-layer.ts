import { check, FlashMLAError } from '../errors.js';
import type { Bound, DecodePlan, DensePlan, SparsePlan, SparseScope } from '../plan.js';
import type { NativeDecodeFields } from '../addon.js';
import type { KvLayout } from '../types.js';
import { softmaxScaleLog2 } from '../softmax-scale.js';
import { ELEMENT_BYTES, INT32_MAX } from '../tensor.js';

/**
 * FlashMLA's C++ host layer (docs/flashmla-interface.md#host-layer), re-implemented: implementation choice, num_sm_parts, fixed
 * overhead, q regrouping, workspace sizes and output reshapes, plus every architecture-specific
 * check the shared validation (src/validate) leaves to the CUDA backend (docs/flashmla-interface.md#launcher-checks with docs/flashmla-interface.md#launchers,
 * docs/flashmla-interface.md#extra-topk-multiple, docs/flashmla-interface.md#supported-shapes, docs/flashmla-interface.md#alignment). Pure computation: no device access.
 */

/** The device facts the host layer depends on (docs/flashmla-interface.md#host-helpers `Arch`). */
export interface DeviceFacts {
  readonly major: number;
  readonly minor: number;
  readonly sms: number;
}

export type Implementation = 'sm90-dense' | 'sm90-sparse' | 'sm100-head64' | 'sm100-head64x2' | 'sm100-head128';

export interface LaunchPlan {
  readonly implementation: Implementation;
  /** Launcher keys of binding/flashmla_symbols.h. */
  readonly main: string;
  readonly combine: string;
  /** docs/flashmla-interface.md#sparse-host-layer "Head64 ×2": the head64 launcher twice with shifted pointers. */
  readonly twice: boolean;
  readonly numSmParts: number;
  readonly fixedOverhead: number;
  /** T = b + P rows of split results (docs/flashmla-interface.md#dense-host-layer, docs/flashmla-interface.md#sparse-host-layer "Workspaces"). */
  readonly totalSplits: number;
  readonly lseAccumBytes: number;
  readonly oAccumBytes: number;
  /** Dense h_k > 1: q must be physically regrouped (docs/flashmla-interface.md#dense-host-layer, docs/flashmla-interface.md#q-regrouping). */
  readonly regroupQ: boolean;
  /** q_re strides (batch, row, head) when it is a view of q. */
  readonly qReStrides: readonly [number, number, number];
  /**
   * The kernels write out / lse where the public tensors are (else the addon reshapes): out in its
   * contiguous layout, lse in the layout of {@link lseStrides}.
   */
  readonly outDirect: boolean;
  readonly lseDirect: boolean;
  readonly scale: number;
  readonly scaleLog2: number;
}

/** Where an operand's element 0 lives on the device: its address, or null when it is uploaded (256-byte aligned). */
export type BaseOf = (b: Bound) => bigint | null;

const MAX_GRID_Y = 65535;
const MAX_SPLITS = 160; // docs/flashmla-interface.md#launcher-checks: combine's largest MAX_SPLITS
const SCHED_META_SMEM = 227 * 1024; // docs/flashmla-interface.md#launcher-checks sched meta: 4·(5b+1) bytes of dynamic shared memory

export type Arch = 'sm90' | 'sm100';

export function archOf(d: Pick<DeviceFacts, 'major' | 'minor'>): Arch | null {
  if (d.major === 9 && d.minor === 0) return 'sm90';
  if (d.major === 10) return 'sm100';
  return null;
}

/** '9.0', '10.3': a device's compute capability as people write it. */
export const ccText = (d: Pick<DeviceFacts, 'major' | 'minor'>): string => `${d.major}.${d.minor}`;

/**
 * Why a launcher cannot run on this device with this build (not resolved, or its kernels carry no
 * code for the device), or null when it can. Decided by src/cuda/usability.ts.
 */
export type LauncherProblem = (key: string) => string | null;

/** Throws E_UNSUPPORTED with the reason when one of the launchers cannot run (not resolved, no GPU code). */
export function expectRunnable(problem: LauncherProblem, keys: readonly string[]): void {
  for (const k of keys) {
    const why = problem(k);
    if (why !== null) throw new FlashMLAError('E_UNSUPPORTED', why);
  }
}

/** A device operand's base must be a multiple of `bytes` (null: uploaded into the 256-byte aligned workspace). */
export function expectAligned(base: bigint | null, bytes: number, name: string, why: string): void {
  check(base === null || base % BigInt(bytes) === 0n, 'E_STRIDE', name,
    () => `${name} must start at a ${bytes}-byte aligned device address (${why}), got 0x${base!.toString(16)}`);
}

/** docs/flashmla-interface.md#tma-alignment: TMA strides below 2^40 bytes. */
export function expectTmaStrides(b: Bound, name: string): void {
  const eb = ELEMENT_BYTES[b.view.dtype];
  b.view.strides.forEach((s, i) => {
    check(s * eb < 2 ** 40, 'E_STRIDE', name, () => `${name}.strides[${i}] is ${s * eb} bytes; TMA needs < 2^40`);
  });
}


/** Checks shared by every path: docs/flashmla-interface.md#launcher-checks combine and sched-meta limits, docs/flashmla-interface.md#supported-shapes int32 offsets. */
function commonLimits(b: number, sQ: number, hQ: number, numSmParts: number, d: DeviceFacts): number {
  // Builds from 082094b up to 9241ae3 launch the combine with grid (b, s_q, ⌈h_q/8⌉): s_q is grid
  // dimension y, at most 65535, else the launch fails and the launcher exits the process. Their
  // launchers look exactly like 9241ae3's, so the limit holds for every build.
  check(sQ <= MAX_GRID_Y, 'E_UNSUPPORTED', 'q',
    `s_q = ${sQ} query tokens per request is more than FlashMLA builds before 9241ae3 can combine (at most ${MAX_GRID_Y}, a CUDA grid dimension)`);
  check(numSmParts <= MAX_SPLITS, 'E_UNSUPPORTED', undefined,
    `num_sm_parts = ${numSmParts} on this ${d.sms}-SM device exceeds ${MAX_SPLITS}, the most FlashMLA's combine kernel supports`);
  check(4 * (5 * b + 1) <= SCHED_META_SMEM, 'E_UNSUPPORTED', 'q',
    `batch size ${b} is too large for FlashMLA's scheduler (needs 4·(5b+1) bytes of shared memory, at most ${SCHED_META_SMEM})`);
  const totalSplits = b + numSmParts;
  check(totalSplits * sQ * hQ * 512 <= INT32_MAX, 'E_UNSUPPORTED', 'q',
    `(b + num_sm_parts)·s_q·h_q·512 = ${totalSplits * sQ * hQ * 512} must be below 2^31 (int32 offsets in the kernels); use a smaller batch`);
  return totalSplits;
}

/** What a call needs from a build, before its shapes: the decode kind, cache dtype or layout, and h_q. */
export type CallKind =
  | { readonly kind: 'dense'; readonly dtype: 'bf16' | 'fp16' }
  | { readonly kind: 'sparse'; readonly layout: KvLayout; readonly hQ: number };

/** The launchers a call runs on an architecture (docs/flashmla-interface.md#dense-host-layer and the docs/flashmla-interface.md#sparse-host-layer implementation table). */
export interface KernelChoice {
  readonly implementation: Implementation;
  readonly main: string;
  readonly combine: string;
  /** docs/flashmla-interface.md#sparse-host-layer "Head64 ×2": the head64 launcher twice with shifted pointers. */
  readonly twice: boolean;
}

/**
 * FlashMLA's implementation choice: which launchers a call of this kind runs on `arch`, or a
 * FlashMLAError (E_UNSUPPORTED) when FlashMLA has no kernel for it there. The one place that maps
 * calls to launchers; the usability decision asks it too.
 */
export function kernelChoice(call: CallKind, arch: Arch): KernelChoice {
  if (call.kind === 'dense') {
    check(arch === 'sm90', 'E_UNSUPPORTED', undefined,
      `FlashMLA's dense decode runs on compute capability 9.0 (Hopper) only; it has no dense kernel for ${arch}`);
    return { implementation: 'sm90-dense', main: `dense_${call.dtype}`, combine: `combine_${call.dtype}`, twice: false };
  }
  const v32 = call.layout === 'v32';
  check(call.hQ === 64 || call.hQ === 128, 'E_UNSUPPORTED', 'q', `sparse decode needs h_q 64 or 128, got ${call.hQ}`);
  if (arch === 'sm90') {
    // docs/flashmla-interface.md#launcher-gaps: the NUM_HEADS template argument must equal h_q.
    return { implementation: 'sm90-sparse', main: `sm90_sparse_${call.layout}_h${call.hQ}`, combine: 'combine_bf16', twice: false };
  }
  if (call.hQ === 64) return { implementation: 'sm100-head64', main: v32 ? 'sm100_head64_v32' : 'sm100_head64_model1', combine: 'combine_bf16', twice: false };
  if (v32) return { implementation: 'sm100-head64x2', main: 'sm100_head64_v32', combine: 'combine_bf16', twice: true };
  return { implementation: 'sm100-head128', main: 'sm100_head128_model1', combine: 'combine_bf16', twice: false };
}

/** Every launcher key a choice runs, the scheduler included. */
export const launchersOf = (c: KernelChoice): string[] => [c.main, c.combine, 'sched_meta'];

function densePlan(p: DensePlan, d: DeviceFacts, problem: LauncherProblem, baseOf: BaseOf): LaunchPlan {
  const choice = kernelChoice({ kind: 'dense', dtype: p.dtype }, archOf(d)!);
  expectRunnable(problem, launchersOf(choice));
  const { main, combine } = choice;
  // docs/flashmla-interface.md#tma-alignment: the q, k and out TMA descriptors need 16-byte aligned bases (offsets and strides
  // are checked by validateDecode).
  expectAligned(baseOf(p.q), 16, 'q', 'TMA');
  expectAligned(baseOf(p.kCache), 16, 'kCache', 'TMA');
  expectTmaStrides(p.q, 'q');
  expectTmaStrides(p.kCache, 'kCache');
  check(p.numBlocks * p.pageBlockSize * p.hK <= 2 ** 32, 'E_SHAPE', 'kCache', 'kCache has more than 2^32 rows (a TMA dimension)');

  const hpk = p.hQ / p.hK;
  // docs/flashmla-interface.md#dense-host-layer: P = max(num_sms / h_k / ceil_div(s_q·h_q/h_k, 64), 1), integer division left to right.
  const numSmParts = Math.max(Math.floor(Math.floor(d.sms / p.hK) / Math.ceil((p.sQ * hpk) / 64)), 1);
  const totalSplits = commonLimits(p.b, p.sQ, p.hQ, numSmParts, d);
  const [, qs1, qs2] = p.q.view.strides as [number, number, number];
  const qs0 = p.q.view.strides[0]!;
  // docs/flashmla-interface.md#dense-host-layer / docs/flashmla-interface.md#q-regrouping: q_re[b, s·hpk + j, k] = q[b, s, k·hpk + j] is a view unless h_k > 1,
  // hpk > 1 and s_q > 1 (or s and h cannot merge).
  let regroupQ = false;
  let qReStrides: [number, number, number];
  if (hpk === 1) qReStrides = [qs0, qs1, qs2];
  else if (p.sQ === 1 || qs1 === hpk * qs2) qReStrides = [qs0, qs2, hpk * qs2];
  else {
    regroupQ = true;
    qReStrides = [p.hK * p.sQ * hpk * p.dQK, p.dQK, p.sQ * hpk * p.dQK];
  }
  const rows = p.sQ * p.hQ;
  return {
    implementation: 'sm90-dense', main, combine, twice: false, numSmParts, fixedOverhead: 5, totalSplits,
    lseAccumBytes: 4 * totalSplits * rows, oAccumBytes: 4 * 512 * totalSplits * rows,
    regroupQ, qReStrides,
    // docs/flashmla-interface.md#dense-host-layer step 4: out_raw (b, h_k, q_seq_per_hk, 512) is the public layout when h_k == 1 or
    // s_q == 1; lse_raw (b, h_k, q_seq_per_hk) is a (b, h_q, s_q) view unless h_k > 1, hpk > 1 and s_q > 1
    // (docs/flashmla-interface.md#dense-output-reshape).
    outDirect: p.hK === 1 || p.sQ === 1,
    lseDirect: p.hK === 1 || hpk === 1 || p.sQ === 1,
    scale: Math.fround(p.softmaxScale),
    scaleLog2: softmaxScaleLog2('dense', p.softmaxScale),
  };
}

function sparseScopeChecks(s: SparseScope, name: string, idxName: string, arch: 'sm90' | 'sm100', layout: 'v32' | 'model1', baseOf: BaseOf): void {
  // docs/flashmla-interface.md#sm90-cache-loads (sm90, 128-bit loads) and docs/flashmla-interface.md#launcher-checks (sm100, TMA): 16-byte aligned cache base.
  expectAligned(baseOf(s.cache), 16, name, arch === 'sm90' ? '128-bit loads' : 'TMA');
  if (arch === 'sm90') {
    check(s.blockStride % 16 === 0, 'E_STRIDE', name,
      `${name}.strides[0] = ${s.blockStride} bytes must be a multiple of 16 on sm90; ` +
        (layout === 'model1' ? 'pad MODEL1 blocks to ceil(B·584/576)·576 bytes as quantizeKCache does' : 'use a 16-byte multiple block stride'));
  } else {
    const row = layout === 'v32' ? 656 : 576;
    check(s.blockStride % row === 0, 'E_STRIDE', name,
      `${name}.strides[0] = ${s.blockStride} bytes must be a multiple of ${row} on sm100 (TMA rows of ${row} bytes)`);
  }
  // docs/flashmla-interface.md#launcher-checks [inferred]: int2 index loads need 8-byte aligned index rows.
  expectAligned(baseOf(s.indices), 8, idxName, 'int2 loads');
  check(s.indices.view.strides.slice(0, 2).every((x, i) => x % 2 === 0 || s.indices.view.shape[i]! <= 1), 'E_STRIDE', idxName,
    () => `${idxName} rows must be 8-byte aligned (even strides), got strides (${s.indices.view.strides.join(', ')})`);
}

function sparsePlan(p: SparsePlan, d: DeviceFacts, problem: LauncherProblem, baseOf: BaseOf): LaunchPlan {
  const arch = archOf(d)!;
  const v32 = p.layout === 'v32';
  const choice = kernelChoice({ kind: 'sparse', layout: p.layout, hQ: p.hQ }, arch);
  const { implementation, main, twice } = choice;
  // docs/flashmla-interface.md#sparse-host-layer: P per implementation.
  const perQ = Math.floor(d.sms / p.sQ);
  const numSmParts = Math.max(implementation === 'sm90-sparse' ? Math.floor(perQ / (p.hQ / 64))
    : implementation === 'sm100-head128' ? Math.floor(perQ / 2) : perQ, 1);
  const fixedOverhead = implementation === 'sm100-head128' ? 3 : 5;
  if (arch === 'sm90') {
    // docs/flashmla-interface.md#sparse-host-layer caveat / docs/flashmla-interface.md#launcher-checks: the sm90 V32 launcher throws on these.
    check(!(v32 && p.main.topkLength !== null), 'E_UNSUPPORTED', 'topkLength',
      'topkLength is not supported for V3.2 (d_qk 576) caches on sm90');
    check(!(v32 && p.extra !== null), 'E_UNSUPPORTED', 'extraKCache',
      'extraKCache is not supported for V3.2 (d_qk 576) caches on sm90');
  }
  expectRunnable(problem, launchersOf(choice));

  expectAligned(baseOf(p.q), 16, 'q', 'TMA');
  expectTmaStrides(p.q, 'q');
  sparseScopeChecks(p.main, 'kCache', 'indices', arch, p.layout, baseOf);
  // (At least one block, int32 strides and extra_topk % 64 are checked by the shared validation.)
  if (p.extra !== null) sparseScopeChecks(p.extra, 'extraKCache', 'extraIndicesInKvcache', arch, p.layout, baseOf);
  if (implementation === 'sm100-head128') {
    const [qb, qs] = p.q.view.strides as [number, number];
    // docs/flashmla-interface.md#launcher-gaps: the launcher computes stride_q_b % stride_q_s_q (0 divides by zero: SIGFPE).
    check(qs !== 0 && qb % qs === 0, 'E_STRIDE', 'q',
      `q.strides[1] must be non-zero and divide q.strides[0] for the sm100 head128 kernel, got strides (${p.q.view.strides.join(', ')})`);
  }
  const totalSplits = commonLimits(p.b, p.sQ, p.hQ, numSmParts, d);
  const rows = p.sQ * p.hQ;
  const scale = Math.fround(p.softmaxScale);
  return {
    implementation, main, combine: 'combine_bf16', twice, numSmParts, fixedOverhead, totalSplits,
    lseAccumBytes: 4 * totalSplits * rows, oAccumBytes: 4 * 512 * totalSplits * rows,
    regroupQ: false, qReStrides: [0, 0, 0],
    outDirect: true,
    // docs/flashmla-interface.md#sparse-launch-sequence: the kernels' lse (b, s_q, h_q) is the public (b, h_q, s_q) as a view.
    lseDirect: true,
    scale,
    scaleLog2: softmaxScaleLog2('sparse', p.softmaxScale),
  };
}

/**
 * The element strides of a decode's lse (b, h_q, s_q), as FlashMLA returns it
 * (docs/flashmla-interface.md#dense-output-reshape, docs/flashmla-interface.md#sparse-launch-sequence): with one kv head and
 * s_q > 1 a view of what the kernels write, (b, s_q, h_q) in memory, strides (s_q·h_q, 1, h_q);
 * contiguous otherwise. Every decode with s_q > 1 of DeepSeek's models (sparse, or dense with h_k = 1)
 * gets the view, so no call copies its lse.
 */
export function lseStrides(plan: DecodePlan): readonly [number, number, number] {
  const oneKvHead = plan.kind === 'sparse' || plan.hK === 1;
  return oneKvHead && plan.sQ > 1 ? [plan.sQ * plan.hQ, 1, plan.hQ] : [plan.hQ * plan.sQ, plan.sQ, 1];
}

/** The launch plan of a validated decode on a device, or a FlashMLAError before anything runs. */
export function planLaunch(plan: DecodePlan, device: DeviceFacts, problem: LauncherProblem, baseOf: BaseOf): LaunchPlan {
  if (archOf(device) === null) {
    throw new FlashMLAError('E_BACKEND', `FlashMLA's kernels need compute capability 9.0 or 10.x; this device is ${ccText(device)}`);
  }
  return plan.kind === 'dense' ? densePlan(plan, device, problem, baseOf) : sparsePlan(plan, device, problem, baseOf);
}

/** The scalar part of the addon's decode request (binding/decode.cc parseDecodeRequest). */
export function requestFields(plan: DecodePlan, launch: LaunchPlan, launcherId: (key: string) => number): NativeDecodeFields {
  const q = plan.q.view.strides as readonly [number, number, number, number];
  const common = {
    mainLauncher: launcherId(launch.main),
    combineLauncher: launcherId(launch.combine),
    twice: launch.twice,
    b: plan.b, sQ: plan.sQ, hQ: plan.hQ, dQK: plan.dQK, dV: plan.dV,
    numSmParts: launch.numSmParts, fixedOverhead: launch.fixedOverhead,
    scale: launch.scale, scaleLog2: launch.scaleLog2,
    elemBytes: 2,
    qStrides: [q[0], q[1], q[2]] as const,
    regroupQ: launch.regroupQ, qReStrides: launch.qReStrides,
    outDirect: launch.outDirect, lseDirect: launch.lseDirect,
  };
  if (plan.kind === 'dense') {
    const k = plan.kCache.view.strides as readonly [number, number, number, number];
    return {
      ...common, dense: true, hK: plan.hK, topk: -1, extraTopk: -1, causal: plan.causal,
      numBlocks: plan.numBlocks, pageBlockSize: plan.pageBlockSize, extraNumBlocks: 0, extraPageBlockSize: 0,
      kStrides: [k[0], k[1], k[2]], blockTableStride: plan.blockTable.view.strides[0]!,
      strideKvBlock: 0, strideKvRow: 0, strideIndicesB: 0, strideIndicesS: 0,
      strideExtraKvBlock: 0, strideExtraKvRow: 0, strideExtraIndicesB: 0, strideExtraIndicesS: 0,
    };
  }
  const m = plan.main;
  const e = plan.extra;
  return {
    ...common, dense: false, hK: 1, topk: m.topk, extraTopk: e?.topk ?? 0, causal: false,
    numBlocks: m.numBlocks, pageBlockSize: m.pageBlockSize,
    extraNumBlocks: e?.numBlocks ?? 0, extraPageBlockSize: e?.pageBlockSize ?? 0,
    kStrides: [0, 0, 0], blockTableStride: 0,
    strideKvBlock: m.cache.view.strides[0]!, strideKvRow: m.cache.view.strides[1]!,
    strideIndicesB: m.indices.view.strides[0]!, strideIndicesS: m.indices.view.strides[1]!,
    strideExtraKvBlock: e?.cache.view.strides[0] ?? 0, strideExtraKvRow: e?.cache.view.strides[1] ?? 0,
    strideExtraIndicesB: e?.indices.view.strides[0] ?? 0, strideExtraIndicesS: e?.indices.view.strides[1] ?? 0,
  };
}

/** The plan's tensors by the addon's operand names. */
export function operandsOf(plan: DecodePlan): Record<string, Bound | null> {
  if (plan.kind === 'dense') {
    return { q: plan.q, kv: plan.kCache, blockTable: plan.blockTable, seqlens: plan.cacheSeqlens };
  }
  return {
    q: plan.q, kv: plan.main.cache, indices: plan.main.indices, topkLength: plan.main.topkLength, attnSink: plan.attnSink,
    extraKv: plan.extra?.cache ?? null, extraIndices: plan.extra?.indices ?? null, extraTopkLength: plan.extra?.topkLength ?? null,
  };
}
