/**
 * Engram's configuration (docs/engram-hashing.md#configuration): read from a Hugging Face
 * `config.json` (DeepSeek-V4.1 keeps the fields under `text_config`) or the paper demo's constants.
 */
import { check, FlashMLAError } from '../errors.js';
import { INT32_MAX } from '../tensor.js';

/** Which Engram: DeepSeek-V4.1's (FP8 tables, gate only) or the paper demo's (fp32 tables, short convolution). */
export type EngramVariant = 'v4.1' | 'paper-demo';

/** Everything the Engram layers of a model are built from (docs/engram-hashing.md#configuration). */
export interface EngramConfig {
  /** Which Engram this is. */
  readonly variant: EngramVariant;
  /** 0-based indices of the blocks that carry an Engram module, e.g. [1, 14]. */
  readonly layerIds: readonly number[];
  /** N: the N-gram orders hashed are 2..N. */
  readonly maxNgramSize: number;
  /** K: hash heads (prime-sized tables) per order. */
  readonly nHeads: number;
  /** Values per table row (256 in V4.1, 64 in the paper demo). */
  readonly headDim: number;
  /** Prime search start per order 2..N (length N − 1): each head's prime is the next unused prime above it. */
  readonly vocabSizes: readonly number[];
  /** V′, the number of canonical token ids, when the config states it (V4.1: 99092); else the token map's size. */
  readonly compressedVocabSize: number | undefined;
  /** The raw (tokenizer) id whose canonical id pads look-backs (2 in both variants). */
  readonly padTokenId: number;
  /** Rows per layer's table, when the config states them (checked against the layout). */
  readonly numEmbeddings: readonly number[] | undefined;
  /** Seed of the multipliers: layer L draws from numpy's default_rng(seed + 10007·L). */
  readonly seed: number;
  /** M: residual branches per token (hyper-connections). */
  readonly hcMult: number;
  /** d: the model's hidden size. */
  readonly hiddenSize: number;
  /** RMSNorm epsilon of the gate, when the config states it. */
  readonly rmsNormEps: number | undefined;
  /** How table rows are stored: V4.1's e4m3 values with e8m0 scales per 32, or the demo's fp32. */
  readonly tableDtype: 'fp8-e4m3-e8m0' | 'fp32';
  /** The demo's short convolution kernel size (4); undefined without one (V4.1). */
  readonly convKernel: number | undefined;
  /** The demo's short convolution dilation (= N, 3); undefined without one (V4.1). */
  readonly convDilation: number | undefined;
}

/** Options of {@link configFromHf}. */
export interface ConfigFromHfOptions {
  /** Which Engram the config describes. Default: 'v4.1'. */
  readonly variant?: EngramVariant;
}

type Json = Record<string, unknown>;

const isObject = (x: unknown): x is Json => typeof x === 'object' && x !== null && !Array.isArray(x);

function integer(value: unknown, argument: string, min: number, max = INT32_MAX): number {
  check(value !== undefined && value !== null, 'E_VALUE', argument, `${argument} is required`);
  check(Number.isSafeInteger(value) && (value as number) >= min && (value as number) <= max, 'E_VALUE', argument,
    () => `${argument} must be an integer in ${min}…${max}, got ${JSON.stringify(value)}`);
  return value as number;
}

function integers(value: unknown, argument: string, min: number, length?: number): number[] {
  check(Array.isArray(value), 'E_VALUE', argument, () => `${argument} must be an array of integers, got ${JSON.stringify(value)}`);
  check(length === undefined || value.length === length, 'E_VALUE', argument,
    () => `${argument} must have ${length} entries, got ${value.length}`);
  return value.map((v, i) => integer(v, `${argument}[${i}]`, min));
}

function positive(value: unknown, argument: string): number {
  check(typeof value === 'number' && Number.isFinite(value) && value > 0, 'E_VALUE', argument,
    () => `${argument} must be a positive finite number, got ${JSON.stringify(value)}`);
  return value;
}

/**
 * Checks an EngramConfig built by hand (or by {@link paperDemoConfig} with overrides) and returns a
 * frozen copy; every bad field throws a FlashMLAError naming `${argument}.<field>`.
 * @param argument the name errors give the config. Default: 'config'.
 */
