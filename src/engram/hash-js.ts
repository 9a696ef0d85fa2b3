/**
 * The JavaScript tier of the hash (docs/engram-hashing.md#tiers): exact 64-bit arithmetic from
 * doubles and int32 words, no BigInt per token. Each multiplier is split into 24-bit pieces
 * m = a2·2^48 + a1·2^24 + a0, so x·a_i < 2^29·2^24 stays exact in a double (V′ ≤ 2^29); the
 * carries assemble the product's two 32-bit words; XOR works on the words; the 64-bit value
 * hi·2^32 + lo is reduced mod p in doubles below 2^53.
 */
import type { HashPlan, HashTierKernel } from './hash-plan.js';

const TWO16 = 65536;
const TWO24 = 16777216;
const INV_TWO24 = 1 / TWO24;
/** Below this prime, (hi mod p)·(2^32 mod p) + lo < 2^53: one reduction per head instead of two. */
const ONE_STEP_PRIME_LIMIT = 2 ** 26;

/** Per-plan constants of the JS tier. */
interface JsConstants {
  /** The 24-bit pieces of every multiplier, [layer][look-back]. */
  readonly a0: Float64Array;
  readonly a1: Float64Array;
  readonly a2: Float64Array;
  /** Per column: 2^32 mod p (one-step path) or 2^16 mod p (two-step path). */
  readonly shift: Float64Array;
  /** Per column: 1/p, for the quotient estimate. */
  readonly inverse: Float64Array;
  readonly oneStep: boolean;
}

function constantsOf(plan: HashPlan): JsConstants {
  const n = plan.multipliers.length;
  const a0 = new Float64Array(n);
  const a1 = new Float64Array(n);
  const a2 = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const m = plan.multipliers[i]!;
    a0[i] = Number(m & 0xffffffn);
    a1[i] = Number((m >> 24n) & 0xffffffn);
    a2[i] = Number(m >> 48n);
  }
  let oneStep = true;
  for (const p of plan.primes) oneStep &&= p < ONE_STEP_PRIME_LIMIT;
  const shift = Float64Array.from(plan.primes, (p) => (oneStep ? 2 ** 32 : TWO16) % p);
  const inverse = Float64Array.from(plan.primes, (p) => 1 / p);
  return { a0, a1, a2, shift, inverse, oneStep };
}

/**
 * t mod p for an integer 0 ≤ t < 2^53: the quotient estimate ⌊t·(1/p)⌋ is off by at most a few
 * units (relative error ~2^-51), which the two loops correct; q·p ≤ t + 2p stays exact.
 */
function mod(t: number, p: number, inverse: number): number {
  let r = t - Math.floor(t * inverse) * p;
  while (r < 0) r += p;
  while (r >= p) r -= p;
  return r;
}

/** The JS tier. */
export const hashJs: HashTierKernel = (plan) => {
  const { a0, a1, a2, shift, inverse, oneStep } = constantsOf(plan);
  const { layers, order, heads, cols, pad, primes, offsets } = plan;
  const x = new Float64Array(order);
  return (seq, history, out) => {
    let o = 0;
    for (let t = history; t < seq.length; t++) {
      // docs/engram-hashing.md#masks: the sequence start and a dead token block their slot and every older one.
      let blocked = false;
      for (let s = 0; s < order; s++) {
        const j = t - s;
        if (!blocked && (j < 0 || seq[j]! < 0)) blocked = true;
        x[s] = blocked ? pad : seq[j]!;
      }
      for (let l = 0; l < layers; l++) {
        const mBase = l * order;
        const cBase = l * cols;
        let hi = 0;
        let lo = 0;
        for (let s = 0; s < order; s++) {
          const xs = x[s]!;
          const p0 = xs * a0[mBase + s]!;
          const c0 = Math.floor(p0 * INV_TWO24);
          const w0 = p0 - c0 * TWO24; // product bits 0..23
          const p1 = xs * a1[mBase + s]! + c0;
          const c1 = Math.floor(p1 * INV_TWO24);
          const w1 = p1 - c1 * TWO24; // bits 24..47
          const w2 = xs * a2[mBase + s]! + c1; // bits 48..62 (the product is below 2^63)
          lo ^= w0 + (w1 & 0xff) * TWO24;
          hi ^= (w1 >>> 8) + w2 * TWO16;
          if (s === 0) continue;
          // hi < 2^31 (an XOR of values below 2^63), lo as unsigned 32 bits.
          const ulo = lo >>> 0;
          const col0 = cBase + (s - 1) * heads;
          for (let h = col0; h < col0 + heads; h++) {
            const p = primes[h]!;
            const inv = inverse[h]!;
            const r = oneStep
              ? mod((hi % p) * shift[h]! + ulo, p, inv)
              : mod(mod((hi % p) * shift[h]!, p, inv) * TWO16 + ulo, p, inv);
            out[o++] = r + offsets[h]!;
          }
        }
      }
    }
  };
};
