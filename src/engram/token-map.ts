/**
 * Engram's tokenizer compression (docs/engram-tokens.md): raw token id → canonical id, built from a
 * Hugging Face tokenizer.json exactly as deepseek-ai/Engram engram_demo_v1.py `CompressedTokenizer`
 * builds it through transformers and tokenizers.
 */
import { check, FlashMLAError } from '../errors.js';
import { INT32_MAX } from '../tensor.js';
import { decodeByteLevel } from './byte-level.js';
import { normalizeForEngram } from './normalize.js';
import type { TokenMap } from './types.js';

/** Options of {@link buildTokenMap}. */
export interface BuildTokenMapOptions {
  /**
   * The canonical vocabulary size the caller's model was trained with (V4.1's config states 99,092);
   * a different result throws E_VALUE instead of returning a map for another vocabulary.
   * Default: undefined (no check).
   */
  readonly expectedSize?: number;
}

type Json = Record<string, unknown>;
/** Text of one raw token string under the tokenizer's decoder. */
type DecodeOne = (token: string) => string;

const REPLACEMENT_CHARACTER = '\uFFFD';
/** Deepest Sequence (of decoders or normalizers) accepted: the checks recurse, and real files nest 1–2 deep. */
const MAX_NESTING = 64;
/** A UTF-16 surrogate that is not part of a pair: Rust strings (HF) cannot hold one. */
const LONE_SURROGATE = /[\uD800-\uDFFF]/u;

