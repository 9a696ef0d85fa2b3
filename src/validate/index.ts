import { check } from '../errors.js';
import type { DecodePlan } from '../plan.js';
import { FlashMLASchedMeta } from '../sched-meta.js';
import type { DecodeArgs } from '../types.js';
import { expectFiniteValues, isGiven, type Downloaded } from './common.js';
import { validateDense } from './dense.js';
import { validateSparse } from './sparse.js';

export type { Downloaded } from './common.js';

/** Options of `validateDecode`. */
export interface ValidateOptions {
  /** Host copies of device tensors, whose values are then checked too (default: none). */
  downloaded?: Downloaded;
  /**
   * Check that q holds no NaN or ±Infinity (default: true). false only for a caller that makes
   * the same check itself as it reads q: the reference backend's native runner
   * (docs/reference-backend.md#native-runner), which then reports it as this check would.
   */
  finiteQ?: boolean;
}

/**
 * Validates a decode call exactly as FlashMLA would on any GPU (docs/flashmla-interface.md#python-checks, docs/flashmla-interface.md#host-layer, docs/flashmla-interface.md#supported-shapes), plus
 * the range checks FlashMLA leaves out, and returns the plan both backends run. Architecture-
 * specific limits are the CUDA backend's to add. Throws FlashMLAError naming the argument.
 * q's values are checked last, after every other check.
 */
export function validateDecode(args: DecodeArgs, opts?: ValidateOptions): DecodePlan {
  check(args !== null && typeof args === 'object', 'E_VALUE', 'args', 'args must be an object');
  check(args.schedMeta instanceof FlashMLASchedMeta, 'E_VALUE', 'schedMeta',
    'schedMeta must come from getMlaMetadata()');
  const plan = isGiven(args.indices) ? validateSparse(args, opts?.downloaded) : validateDense(args, opts?.downloaded);
  if (opts?.finiteQ !== false) expectFiniteValues(plan.q, 'q', opts?.downloaded);
  return plan;
}
