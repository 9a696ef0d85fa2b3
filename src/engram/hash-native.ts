/** The native tier of the hash (binding/engram_hash.cc; docs/engram-hashing.md#tiers). */
import { loadAddon } from '../addon.js';
import type { HashKernel } from './hash-plan.js';

let kernel: HashKernel | string | undefined;

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
      kernel = (plan, seq, history, out) =>
        fn(seq, history, plan.pad, plan.vocab, plan.multipliers, plan.primes, plan.offsets, plan.layers, plan.order, plan.heads, out);
    }
  }
  return kernel;
}
