/**
 * The layout of Engram's hash tables (docs/engram-hashing.md#layout): one prime-sized table per
 * (layer, order, head), concatenated per layer, and one odd 64-bit multiplier per (layer, look-back).
 */
import { check } from '../errors.js';
import { INT32_MAX } from '../tensor.js';
import { checkConfig, type EngramConfig } from './config.js';
import { defaultRngIntegers } from './numpy-random.js';

/** One Engram layer's hash geometry. */
export interface EngramLayerLayout {
  /** The block index (an entry of config.layerIds). */
  readonly layerId: number;
  /** (N − 1)·K table sizes, in (order, head) order: 2-gram heads first. */
  readonly primes: Int32Array;
  /** Where each head's table starts in the layer's table: exclusive prefix sums of `primes`. */
  readonly offsets: Int32Array;
  /** Rows of the layer's table: the sum of `primes`. */
  readonly numEmbeddings: number;
  /** N odd multipliers, one per look-back s = 0..N − 1. */
  readonly multipliers: BigInt64Array;
}

/** Options of {@link layout}. */
export interface LayoutOptions {
  /** V′, the number of canonical token ids (a token map's `size`). Default: config.compressedVocabSize. */
  readonly compressedVocabSize?: number;
}

/** Salt between layers' multiplier seeds (docs/engram-hashing.md#multipliers). */
const LAYER_SEED_STRIDE = 10007n;

/**
 * The tables and multipliers of every Engram layer of `config`, in config.layerIds order
 * (docs/engram-hashing.md#layout). Throws a FlashMLAError when V′ is unknown, when a table would
 * not fit int32 row ids, or when config.numEmbeddings disagrees with the primes.
 */
export function layout(config: EngramConfig, options: LayoutOptions = {}): EngramLayerLayout[] {
  const c = checkConfig(config);
  check(typeof options === 'object' && options !== null, 'E_VALUE', 'options', 'options must be an object');
  const vocab = options.compressedVocabSize ?? c.compressedVocabSize;
  check(vocab !== undefined, 'E_VALUE', 'options.compressedVocabSize',
    'V′ is unknown: pass options.compressedVocabSize (the token map\'s size) or set config.compressedVocabSize');
  check(Number.isSafeInteger(vocab) && vocab >= 1 && vocab <= INT32_MAX, 'E_VALUE', 'options.compressedVocabSize',
    () => `options.compressedVocabSize must be an integer in 1…${INT32_MAX}, got ${String(vocab)}`);
  const bound = multiplierBound(vocab);
  const n = c.maxNgramSize;
  const k = c.nHeads;
  const seen = new Set<number>();
  return c.layerIds.map((layerId, i) => {
    const primes = new Int32Array((n - 1) * k);
    const offsets = new Int32Array((n - 1) * k);
    let total = 0;
    for (let order = 2; order <= n; order++) {
      let current = c.vocabSizes[order - 2]! - 1;
      for (let head = 0; head < k; head++) {
        do current = nextPrime(current); while (seen.has(current));
        seen.add(current);
        const col = (order - 2) * k + head;
        offsets[col] = total;
        primes[col] = current;
        total += current;
        check(total <= INT32_MAX, 'E_RANGE', 'config.vocabSizes',
          () => `layer ${layerId}'s tables would hold more than ${INT32_MAX} rows (row ids are int32)`);
      }
    }
    const stated = c.numEmbeddings?.[i];
    check(stated === undefined || stated === total, 'E_VALUE', 'config.numEmbeddings',
      () => `config.numEmbeddings[${i}] (engram_num_embeddings) is ${stated} but layer ${layerId}'s primes sum to ${total}`);
    const r = defaultRngIntegers(BigInt(c.seed) + LAYER_SEED_STRIDE * BigInt(layerId), bound, n); // exact for any safe seed
    return Object.freeze({
      layerId,
      primes,
      offsets,
      numEmbeddings: total,
      multipliers: BigInt64Array.from(r, (x) => 2n * x + 1n),
    });
  });
}

/**
 * The exclusive bound of the multipliers' random halves: ⌊⌊(2^63 − 1)/V′⌋ / 2⌋ (at least 1), so
 * that every m = 2r + 1 times every canonical id stays below 2^63.
 */
export function multiplierBound(compressedVocabSize: number): bigint {
  const b = ((2n ** 63n - 1n) / BigInt(compressedVocabSize)) / 2n;
  return b > 1n ? b : 1n;
}

/** Primes up to √(2^31), enough to test any candidate below 2^31 by trial division. */
let smallPrimes: Int32Array | undefined;

function primesToSqrtInt32(): Int32Array {
  if (smallPrimes === undefined) {
    const limit = 46341; // ⌈√(2^31)⌉
    const composite = new Uint8Array(limit + 1);
    const found: number[] = [];
    for (let i = 2; i <= limit; i++) {
      if (composite[i]) continue;
      found.push(i);
      for (let j = i * i; j <= limit; j += i) composite[j] = 1;
    }
    smallPrimes = Int32Array.from(found);
  }
  return smallPrimes;
}

function isPrime(x: number): boolean {
  if (x < 2) return false;
  for (const p of primesToSqrtInt32()) {
    if (p * p > x) return true;
    if (x % p === 0) return x === p;
  }
  return true;
}

/** The smallest prime above `x` (x + 1 ≤ 2^31 − 1; layout's row-count check stops the search long before). */
function nextPrime(x: number): number {
  let candidate = x + 1;
  while (!isPrime(candidate)) candidate++;
  check(candidate <= INT32_MAX, 'E_RANGE', 'config.vocabSizes', 'a table size would exceed int32');
  return candidate;
}
