import { check } from '../errors.js';
import type { DecodePlan } from '../plan.js';
import { FlashMLASchedMeta } from '../sched-meta.js';
import type { DecodeArgs } from '../types.js';
import { isGiven, type Downloaded } from './common.js';
import { validateDense } from './dense.js';
import { validateSparse } from './sparse.js';

export type { Downloaded } from './common.js';

/**
 * Validates a decode call exactly as FlashMLA would on any GPU (docs/flashmla-interface.md#python-checks, docs/flashmla-interface.md#host-layer, docs/flashmla-interface.md#supported-shapes), plus
 * the range checks FlashMLA leaves out, and returns the plan both backends run. Architecture-
 * specific limits are the CUDA backend's to add. Throws FlashMLAError naming the argument.
 */
export function validateDecode(args: DecodeArgs, opts?: { downloaded?: Downloaded }): DecodePlan {
  check(args !== null && typeof args === 'object', 'E_VALUE', 'args', 'args must be an object');
  check(args.schedMeta instanceof FlashMLASchedMeta, 'E_VALUE', 'schedMeta',
    'schedMeta must come from getMlaMetadata()');
  return isGiven(args.indices) ? validateSparse(args, opts?.downloaded) : validateDense(args, opts?.downloaded);
}
