/**
 * What every hash tier works from (docs/engram-hashing.md#hash): the layout flattened into typed
 * arrays, V′ and the canonical pad, and the one rule that turns caller ids (+ mask) into the
 * canonical sequence the tiers read, with −1 for a dead token (docs/engram-hashing.md#masks).
 */
import { check, FlashMLAError } from '../errors.js';
import { INT32_MAX } from '../tensor.js';
import type { EngramConfig } from './config.js';
import type { EngramLayerLayout } from './layout.js';
import type { TokenMap } from './types.js';

/** Largest V′ the hasher takes: the JS tier forms id · (24-bit piece of m) exactly only below 2^53 (docs/engram-hashing.md#tiers). */
export const MAX_HASH_VOCAB = 2 ** 29;

/** The marker of a dead (masked) token in a canonical sequence. */
export const DEAD = -1;

/** A layout flattened for the tiers. */
export interface HashPlan {
  readonly layers: number;
  /** N: look-backs 0..N − 1, orders 2..N. */
  readonly order: number;
  /** K: heads per order. */
  readonly heads: number;
  /** (N − 1)·K: columns per layer. */
  readonly cols: number;
  /** V′: canonical ids are 0..V′ − 1. */
  readonly vocab: number;
  /** The canonical pad id. */
  readonly pad: number;
  /** [layer][look-back] odd multipliers. */
  readonly multipliers: BigInt64Array;
  /** [layer][col] primes. */
  readonly primes: Int32Array;
  /** [layer][col] offsets. */
  readonly offsets: Int32Array;
  /** The raw → canonical map, when ids come from the tokenizer. */
  readonly tokenMap: TokenMap | undefined;
  /** The layout the flat arrays were copied from. */
  readonly layout: readonly EngramLayerLayout[];
}

/**
 * A tier's hash loop for one plan: for every t in [history, seq.length),
 * out[(t − history)·layers·cols + layer·cols + col] = the row id of column col (order, head) of that
 * layer, reading look-backs from seq (canonical ids, DEAD for a dead token; positions before seq[0]
 * are the sequence start).
 */
export type HashKernel = (seq: Int32Array, history: number, out: Int32Array) => void;

/** A tier: builds its loop for a plan (once per hasher). */
export type HashTierKernel = (plan: HashPlan) => HashKernel;

/** Checks a layout given by the caller against the config and V′; the layout() of the same config passes. */
function checkLayout(given: unknown, config: EngramConfig, vocab: number): readonly EngramLayerLayout[] {
  const name = 'options.layout';
  check(Array.isArray(given) && given.length === config.layerIds.length, 'E_SHAPE', name,
    () => `${name} must hold one EngramLayerLayout per config.layerIds entry (${config.layerIds.length})`);
  const cols = (config.maxNgramSize - 1) * config.nHeads;
  const limit = 2n ** 63n - 1n;
  given.forEach((l: EngramLayerLayout, i) => {
    const at = `${name}[${i}]`;
    check(l !== null && typeof l === 'object' && l.layerId === config.layerIds[i], 'E_VALUE', `${at}.layerId`,
      () => `${at}.layerId must be ${config.layerIds[i]}`);
    check(l.primes instanceof Int32Array && l.primes.length === cols, 'E_SHAPE', `${at}.primes`,
      () => `${at}.primes must be an Int32Array of ${cols} primes`);
    check(l.offsets instanceof Int32Array && l.offsets.length === cols, 'E_SHAPE', `${at}.offsets`,
      () => `${at}.offsets must be an Int32Array of ${cols} offsets`);
    for (let c = 0; c < cols; c++) {
      const p = l.primes[c]!;
      const o = l.offsets[c]!;
      check(p >= 2 && o >= 0 && o + p - 1 <= INT32_MAX, 'E_RANGE', `${at}.primes[${c}]`,
        () => `${at}: prime ${p} at offset ${o} does not give int32 row ids`);
    }
    check(l.multipliers instanceof BigInt64Array && l.multipliers.length === config.maxNgramSize, 'E_SHAPE', `${at}.multipliers`,
      () => `${at}.multipliers must be a BigInt64Array of ${config.maxNgramSize} multipliers`);
    l.multipliers.forEach((m, s) => {
      // The hash is defined on exact non-negative 64-bit products (docs/engram-hashing.md#hash).
      check(m >= 1n && m * BigInt(vocab - 1) <= limit, 'E_RANGE', `${at}.multipliers[${s}]`,
        () => `${at}.multipliers[${s}] = ${m}: it must be ≥ 1 and (V′ − 1)·m must stay below 2^63 (V′ = ${vocab})`);
    });
  });
  return given as readonly EngramLayerLayout[];
}