export function checkConfig(config: EngramConfig, argument = 'config'): EngramConfig {
  check(isObject(config), 'E_VALUE', argument, `${argument} must be an EngramConfig object`);
  const c = config as unknown as Json;
  const name = (field: string) => `${argument}.${field}`;
  check(c.variant === 'v4.1' || c.variant === 'paper-demo', 'E_VALUE', name('variant'),
    () => `${name('variant')} must be 'v4.1' or 'paper-demo', got ${JSON.stringify(c.variant)}`);
  const layerIds = integers(c.layerIds, name('layerIds'), 0);
  check(layerIds.length > 0, 'E_VALUE', name('layerIds'), `${name('layerIds')} must name at least one layer`);
  check(new Set(layerIds).size === layerIds.length, 'E_VALUE', name('layerIds'), `${name('layerIds')} must not repeat a layer`);
  const maxNgramSize = integer(c.maxNgramSize, name('maxNgramSize'), 2, 64);
  const compressed = c.compressedVocabSize === undefined ? undefined : integer(c.compressedVocabSize, name('compressedVocabSize'), 1);
  const padTokenId = integer(c.padTokenId, name('padTokenId'), 0);
  const tableDtype = c.tableDtype;
  check(tableDtype === 'fp8-e4m3-e8m0' || tableDtype === 'fp32', 'E_VALUE', name('tableDtype'),
    () => `${name('tableDtype')} must be 'fp8-e4m3-e8m0' or 'fp32', got ${JSON.stringify(tableDtype)}`);
  const optionalInt = (field: string, min: number) => (c[field] === undefined ? undefined : integer(c[field], name(field), min));
  return Object.freeze({
    variant: c.variant as EngramVariant,
    layerIds: Object.freeze(layerIds),
    maxNgramSize,
    nHeads: integer(c.nHeads, name('nHeads'), 1, 4096),
    headDim: integer(c.headDim, name('headDim'), 1),
    // A prime search starts above vocab − 1; 2 is the smallest start that yields a prime > 1.
    vocabSizes: Object.freeze(integers(c.vocabSizes, name('vocabSizes'), 2, maxNgramSize - 1)),
    compressedVocabSize: compressed,
    padTokenId,
    numEmbeddings: c.numEmbeddings === undefined ? undefined
      : Object.freeze(integers(c.numEmbeddings, name('numEmbeddings'), 1, layerIds.length)),
    seed: integer(c.seed, name('seed'), 0, Number.MAX_SAFE_INTEGER),
    hcMult: integer(c.hcMult, name('hcMult'), 1),
    hiddenSize: integer(c.hiddenSize, name('hiddenSize'), 1),
    rmsNormEps: c.rmsNormEps === undefined ? undefined : positive(c.rmsNormEps, name('rmsNormEps')),
    tableDtype,
    convKernel: optionalInt('convKernel', 1),
    convDilation: optionalInt('convDilation', 1),
  });
}

/**
 * The EngramConfig of a Hugging Face `config.json` (its text or the parsed object). The Engram
 * fields are read from `text_config` when that object has `engram_layer_ids` (DeepSeek-V4.1),
 * else from the top level; every missing or invalid field throws a FlashMLAError naming it
 * (e.g. 'config.text_config.engram_n_heads'). docs/engram-hashing.md#configuration lists the fields.
 */
