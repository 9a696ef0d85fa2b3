/** The native tier of the hash (binding/engram_hash.cc; docs/engram-hashing.md#tiers). */
import { loadAddon } from '../addon.js';
import type { HashTierKernel } from './hash-plan.js';

let tier: HashTierKernel | string | undefined;

/**
 * The addon's hash as a tier, or why this process cannot use it: the addon is not built, does not
 * load, or predates the Engram hash (rebuild it).
 */
export function nativeHashTier(): HashTierKernel | string {
  if (tier === undefined) {
    const loaded = loadAddon();
    const Hasher = loaded.ok ? loaded.addon.EngramHasher : undefined;
    if (!loaded.ok) tier = loaded.reason;
    else if (Hasher === undefined) tier = `the native addon at ${loaded.path} has no Engram hash; rebuild it (\`npm rebuild flashmla-node\`)`;
    else {
      tier = (plan) => {
        const native = new Hasher(plan.pad, plan.vocab, plan.multipliers, plan.primes, plan.offsets, plan.layers, plan.order, plan.heads);
        return (seq, history, out) => native.hash(seq, history, out);
      };
    }
  }
  return tier;
}