/** Plans made by makePlan: a HashSession refuses anything else (it is made by NgramHasher.session()). */
const plans = new WeakSet<HashPlan>();

/** Whether `x` is a plan makePlan made. */
export function isPlan(x: unknown): x is HashPlan {
  return typeof x === 'object' && x !== null && plans.has(x as HashPlan);
}

/** The plan of a hasher; `layoutOf(vocab)` computes the layout when the caller gave none. */
export function makePlan(
  config: EngramConfig,
  tokenMap: TokenMap | undefined,
  given: readonly EngramLayerLayout[] | undefined,
  layoutOf: (vocab: number) => readonly EngramLayerLayout[],
): HashPlan {
  if (tokenMap !== undefined) {
    check(tokenMap !== null && typeof tokenMap === 'object' && tokenMap.map instanceof Int32Array, 'E_VALUE', 'options.tokenMap',
      'options.tokenMap must be a TokenMap ({ map: Int32Array, size })');
    check(Number.isSafeInteger(tokenMap.size) && tokenMap.size >= 1, 'E_VALUE', 'options.tokenMap.size',
      () => `options.tokenMap.size must be a positive integer, got ${String(tokenMap.size)}`);
    check(config.compressedVocabSize === undefined || config.compressedVocabSize === tokenMap.size, 'E_VALUE', 'options.tokenMap',
      () => `options.tokenMap has ${tokenMap.size} canonical ids but config.compressedVocabSize is ${config.compressedVocabSize}; ` +
        'every multiplier was drawn against V′, so a different map would rehash every row');
    for (let i = 0; i < tokenMap.map.length; i++) {
      const v = tokenMap.map[i]!;
      if (v < 0 || v >= tokenMap.size) {
        throw new FlashMLAError('E_RANGE', `options.tokenMap.map[${i}] = ${v} is outside 0…${tokenMap.size - 1}`, `options.tokenMap.map[${i}]`);
      }
    }
  }
  const vocab = tokenMap?.size ?? config.compressedVocabSize;
  check(vocab !== undefined, 'E_VALUE', 'config.compressedVocabSize',
    'V′ is unknown: give options.tokenMap or set config.compressedVocabSize');
  check(vocab <= MAX_HASH_VOCAB, 'E_UNSUPPORTED', tokenMap ? 'options.tokenMap.size' : 'config.compressedVocabSize',
    () => `V′ = ${vocab} is above the hasher's limit of 2^29 canonical ids`);
  let pad = config.padTokenId;
  if (tokenMap !== undefined) {
    check(pad < tokenMap.map.length, 'E_RANGE', 'config.padTokenId',
      () => `config.padTokenId ${pad} is outside the token map (${tokenMap.map.length} raw ids)`);
    pad = tokenMap.map[pad]!;
  } else {
    check(pad < vocab, 'E_RANGE', 'config.padTokenId',
      () => `config.padTokenId ${pad} is not a canonical id below V′ = ${vocab} (without a token map it is used as the canonical pad)`);
  }
  const layers = given === undefined ? layoutOf(vocab) : checkLayout(given, config, vocab);
  const order = config.maxNgramSize;
  const cols = (order - 1) * config.nHeads;
  const multipliers = new BigInt64Array(layers.length * order);
  const primes = new Int32Array(layers.length * cols);
  const offsets = new Int32Array(layers.length * cols);
  layers.forEach((l, i) => {
    multipliers.set(l.multipliers, i * order);
    primes.set(l.primes, i * cols);
    offsets.set(l.offsets, i * cols);
  });
  const plan: HashPlan = { layers: layers.length, order, heads: config.nHeads, cols, vocab, pad, multipliers, primes, offsets, tokenMap, layout: layers };
  plans.add(plan);
  return plan;
}

