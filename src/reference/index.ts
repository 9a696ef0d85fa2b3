import type { HostTensor } from '../tensor.js';
import type { Bound, DecodePlan } from '../plan.js';
import type { CallOptions, DecodeArgs, DecodeResult } from '../types.js';
import { readDecodeArgs, readDecodeOptions } from '../validate/args.js';
import { validateDecode } from '../validate/index.js';
import { expectHostInputs, resolveThreads, runItems, runnerWave, setupCall, sinkValues, slotFloats, type ReferenceOptions } from './drive.js';
import { allocateOutputs, writeRows, type RowPlaces } from './finalize.js';
import { groupFolder, ITEM, itemRows, workItems } from './items.js';
import { resolveTier } from './kernels.js';
import type { Partial } from './partial.js';
import { forgetQ } from './qmemo.js';
import { nativeRunner, runFinishing } from './runner.js';

export { resolveTier, TIER_ENV, TIERS, tierAvailable, tierUnavailable, type Tier } from './kernels.js';
export { MAX_THREADS, PARALLEL_MIN_FLOPS, resolveThreads, type ReferenceOptions } from './drive.js';

/** A call's inputs by name, for the host-tensor check. */
function inputsOf(plan: DecodePlan): [string, Bound | null][] {
  if (plan.kind === 'dense') return [['q', plan.q], ['kCache', plan.kCache], ['blockTable', plan.blockTable], ['cacheSeqlens', plan.cacheSeqlens]];
  return [
    ['q', plan.q], ['kCache', plan.main.cache], ['indices', plan.main.indices], ['topkLength', plan.main.topkLength], ['attnSink', plan.attnSink],
    ['extraKCache', plan.extra?.cache ?? null], ['extraIndicesInKvcache', plan.extra?.indices ?? null], ['extraTopkLength', plan.extra?.topkLength ?? null],
  ];
}

/**
 * Folds item partials, in item order, into the group they belong to and writes each group's rows
 * when its last item arrives (LSE merge as FlashMLA's combine, docs/flashmla-interface.md#split-kv).
 * The worker pool's calls and the runner's calls with an attention sink finish here; the runner's
 * own finishing (runner.ts `runFinishing`) is tested against it bit for bit.
 */
export function merger(plan: DecodePlan, items: Int32Array, res: DecodeResult<HostTensor>): (j: number, p: Partial) => void {
  const rows = itemRows(plan);
  const sinks = plan.kind === 'sparse' ? sinkValues(plan.attnSink, plan.hQ) : null;
  const hpk = plan.kind === 'dense' ? plan.hQ / plan.hK : 1;
  const places: RowPlaces = { i: 0, s: new Int32Array(rows), h: new Int32Array(rows), sink: sinks };
  const factors = new Float64Array(rows);
  const bases = new Float64Array(rows);
  return groupFolder(items, rows, plan.dV, (j, acc) => {
    const g = items[ITEM * j + 1]!, r0 = items[ITEM * j + 4]!;
    places.i = items[ITEM * j]!;
    for (let r = 0; r < acc.rows; r++) {
      const row = r0 + r;
      // Dense rows are (s, head of KV head g) (docs/flashmla-interface.md#dense-host-layer); sparse rows are the heads of token g.
      places.s[r] = plan.kind === 'dense' ? Math.floor(row / hpk) : g;
      places.h[r] = plan.kind === 'dense' ? g * hpk + (row % hpk) : row;
    }
    writeRows(res, plan, acc, places, factors, bases);
  });
}

/** Runs a validated plan on the CPU with FlashMLA's semantics (docs/flashmla-interface.md#reference-semantics). */
export async function runReference(plan: DecodePlan, opts: ReferenceOptions = {}): Promise<DecodeResult<HostTensor>> {
  try {
    return await runPlan(plan, opts);
  } finally {
    forgetQ();
  }
}

async function runPlan(plan: DecodePlan, opts: ReferenceOptions): Promise<DecodeResult<HostTensor>> {
  expectHostInputs(inputsOf(plan));
  const setup = setupCall(plan, opts);
  const res = allocateOutputs(plan);
  const items = workItems(plan);
  // Without an attention sink the runner's threads also merge and write the rows (runner.ts `runFinishing`).
  if (setup.runner && !(plan.kind === 'sparse' && plan.attnSink)) {
    const n = items.length / ITEM;
    const slot = slotFloats(plan);
    runFinishing(setup.runner, plan, items, res, slot, n === 1 ? 1 : setup.threads, runnerWave(n, slot));
    return res;
  }
  await runItems(plan, items, setup, merger(plan, items, res));
  return res;
}

/** `flashMlaWithKvCache` on the reference backend: validate, bind the sched meta, run. */
export async function referenceDecode(callerArgs: DecodeArgs, callerOptions?: CallOptions & ReferenceOptions): Promise<DecodeResult<HostTensor>> {
  const args = readDecodeArgs(callerArgs);
  const options = readDecodeOptions(callerOptions);
  const threads = resolveThreads(options.threads);
  const tier = resolveTier(options.tier ?? options.kernels?.name);
  // The native runner checks q's values as its threads load q (docs/reference-backend.md#native-runner).
  const plan = validateDecode(args, { finiteQ: tier !== 'native' || nativeRunner() === null });
  args.schedMeta.bind(plan.config);
  return runReference(plan, { threads, tier, kernels: options.kernels });
}
