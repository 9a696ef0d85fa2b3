import type { PrefillPlan } from '../plan.js';
import type { HostTensor } from '../tensor.js';
import type { CallOptions, SparseFwdArgs, SparseFwdResult } from '../types.js';
import { readDecodeOptions, readSparseFwdArgs } from '../validate/args.js';
import { validateSparseFwd } from '../validate/prefill.js';
import { expectHostInputs, resolveThreads, runItems, setupCall, sinkValues, type ReferenceOptions } from './drive.js';
import { allocatePrefillOutputs, writePrefillRows } from './finalize.js';
import { groupFolder, ITEM, workItems } from './items.js';
import { resolveTier } from './kernels.js';
import { forgetQ } from './qmemo.js';
import { nativeRunner } from './runner.js';

/**
 * `flashMlaSparseFwd` on the reference backend (docs/reference-backend.md#prefill): validate,
 * then the prefill's work items (query token × a chunk of its index positions) on the tier's
 * kernels and threads like a sparse decode, each token's used kv rows gathered 64 at a time and
 * converted once for all h_q heads; partials merged by LSE in item order, rows finished as
 * FlashMLA's prefill kernels finish them (docs/flashmla-interface.md#sparse-prefill). Results are
 * bitwise identical for any `threads`.
 */
export async function referenceSparseFwd(
  callerArgs: SparseFwdArgs, callerOptions?: CallOptions & ReferenceOptions,
): Promise<SparseFwdResult<HostTensor>> {
  const args = readSparseFwdArgs(callerArgs);
  const options = readDecodeOptions(callerOptions);
  const threads = resolveThreads(options.threads);
  const tier = resolveTier(options.tier ?? options.kernels?.name);
  // The native runner checks q's values as its threads load q (docs/reference-backend.md#native-runner).
  const plan = validateSparseFwd(args, undefined, { finiteQ: tier !== 'native' || nativeRunner() === null });
  try {
    return await runPrefill(plan, { threads, tier });
  } finally {
    forgetQ();
  }
}

async function runPrefill(plan: PrefillPlan, opts: ReferenceOptions): Promise<SparseFwdResult<HostTensor>> {
  expectHostInputs([['q', plan.q], ['kv', plan.kv], ['indices', plan.indices], ['attnSink', plan.attnSink], ['topkLength', plan.topkLength]]);
  const setup = setupCall(plan, opts);
  const res = allocatePrefillOutputs(plan);
  const items = workItems(plan);
  const sinks = sinkValues(plan.attnSink, plan.hQ);
  const factors = new Float64Array(plan.hQ);
  const bases = new Float64Array(plan.hQ);
  const absorb = groupFolder(items, plan.hQ, plan.dV, (j, acc) => writePrefillRows(res, items[ITEM * j + 1]!, acc, sinks, factors, bases));
  await runItems(plan, items, setup, absorb);
  return res;
}