/**
 * The output of hashing `tokens` tokens. A length the engine cannot allocate (a typed array's
 * length limit, or memory) is the caller's to split, so it is a FlashMLAError, not a RangeError.
 */
export function allocateRowIds(plan: HashPlan, tokens: number): Int32Array {
  const length = tokens * plan.layers * plan.cols;
  try {
    return new Int32Array(length);
  } catch (e) {
    throw new FlashMLAError('E_RANGE', `${tokens} tokens need ${length} row ids, which cannot be allocated here ` +
      `(${(e as Error).message}); hash them in chunks (a HashSession keeps the look-back between chunks)`, 'ids');
  }
}

/** The `compressed` option: true, false or absent (false). */
export function readCompressed(value: unknown, argument: string): boolean {
  check(value === undefined || typeof value === 'boolean', 'E_VALUE', argument,
    () => `${argument} must be a boolean, got ${String(value)}`);
  return value === true;
}

/** A flag array: Uint8Array (non-zero = dead) or booleans (true = dead). */
export type MaskInput = Uint8Array | readonly boolean[];
/** Token ids: an Int32Array or an array of integers. */
export type IdsInput = Int32Array | readonly number[];

/**
 * Validates ids (+ mask) and writes the canonical ids of entries skip… into `dst` from `at` on,
 * DEAD where the mask marks a token (all entries are checked). Raw ids go through the token map
 * unless `compressed` (or there is no map).
 */
export function canonicalInto(
  plan: HashPlan,
  ids: IdsInput,
  mask: MaskInput | undefined,
  compressed: boolean,
  names: { readonly ids: string; readonly mask: string },
  dst: Int32Array,
  at: number,
  skip = 0,
): void {
  const typed = ids instanceof Int32Array;
  check(typed || Array.isArray(ids), 'E_DTYPE', names.ids, `${names.ids} must be an Int32Array or an array of integers`);
  const n = ids.length;
  if (mask !== undefined) {
    check(mask instanceof Uint8Array || Array.isArray(mask), 'E_DTYPE', names.mask,
      `${names.mask} must be a Uint8Array or an array of booleans`);
    check(mask.length === n, 'E_SHAPE', names.mask, () => `${names.mask} has ${mask.length} entries for ${n} ids`);
  }
  const map = compressed ? undefined : plan.tokenMap?.map;
  const limit = map ? map.length : plan.vocab;
  for (let i = 0; i < n; i++) {
    const id = ids[i]!;
    if (!typed && !Number.isInteger(id)) {
      throw new FlashMLAError('E_VALUE', `${names.ids}[${i}] must be an integer, got ${String(id)}`, `${names.ids}[${i}]`);
    }
    if (!(id >= 0 && id < limit)) {
      throw new FlashMLAError('E_RANGE',
        `${names.ids}[${i}] = ${id} is outside 0…${limit - 1} (${map ? 'raw ids of the token map' : 'canonical ids'})`, `${names.ids}[${i}]`);
    }
    if (i >= skip) dst[at + i - skip] = map ? map[id]! : id;
  }
  if (mask === undefined) return;
  const bytes = mask instanceof Uint8Array;
  for (let i = 0; i < n; i++) {
    const dead = mask[i];
    if (!bytes && typeof dead !== 'boolean') {
      throw new FlashMLAError('E_VALUE', `${names.mask}[${i}] must be a boolean, got ${String(dead)}`, `${names.mask}[${i}]`);
    }
    if (dead && i >= skip) dst[at + i - skip] = DEAD;
  }
}
