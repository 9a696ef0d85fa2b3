/** The native tier of the hash (binding/engram_hash.cc; docs/engram-hashing.md#tiers). */
import { loadAddon } from '../addon.js';
import type { HashKernel, HashPlan } from './hash-plan.js';

let kernel: HashKernel | string | undefined;

/** Barrett constants ⌊(2^64 − 1)/p⌋ per column, once per plan (the addon checks them with two multiplications). */
const reciprocals = new WeakMap<HashPlan, BigUint64Array>();

function reciprocalsOf(plan: HashPlan): BigUint64Array {
  let r = reciprocals.get(plan);
  if (r === undefined) {
    r = BigUint64Array.from(plan.primes, (p) => (2n ** 64n - 1n) / BigInt(p));
    reciprocals.set(plan, r);
  }
  return r;
}

/**
 * The addon's hash loop as a HashKernel, or why this process cannot use it: the addon is not built,
 * does not load, or predates the Engram hash (rebuild it).
 */
export function nativeHashKernel(): HashKernel | string {
  if (kernel === undefined) {
    const loaded = loadAddon();
    const fn = loaded.ok ? loaded.addon.engramHash : undefined;
    if (!loaded.ok) kernel = loaded.reason;
    else if (fn === undefined) kernel = `the native addon at ${loaded.path} has no Engram hash; rebuild it (\`npm rebuild flashmla-node\`)`;
    else {
      kernel = (plan, seq, history, out) => fn(seq, history, plan.pad, plan.vocab, plan.multipliers, plan.primes, plan.offsets,
        plan.layers, plan.order, plan.heads, reciprocalsOf(plan), out);
    }
  }
  return kernel;
}