export function configFromHf(configJson: string | object, options: ConfigFromHfOptions = {}): EngramConfig {
  let root: unknown = configJson;
  if (typeof configJson === 'string') {
    try {
      root = JSON.parse(configJson);
    } catch (e) {
      throw new FlashMLAError('E_VALUE', `configJson is not JSON: ${(e as Error).message}`, 'configJson');
    }
  }
  check(isObject(root), 'E_VALUE', 'configJson', 'configJson must be a JSON object (a config.json)');
  check(isObject(options), 'E_VALUE', 'options', 'options must be an object');
  const variant = options.variant ?? 'v4.1';
  check(variant === 'v4.1' || variant === 'paper-demo', 'E_VALUE', 'options.variant',
    () => `options.variant must be 'v4.1' or 'paper-demo', got ${JSON.stringify(variant)}`);
  const nested = isObject(root.text_config) && root.text_config.engram_layer_ids !== undefined;
  const src = nested ? (root.text_config as Json) : root;
  const prefix = nested ? 'config.text_config' : 'config';
  const field = (key: string) => `${prefix}.${key}`;

  const layerIds = integers(src.engram_layer_ids, field('engram_layer_ids'), 0);
  check(layerIds.length > 0 && new Set(layerIds).size === layerIds.length, 'E_VALUE', field('engram_layer_ids'),
    () => `${field('engram_layer_ids')} must list at least one layer, none twice`);
  const n = integer(src.engram_max_ngram_size, field('engram_max_ngram_size'), 2, 64);
  const vocab = src.engram_vocab_size;
  const vocabSizes = Array.isArray(vocab)
    ? integers(vocab, field('engram_vocab_size'), 2, n - 1)
    : new Array<number>(n - 1).fill(integer(vocab, field('engram_vocab_size'), 2));
  const optionalInt = (key: string, min: number) => (src[key] === undefined ? undefined : integer(src[key], field(key), min));
  const config: EngramConfig = {
    variant,
    layerIds,
    maxNgramSize: n,
    nHeads: integer(src.engram_n_heads, field('engram_n_heads'), 1, 4096),
    headDim: integer(src.engram_head_dim, field('engram_head_dim'), 1),
    vocabSizes,
    compressedVocabSize: optionalInt('engram_compressed_vocab_size', 1),
    padTokenId: padTokenIdOf(src, field),
    numEmbeddings: src.engram_num_embeddings === undefined ? undefined
      : integers(src.engram_num_embeddings, field('engram_num_embeddings'), 1, layerIds.length),
    seed: src.engram_seed === undefined ? 0 : integer(src.engram_seed, field('engram_seed'), 0, Number.MAX_SAFE_INTEGER),
    hcMult: integer(src.hc_mult, field('hc_mult'), 1),
    hiddenSize: integer(src.hidden_size, field('hidden_size'), 1),
    rmsNormEps: src.rms_norm_eps === undefined ? undefined : positive(src.rms_norm_eps, field('rms_norm_eps')),
    ...variantDefaults(variant, n),
  };
  return checkConfig(config, prefix);
}

/**
 * The pad id: `engram_pad_token_id` (DeepSeek-V4.1's config.json), or `engram_pad_id` (the name
 * SGLang's V4.1 module and transformers' tests use); both present must agree.
 */
function padTokenIdOf(src: Json, field: (key: string) => string): number {
  if (src.engram_pad_token_id === undefined && src.engram_pad_id !== undefined) return integer(src.engram_pad_id, field('engram_pad_id'), 0);
  const id = integer(src.engram_pad_token_id, field('engram_pad_token_id'), 0);
  check(src.engram_pad_id === undefined || src.engram_pad_id === id, 'E_VALUE', field('engram_pad_id'),
    () => `${field('engram_pad_id')} (${JSON.stringify(src.engram_pad_id)}) disagrees with ${field('engram_pad_token_id')} (${id})`);
  return id;
}

/** What a variant fixes that config.json does not say: the table format and the demo's short convolution. */
function variantDefaults(variant: EngramVariant, n: number): Pick<EngramConfig, 'tableDtype' | 'convKernel' | 'convDilation'> {
  return variant === 'v4.1'
    ? { tableDtype: 'fp8-e4m3-e8m0', convKernel: undefined, convDilation: undefined }
    : { tableDtype: 'fp32', convKernel: 4, convDilation: n };
}

/**
 * The paper demo's configuration (deepseek-ai/Engram engram_demo_v1.py; docs/engram-hashing.md#configuration):
 * layers [1, 15], N = 3, K = 8, 64 values per row, prime search from 646400 (5 × 129280) for both
 * orders, pad id 2, seed 0, M = 4, d = 1024, fp32 tables, convolution kernel 4 with dilation 3. V′
 * comes from the tokenizer (undefined here) unless `overrides` sets it.
 * @param overrides fields to replace (checked like the rest). Default: none.
 */
export function paperDemoConfig(overrides: Partial<EngramConfig> = {}): EngramConfig {
  check(isObject(overrides), 'E_VALUE', 'overrides', 'overrides must be an object');
  const n = overrides.maxNgramSize ?? 3;
  return checkConfig({
    variant: 'paper-demo',
    layerIds: [1, 15],
    maxNgramSize: 3,
    nHeads: 8,
    headDim: 64,
    vocabSizes: new Array<number>(Number.isSafeInteger(n) && n >= 2 ? n - 1 : 2).fill(129280 * 5),
    compressedVocabSize: undefined,
    padTokenId: 2,
    numEmbeddings: undefined,
    seed: 0,
    hcMult: 4,
    hiddenSize: 1024,
    rmsNormEps: undefined,
    ...variantDefaults('paper-demo', n),
    ...overrides,
  });
}
