/**
 * Engram's N-gram hash (docs/engram-hashing.md#hash): token ids → the table rows every Engram
 * layer reads, known before layer 0 runs.
 */
import { check, FlashMLAError } from '../errors.js';
import { checkConfig, type EngramConfig } from './config.js';
import { hashJs } from './hash-js.js';
import { nativeHashTier } from './hash-native.js';
import { allocateRowIds, canonicalInto, makePlan, readCompressed, type HashKernel, type HashPlan, type IdsInput, type MaskInput } from './hash-plan.js';
import { HashSession } from './hash-session.js';
import { layout, type EngramLayerLayout } from './layout.js';
import type { TokenMap } from './types.js';

const IDS_NAMES = { ids: 'ids', mask: 'options.mask' } as const;
const HISTORY_NAMES = { ids: 'options.history.ids', mask: 'options.history.mask' } as const;

/** Which implementation hashes: the addon's C++ loop or the JavaScript one (docs/engram-hashing.md#tiers). */
export type HashTier = 'native' | 'js';

/** Options of the {@link NgramHasher} constructor. */
export interface NgramHasherOptions {
  /** Raw tokenizer id → canonical id. Default: none (ids are canonical; config.compressedVocabSize is V′). */
  readonly tokenMap?: TokenMap;
  /** A precomputed layout (e.g. stored with a table). Default: layout(config) for V′. */
  readonly layout?: readonly EngramLayerLayout[];
  /** 'auto' takes the native tier when the addon has it, else JS. Default: 'auto'. */
  readonly tier?: 'auto' | HashTier;
}

/** The tokens before `ids` (docs/engram-hashing.md#history). */
export interface HashHistory {
  /**
   * The ids of the tokens before, oldest first, read like `ids` (raw or canonical per `compressed`).
   * Only the last N − 1 reach a look-back; fewer than N − 1 means the sequence starts with them.
   */
  readonly ids: IdsInput;
  /** Their dead flags (true / non-zero = dead). Default: none dead. */
  readonly mask?: MaskInput;
}

/** Options of {@link NgramHasher.hash}. */
export interface HashOptions {
  /** The tokens before `ids`. Default: none (`ids` starts the sequence). */
  readonly history?: HashHistory;
  /** Dead tokens (true / non-zero = dead, e.g. an image placeholder), one per id. Default: none dead. */
  readonly mask?: MaskInput;
  /** Ids (and history ids) are canonical already. Default: false (raw when the hasher has a token map). */
  readonly compressed?: boolean;
}

/**
 * Hashes token ids into Engram row ids for every Engram layer of a config. Row ids are laid out
 * [token][layer][(N − 1)·K], columns in (order, head) order with each head's table offset added,
 * so they index the layer's concatenated table directly.
 */
export class NgramHasher {
  /** The checked config. */
  readonly config: EngramConfig;
  /** The layers' tables and multipliers, in config.layerIds order. */
  readonly layout: readonly EngramLayerLayout[];
  /** The tier that hashes. */
  readonly tier: HashTier;
  /** V′: canonical ids are 0…V′ − 1. */
  readonly compressedVocabSize: number;
  /** The canonical id that pads look-backs: map[padTokenId], or padTokenId itself without a token map. */
  readonly padId: number;
  /** Row ids per token: layers · (N − 1) · K. */
  readonly idsPerToken: number;
  readonly #plan: HashPlan;
  readonly #kernel: HashKernel;

  /**
   * @param config the Engram config (configFromHf, paperDemoConfig).
   * @param options token map, layout, tier; see {@link NgramHasherOptions}. Default: {}.
   */
  constructor(config: EngramConfig, options: NgramHasherOptions = {}) {
    check(options !== null && typeof options === 'object', 'E_VALUE', 'options', 'options must be an object');
    this.config = checkConfig(config);
    const tier = options.tier ?? 'auto';
    check(tier === 'auto' || tier === 'native' || tier === 'js', 'E_VALUE', 'options.tier',
      () => `options.tier must be 'auto', 'native' or 'js', got ${JSON.stringify(tier)}`);
    const plan = makePlan(this.config, options.tokenMap, options.layout,
      (vocab) => layout(this.config, { compressedVocabSize: vocab }));
    const native = tier === 'js' ? undefined : nativeHashTier();
    if (tier === 'native' && typeof native === 'string') {
      throw new FlashMLAError('E_BACKEND', `the native Engram hash is unavailable: ${native}`, 'options.tier');
    }
    this.#kernel = (typeof native === 'function' ? native : hashJs)(plan);
    this.tier = typeof native === 'function' ? 'native' : 'js';
    this.#plan = plan;
    this.layout = plan.layout;
    this.compressedVocabSize = plan.vocab;
    this.padId = plan.pad;
    this.idsPerToken = plan.layers * plan.cols;
  }

  /**
   * The row ids of `ids`: Int32Array [ids.length][layers][(N − 1)·K]. Every bad id, mask or
   * history entry throws a FlashMLAError naming it ('ids[3]', 'options.mask', ...).
   * @param ids raw tokenizer ids (with a token map) or canonical ids.
   * @param options history, mask, compressed; see {@link HashOptions}. Default: {}.
   */
  hash(ids: IdsInput, options: HashOptions = {}): Int32Array {
    check(options !== null && typeof options === 'object', 'E_VALUE', 'options', 'options must be an object');
    check(ids instanceof Int32Array || Array.isArray(ids), 'E_DTYPE', 'ids', 'ids must be an Int32Array or an array of integers');
    const plan = this.#plan;
    const compressed = readCompressed(options.compressed, 'options.compressed');
    // First: the largest allocation, so a too-long ids fails before anything else is allocated or read.
    const out = allocateRowIds(plan, ids.length);
    const history = options.history;
    let before = 0;
    let seq: Int32Array;
    if (history === undefined) {
      seq = new Int32Array(ids.length);
    } else {
      check(history !== null && typeof history === 'object', 'E_VALUE', 'options.history',
        'options.history must be { ids, mask? }');
      const h = history.ids;
      check(h instanceof Int32Array || Array.isArray(h), 'E_DTYPE', 'options.history.ids',
        'options.history.ids must be an Int32Array or an array of integers');
      // Every entry is checked; only the last N − 1 reach a look-back.
      before = Math.min(h.length, plan.order - 1);
      seq = new Int32Array(before + ids.length);
      canonicalInto(plan, h, history.mask, compressed, HISTORY_NAMES, seq, 0, h.length - before);
    }
    canonicalInto(plan, ids, options.mask, compressed, IDS_NAMES, seq, before);
    this.#kernel(seq, before, out);
    return out;
  }

  /** A new, empty per-request history (docs/engram-hashing.md#history). */
  session(): HashSession {
    return new HashSession(this.#plan, this.#kernel);
  }
}