function isJson(x: unknown): x is Json {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

/**
 * Builds Engram's raw → canonical token map from a Hugging Face tokenizer.json (its text or the parsed
 * object). Each raw id in ascending order is decoded alone with the tokenizer's decoder; a text with
 * U+FFFD keys on the raw token string, any other on its normalised form (or on itself when that is
 * empty); each new key gets the next canonical id (docs/engram-tokens.md#the-rule).
 *
 * Supported: a BPE model, decoder ByteLevel, a Sequence of ByteLevel decoders, or none; ids 0..N−1 with
 * no gap. Throws FlashMLAError E_VALUE (malformed JSON or fields, ids that are not HF's, a size other
 * than `options.expectedSize`) or E_UNSUPPORTED (another model type or decoder, a normalizer that would
 * change how added tokens decode), naming the offending path, e.g. 'tokenizerJson.model.vocab["abc"]'.
 */
export function buildTokenMap(tokenizerJson: string | object, options?: BuildTokenMapOptions): TokenMap {
  const expectedSize = readExpectedSize(options);
  const root = parseRoot(tokenizerJson);
  const tokens = tokenStringsById(root);
  const decode = decoderOf(root['decoder']);
  const map = new Int32Array(tokens.length);
  const canonical = new Map<string, number>();
  for (let id = 0; id < tokens.length; id++) {
    const raw = tokens[id]!;
    const text = decode(raw);
    const key = text.includes(REPLACEMENT_CHARACTER) ? raw : normalizeForEngram(text) || text;
    let next = canonical.get(key);
    if (next === undefined) {
      next = canonical.size;
      canonical.set(key, next);
    }
    map[id] = next;
  }
  const size = canonical.size;
  check(expectedSize === undefined || expectedSize === size, 'E_VALUE', 'options.expectedSize',
    () => `options.expectedSize is ${expectedSize}, but this tokenizer compresses ${tokens.length} raw ids to ${size} canonical ids`);
  return { map, size };
}

function readExpectedSize(options: unknown): number | undefined {
  if (options === undefined) return undefined;
  check(isJson(options), 'E_VALUE', 'options', 'options must be an object when given');
  const expected = options['expectedSize'];
  check(expected === undefined || (Number.isSafeInteger(expected) && (expected as number) >= 0), 'E_VALUE',
    'options.expectedSize', () => `options.expectedSize must be a non-negative integer, got ${String(expected)}`);
  return expected as number | undefined;
}

function parseRoot(tokenizerJson: unknown): Json {
  let root = tokenizerJson;
  if (typeof tokenizerJson === 'string') {
    try {
      root = JSON.parse(tokenizerJson);
    } catch (e) {
      throw new FlashMLAError('E_VALUE', `tokenizerJson is not valid JSON (${(e as Error).message})`, 'tokenizerJson');
    }
  }
  check(isJson(root), 'E_VALUE', 'tokenizerJson', 'tokenizerJson must be the text of a tokenizer.json or its parsed object');
  return root;
}

// Paths are built only on failure (`where`): the vocabulary has 10^5 entries.
function checkString(x: unknown, where: () => string): asserts x is string {
  if (typeof x === 'string' && !LONE_SURROGATE.test(x)) return;
  const path = where();
  throw new FlashMLAError('E_VALUE', `${path} must be a string of whole Unicode characters (no lone surrogate)`, path);
}

function checkId(x: unknown, where: () => string): asserts x is number {
  if (Number.isInteger(x) && (x as number) >= 0 && (x as number) < INT32_MAX) return;
  const path = where();
  throw new FlashMLAError('E_VALUE', `${path} must be an integer id in [0, ${INT32_MAX}), got ${JSON.stringify(x)}`, path);
}

/**
 * The token string of every raw id 0..N−1, as HF tokenizers resolves it: an added token's content,
 * else the model vocabulary's string (docs/engram-tokens.md#ids). N is transformers' len(tokenizer).
 */
function tokenStringsById(root: Json): string[] {
  const model = root['model'];
  check(isJson(model), 'E_VALUE', 'tokenizerJson.model', 'tokenizerJson.model must be an object');
  check(model['type'] === undefined || model['type'] === 'BPE', 'E_UNSUPPORTED', 'tokenizerJson.model.type',
    () => `tokenizerJson.model.type ${JSON.stringify(model['type'])} is not supported (only BPE)`);
  const vocab = model['vocab'];
  check(isJson(vocab), 'E_VALUE', 'tokenizerJson.model.vocab', 'tokenizerJson.model.vocab must be an object (token string → id)');

  const names = Object.keys(vocab); // Object.keys + lookups: Object.entries is ~4x slower on 10^5 keys
  const vocabSize = names.length;
  const tokens = new Array<string>(vocabSize);
  for (const token of names) {
    const id = vocab[token];
    const where = (): string => `tokenizerJson.model.vocab[${JSON.stringify(token)}]`;
    checkString(token, where);
    checkId(id, where);
    // Distinct ids below the entry count are exactly 0..count−1; upstream decodes ids 0..len(tokenizer)−1.
    if (id >= vocabSize) {
      throw new FlashMLAError('E_VALUE',
        `${where()} is ${id}, not below the vocabulary's ${vocabSize} entries: its ids are not 0..${vocabSize - 1}`, where());
    }
    if (tokens[id] !== undefined) {
      throw new FlashMLAError('E_VALUE', `${where()} is ${id}, the id of ${JSON.stringify(tokens[id])} too`, where());
    }
    tokens[id] = token;
  }

  const added = root['added_tokens'] ?? [];
  check(Array.isArray(added), 'E_VALUE', 'tokenizerJson.added_tokens', 'tokenizerJson.added_tokens must be an array');
  const addedIds = new Map<string, number>();
  let normalizedAdded: string | undefined;
  added.forEach((entry: unknown, i) => {
    const path = `tokenizerJson.added_tokens[${i}]`;
    check(isJson(entry), 'E_VALUE', path, `${path} must be an object`);
    const content = entry['content'];
    checkString(content, () => `${path}.content`);
    checkId(entry['id'], () => `${path}.id`);
    // HF skips an empty added token and gives the others ids itself: an earlier added token's id, else
    // the model vocabulary's id, else the next id after the vocabulary (the file's id is only compared).
    if (content === '') return;
    const hfId = addedIds.get(content) ?? (Object.hasOwn(vocab, content) ? (vocab[content] as number) : tokens.length);
    check(entry['id'] === hfId, 'E_VALUE', `${path}.id`,
      () => `${path}.id is ${entry['id']}, but Hugging Face tokenizers gives ${JSON.stringify(content)} the id ${hfId}`);
    addedIds.set(content, hfId);
    tokens[hfId] = content;
    if (entry['normalized'] !== false) normalizedAdded ??= path;
  });
  if (normalizedAdded !== undefined) checkNoOpNormalizer(root['normalizer'], normalizedAdded);
  return tokens;
}

/**
 * Since tokenizers 0.23 an added token with `normalized: true` decodes from its normalised form, before
 * that from its content (docs/engram-tokens.md#added-tokens); only a normalizer that changes nothing
 * makes both the same.
 */
function checkNoOpNormalizer(normalizer: unknown, addedPath: string): void {
  const noOp = (n: unknown, depth: number): boolean => n === null || n === undefined ||
    (depth < MAX_NESTING && isJson(n) && n['type'] === 'Sequence' && Array.isArray(n['normalizers']) &&
      n['normalizers'].every((inner: unknown) => noOp(inner, depth + 1)));
  check(noOp(normalizer, 0), 'E_UNSUPPORTED', 'tokenizerJson.normalizer',
    `tokenizerJson.normalizer is not supported together with a normalized added token (${addedPath}): ` +
    'how such a token decodes depends on the tokenizers version');
}

/** HF decodes one token with no decoder as the token itself (it joins the tokens with ' '). */
function decoderOf(spec: unknown): DecodeOne {
  return spec === null || spec === undefined ? (token) => token : decoderStep(spec, 'tokenizerJson.decoder', 0);
}

function decoderStep(spec: unknown, path: string, depth: number): DecodeOne {
  check(isJson(spec), 'E_VALUE', path, `${path} must be an object`);
  check(depth < MAX_NESTING, 'E_UNSUPPORTED', path, `${path}: decoder Sequences nested deeper than ${MAX_NESTING}`);
  if (spec['type'] === 'ByteLevel') return decodeByteLevel;
  if (spec['type'] === 'Sequence') {
    const list = spec['decoders'];
    check(Array.isArray(list), 'E_VALUE', `${path}.decoders`, `${path}.decoders must be an array`);
    const steps = list.map((d: unknown, i) => decoderStep(d, `${path}.decoders[${i}]`, depth + 1));
    return (token) => steps.reduce((text, step) => step(text), token);
  }
  throw new FlashMLAError('E_UNSUPPORTED',
    `${path} of type ${JSON.stringify(spec['type'])} is not supported (ByteLevel, a Sequence of ByteLevel, or none)`, path);
}
