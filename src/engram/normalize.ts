/**
 * Engram's text normaliser for tokenizer compression (docs/engram-tokens.md#the-normaliser), written to
 * give what Hugging Face tokenizers' `normalizers.Sequence([NFKC, NFD, StripAccents, Lowercase,
 * Replace(/[ \t\r\n]+/, ' '), Replace(/^ $/, U+E000), Strip, Replace(U+E000, ' ')])` gives, which is the
 * sequence `CompressedTokenizer` builds in deepseek-ai/Engram engram_demo_v1.py.
 */
import { UNICODE9_MARK_RUNS, UNICODE9_UNASSIGNED_RUNS } from './unicode9.js';

/** A regular-expression class body matching the code points of flat [first, last, ...] runs. */
function classOf(runs: readonly number[]): string {
  let body = '';
  for (let i = 0; i < runs.length; i += 2) {
    body += `\\u{${runs[i]!.toString(16)}}-\\u{${runs[i + 1]!.toString(16)}}`;
  }
  return body;
}

/** Marks (Mn, Mc, Me) as HF's StripAccents knows them: Unicode 9.0.0 (docs/engram-tokens.md#unicode-version). */
const MARKS = new RegExp(`[${classOf(UNICODE9_MARK_RUNS)}]+`, 'gu');
/** Code points Unicode 9.0.0 had not assigned: HF's NFKC/NFD leave them as they are. */
const NEWER_THAN_UNICODE9 = new RegExp(`[${classOf(UNICODE9_UNASSIGNED_RUNS)}]`, 'u');
const NEWER_THAN_UNICODE9_SPLIT = new RegExp(`([${classOf(UNICODE9_UNASSIGNED_RUNS)}])`, 'u');

/**
 * Rust's `char::is_whitespace` (the White_Space property), which HF's Strip uses. Not JavaScript's
 * `trim()` set: that one strips U+FEFF, which is not White_Space, and keeps U+0085, which is.
 */
const WHITE_SPACE = '\\t\\n\\v\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
const EDGE_WHITE_SPACE = new RegExp(`^[${WHITE_SPACE}]+|[${WHITE_SPACE}]+$`, 'gu');
const SPACE_RUNS = /[ \t\r\n]+/g;
/** Most tokens: NFKC and NFD leave ASCII as it is, and it has no marks and no Σ. */
const ASCII = /^[\0-\x7f]*$/;
const SENTINEL = '\uE000';
const CAPITAL_SIGMA = '\u03a3';

/**
 * `form` normalisation as HF's Unicode 9.0.0 tables do it. A code point Unicode 9.0.0 had not assigned
 * has, there, no decomposition, combining class 0 and no composition, so it splits the text into parts
 * that normalise on their own; within a part every code point was assigned in 9.0.0, where Unicode's
 * normalisation stability makes today's tables (String.prototype.normalize) give the same result.
 */
function normalizeAsUnicode9(text: string, form: 'NFKC' | 'NFD'): string {
  if (!NEWER_THAN_UNICODE9.test(text)) return text.normalize(form);
  // With a capturing group, split keeps each separator at the odd indices.
  return text.split(NEWER_THAN_UNICODE9_SPLIT).map((part, i) => (i % 2 === 1 ? part : part.normalize(form))).join('');
}

/**
 * HF's Lowercase maps each char on its own (Rust `char::to_lowercase`): no context, so Σ is always σ.
 * JavaScript's toLowerCase applies the one contextual rule of Unicode's default case mapping, Final_Sigma
 * (Σ → ς at the end of a word); lowering each code point alone removes the context.
 */
function lowercasePerChar(text: string): string {
  if (!text.includes(CAPITAL_SIGMA)) return text.toLowerCase();
  let out = '';
  for (const ch of text) out += ch.toLowerCase();
  return out;
}

/**
 * The normalised form of `text` under Engram's compression normaliser (may be empty):
 * NFKC, NFD, drop marks, lowercase per char, runs of [ \t\r\n] → ' ', a text that is exactly ' ' → U+E000,
 * strip White_Space at both ends, U+E000 → ' '.
 */
export function normalizeForEngram(text: string): string {
  let s = ASCII.test(text) ? text.toLowerCase()
    : lowercasePerChar(normalizeAsUnicode9(normalizeAsUnicode9(text, 'NFKC'), 'NFD').replace(MARKS, ''));
  s = s.replace(SPACE_RUNS, ' ');
  // HF's `^ $` is an Oniguruma (Ruby syntax) pattern whose anchors are line anchors; no '\n' is left
  // after the replacement above, so they only match at the ends: the text is exactly one space.
  if (s === ' ') s = SENTINEL;
  return s.replace(EDGE_WHITE_SPACE, '').replaceAll(SENTINEL, ' ');
}
