import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { loadAddon } from '../../../src/addon.js';
import { FlashMLAError } from '../../../src/errors.js';
import { configFromHf, paperDemoConfig, type EngramConfig } from '../../../src/engram/config.js';
import { NgramHasher, type HashTier } from '../../../src/engram/hash.js';
import { HashSession } from '../../../src/engram/hash-session.js';
import { nativeHashTier } from '../../../src/engram/hash-native.js';
import { layout, type EngramLayerLayout } from '../../../src/engram/layout.js';
import type { TokenMap } from '../../../src/engram/types.js';

const v41 = configFromHf(readFileSync(new URL('../../fixtures/engram/v41-config.json', import.meta.url), 'utf8'));
const hasNative = typeof nativeHashTier() === 'function';
const tiers: HashTier[] = hasNative ? ['js', 'native'] : ['js'];

/**
 * The hash written out plainly with BigInt (docs/engram-hashing.md#hash): canonical ids and dead
 * flags of the whole sequence → [t][layer][(order, head)] row ids.
 */
function oracle(layers: readonly EngramLayerLayout[], n: number, k: number, pad: number, ids: readonly number[], dead: readonly boolean[]): number[] {
  const out: number[] = [];
  for (let t = 0; t < ids.length; t++) {
    const x: bigint[] = [];
    let blocked = false;
    for (let s = 0; s < n; s++) {
      blocked = blocked || t - s < 0 || dead[t - s]!;
      x.push(BigInt(blocked ? pad : ids[t - s]!));
    }
    for (const l of layers) {
      let mix = 0n;
      for (let s = 0; s < n; s++) {
        mix ^= x[s]! * l.multipliers[s]!;
        for (let h = 0; s > 0 && h < k; h++) {
          const col = (s - 1) * k + h;
          out.push(Number(mix % BigInt(l.primes[col]!)) + l.offsets[col]!);
        }
      }
    }
  }
  return out;
}

/** mulberry32: a small seeded generator for the generated cases. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function errorOf(f: () => unknown): FlashMLAError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(FlashMLAError);
    return e as FlashMLAError;
  }
  throw new Error('expected a FlashMLAError');
}

/** A random case: canonical ids below `vocab` (some at the edges) and dead flags at rate `deadRate`. */
function randomCase(rand: () => number, length: number, vocab: number, deadRate: number) {
  const ids = Array.from({ length }, () => {
    const u = rand();
    return u < 0.05 ? vocab - 1 : u < 0.1 ? 0 : Math.floor(rand() * vocab);
  });
  const dead = Array.from({ length }, () => rand() < deadRate);
  return { ids, dead };
}

/** Configs that exercise the tiers' paths: V4.1; primes above 2^26 with V′ = 2^29 (the JS tier's two-step reduction, largest ids); N = 2. */
const bigPrimes: EngramConfig = paperDemoConfig({ layerIds: [3, 9], nHeads: 2, vocabSizes: [200_000_000, 300_000_000], compressedVocabSize: 2 ** 29, padTokenId: 2 ** 29 - 1 });
const bigrams: EngramConfig = paperDemoConfig({ layerIds: [0], maxNgramSize: 2, nHeads: 3, vocabSizes: [50], compressedVocabSize: 7, padTokenId: 0 });
const configs: [string, EngramConfig][] = [['V4.1', v41], ['primes > 2^26, V′ = 2^29', bigPrimes], ['N = 2', bigrams]];

describe('NgramHasher', () => {
  it(`picks a tier: ${hasNative ? 'native (the addon has the hash)' : 'js (the addon lacks the hash)'} for auto`, () => {
    expect(new NgramHasher(v41).tier).toBe(hasNative ? 'native' : 'js');
    expect(new NgramHasher(v41, { tier: 'js' }).tier).toBe('js');
  });

  for (const tier of tiers) {
    it(`${tier}: reproduces DeepSeek-V4.1's golden row ids`, () => {
      const hasher = new NgramHasher(v41, { tier });
      expect(hasher.idsPerToken).toBe(48);
      expect(hasher.padId).toBe(2);
      const out = hasher.hash(new Int32Array([0, 5, 17, 99091, 42]));
      const row = (t: number, layer: number) => [...out.subarray(t * 48 + layer * 24, t * 48 + layer * 24 + 24)];
      expect(row(0, 0).slice(0, 8)).toEqual([5702652, 24393184, 39183301, 61503783, 78984481, 90144770, 103724983, 121476532]);
      expect(row(4, 0)).toEqual([13131409, 22107638, 46286683, 48259159, 69021570, 87090089, 104214597, 115341818,
        140379165, 149277239, 165642503, 181109295, 204355334, 208790699, 224459487, 255267031,
        266257160, 273065001, 303658883, 319159092, 334901315, 350627374, 352036528, 370256351]);
      expect(row(4, 1)).toEqual([3275938, 25911066, 45539186, 51149320, 70912410, 90856326, 98488218, 121693602,
        142937982, 146260492, 166575506, 177528846, 204891203, 208129663, 236915400, 243821763, 257163254, 277681619,
        291909306, 304972157, 327821209, 339946539, 354581237, 382145690]);
    });
  }

  for (const [name, config] of configs) {
    it(`${name}: every tier equals the BigInt oracle on random ids and masks`, () => {
      const rand = random(17);
      const hashers = tiers.map((tier) => new NgramHasher(config, { tier }));
      const { layout: layers, padId, compressedVocabSize } = hashers[0]!;
      for (let round = 0; round < 6; round++) {
        const { ids, dead } = randomCase(rand, 1 + Math.floor(rand() * 120), compressedVocabSize, [0, 0.1, 0.5][round % 3]!);
        const expected = oracle(layers, config.maxNgramSize, config.nHeads, padId, ids, dead);
        for (const h of hashers) expect([...h.hash(ids, { mask: dead })], `${h.tier} round ${round}`).toEqual(expected);
      }
    });
  }

  for (const tier of tiers) {
    it(`${tier}: chunked and token-by-token sessions, history and rollback equal hashing the whole sequence`, () => {
      const rand = random(99);
      const hasher = new NgramHasher(v41, { tier });
      const per = hasher.idsPerToken;
      const { ids, dead } = randomCase(rand, 300, 99092, 0.08);
      const whole = hasher.hash(ids, { mask: dead });

      const chunked = hasher.session();
      const parts: Int32Array[] = [];
      for (let at = 0; at < ids.length;) {
        const end = Math.min(ids.length, at + Math.floor(rand() * 9));
        parts.push(chunked.append(ids.slice(at, end), { mask: dead.slice(at, end) }));
        at = end;
      }
      expect(chunked.length).toBe(300);
      expect(Int32Array.from(parts.flatMap((p) => [...p]))).toEqual(whole);

      const single = hasher.session();
      ids.forEach((id, t) => expect(single.append([id], { mask: [dead[t]!] })).toEqual(whole.subarray(t * per, (t + 1) * per)));

      for (const at of [1, 2, 3, 4, 150]) {
        const history = { ids: ids.slice(0, at), mask: dead.slice(0, at) };
        expect(hasher.hash(ids.slice(at), { history, mask: dead.slice(at) })).toEqual(whole.subarray(at * per));
        const tail = chunked.fork();
        tail.rollback(300 - at);
        const t = tail.tail();
        expect(hasher.hash(ids.slice(at), { history: t, mask: dead.slice(at), compressed: true })).toEqual(whole.subarray(at * per));
      }

      // Speculative decoding: a draft of 5 tokens is rejected after 2, the real tokens follow.
      const spec = hasher.session();
      spec.append(ids.slice(0, 100), { mask: dead.slice(0, 100) });
      spec.append([7, 8, 9, 10, 11]);
      spec.rollback(3);
      expect(spec.length).toBe(102);
      const rest = spec.append(ids.slice(102), { mask: dead.slice(102) });
      const expected = hasher.hash([...ids.slice(0, 100), 7, 8, ...ids.slice(102)], { mask: [...dead.slice(0, 100), false, false, ...dead.slice(102)] });
      expect(rest).toEqual(expected.subarray(102 * per));

      const branch = spec.fork();
      branch.append([1, 2, 3]);
      expect(spec.length).toBe(300);
      expect(branch.length).toBe(303);
      spec.reset();
      expect(spec.length).toBe(0);
      expect(spec.append(ids.slice(0, 10), { mask: dead.slice(0, 10) })).toEqual(whole.subarray(0, 10 * per));
    });
  }

  it('blocks a dead token\'s own slot and every slot behind it, as a sequence start does (SGLang V4.1 rule)', () => {
    for (const tier of tiers) {
      const h = new NgramHasher(v41, { tier });
      const per = h.idsPerToken;
      const at = (out: Int32Array, t: number) => [...out.subarray(t * per, (t + 1) * per)];
      const out = h.hash([10, 11, 12, 13, 14, 15], { mask: [false, false, true, false, false, false] });
      // A dead token reads an all-pad window: the ids of the pad token at a sequence start.
      expect(at(out, 2)).toEqual(at(h.hash([2]), 0));
      // After it, look-backs stop at it: like a sequence starting right after the dead token.
      expect(at(out, 3)).toEqual(at(h.hash([13]), 0));
      expect(at(out, 5)).toEqual(at(h.hash([13, 14, 15]), 2));
      // Before it, nothing changes.
      expect(at(out, 1)).toEqual(at(h.hash([10, 11]), 1));
      // A window reaching past N − 1 tokens no longer sees it.
      const later = h.hash([10, 11, 12, 13, 14, 15, 16], { mask: [false, false, true, false, false, false, false] });
      expect(at(later, 6)).toEqual(at(h.hash([12, 13, 14, 15, 16]), 4));
    }
  });

  it('maps raw ids through a token map (pad = map[padTokenId]) unless compressed', () => {
    const rand = random(5);
    const map = Int32Array.from({ length: 130000 }, () => Math.floor(rand() * 99092));
    const tokenMap: TokenMap = { map, size: 99092 };
    const raw = Array.from({ length: 50 }, () => Math.floor(rand() * map.length));
    const dead = raw.map((_, i) => i % 11 === 3);
    const canonical = raw.map((r) => map[r]!);
    for (const tier of tiers) {
      const hasher = new NgramHasher(v41, { tokenMap, tier });
      expect(hasher.padId).toBe(map[2]);
      const expected = oracle(hasher.layout, 4, 8, map[2]!, canonical, dead);
      expect([...hasher.hash(raw, { mask: Uint8Array.from(dead, Number) })]).toEqual(expected);
      expect([...hasher.hash(canonical, { mask: dead, compressed: true })]).toEqual(expected);
      expect([...hasher.session().append(Int32Array.from(raw), { mask: dead })]).toEqual(expected);
    }
    expect(errorOf(() => new NgramHasher(v41, { tokenMap: { map, size: 99091 } })).argument).toBe('options.tokenMap');
    expect(errorOf(() => new NgramHasher(v41, { tokenMap: { map: Int32Array.of(0, 99092, 1), size: 99092 } })).argument).toBe('options.tokenMap.map[1]');
    const e = errorOf(() => new NgramHasher(v41, { tokenMap }).hash([1, 130000]));
    expect([e.code, e.argument]).toEqual(['E_RANGE', 'ids[1]']);
  });

  it('accepts a precomputed layout and checks it', () => {
    const layers = layout(v41);
    expect(new NgramHasher(v41, { layout: layers, tier: 'js' }).hash([1, 2, 3])).toEqual(new NgramHasher(v41, { tier: 'js' }).hash([1, 2, 3]));
    expect(errorOf(() => new NgramHasher(v41, { layout: layers.slice(1) })).argument).toBe('options.layout');
    const odd = { ...layers[0]!, multipliers: BigInt64Array.of(1n, 2n, 3n, 2n ** 62n) };
    expect(errorOf(() => new NgramHasher(v41, { layout: [odd, layers[1]!] })).argument).toBe('options.layout[0].multipliers[3]');
    const shortPrimes = { ...layers[1]!, primes: layers[1]!.primes.subarray(1) };
    expect(errorOf(() => new NgramHasher(v41, { layout: [layers[0]!, shortPrimes] })).argument).toBe('options.layout[1].primes');
  });

  it('hashes nothing into an empty array', () => {
    for (const tier of tiers) {
      expect(new NgramHasher(v41, { tier }).hash([]).length).toBe(0);
      expect(new NgramHasher(v41, { tier }).session().append(new Int32Array(0)).length).toBe(0);
    }
  });

  it('names every bad argument', () => {
    const hasher = new NgramHasher(v41);
    const cases: [() => unknown, string, string][] = [
      [() => hasher.hash([1, 1.5]), 'E_VALUE', 'ids[1]'],
      [() => hasher.hash([1, Number.NaN]), 'E_VALUE', 'ids[1]'],
      [() => hasher.hash(['1' as unknown as number]), 'E_VALUE', 'ids[0]'],
      [() => hasher.hash([0, 99092]), 'E_RANGE', 'ids[1]'],
      [() => hasher.hash(Int32Array.of(3, -1)), 'E_RANGE', 'ids[1]'],
      [() => hasher.hash(new Float64Array(2) as unknown as Int32Array), 'E_DTYPE', 'ids'],
      [() => hasher.hash([1, 2], { mask: [true] }), 'E_SHAPE', 'options.mask'],
      [() => hasher.hash([1, 2], { mask: [true, 1 as unknown as boolean] }), 'E_VALUE', 'options.mask[1]'],
      [() => hasher.hash([1, 2], { mask: new Uint16Array(2) as unknown as Uint8Array }), 'E_DTYPE', 'options.mask'],
      [() => hasher.hash([1], { history: { ids: [4, 99092] } }), 'E_RANGE', 'options.history.ids[1]'],
      [() => hasher.hash([1], { history: { ids: [4], mask: [] } }), 'E_SHAPE', 'options.history.mask'],
      [() => hasher.hash([1], { history: { ids: [4, 5, 6, 7, 8], mask: [false, 'no' as never, false, false, false] } }), 'E_VALUE', 'options.history.mask[1]'],
      [() => hasher.hash([1], { history: { ids: [-4, 5, 6, 7, 8] } }), 'E_RANGE', 'options.history.ids[0]'],
      [() => hasher.hash([1], { history: 5 as never }), 'E_VALUE', 'options.history'],
      [() => hasher.hash([1], null as never), 'E_VALUE', 'options'],
      [() => hasher.hash([1], { compressed: 1 as never }), 'E_VALUE', 'options.compressed'],
      [() => hasher.session().append([1], { compressed: 'yes' as never }), 'E_VALUE', 'options.compressed'],
      [() => hasher.session().rollback(1), 'E_RANGE', 'n'],
      [() => hasher.hash(new Array<number>(2 ** 32 - 1)), 'E_RANGE', 'ids'],
      [() => hasher.session().append(new Array<number>(2 ** 32 - 1)), 'E_RANGE', 'ids'],
      [() => hasher.session().rollback(-1), 'E_RANGE', 'n'],
      [() => hasher.session().append([5.5]), 'E_VALUE', 'ids[0]'],
      [() => new NgramHasher(v41, { tier: 'gpu' as never }), 'E_VALUE', 'options.tier'],
      [() => new HashSession({} as never, (() => undefined) as never), 'E_VALUE', 'HashSession'],
      [() => new NgramHasher(paperDemoConfig()), 'E_VALUE', 'config.compressedVocabSize'],
      [() => new NgramHasher(paperDemoConfig({ compressedVocabSize: 2 ** 29 + 1 })), 'E_UNSUPPORTED', 'config.compressedVocabSize'],
      [() => new NgramHasher(paperDemoConfig({ compressedVocabSize: 2 })), 'E_RANGE', 'config.padTokenId'],
      [() => new NgramHasher({ ...v41, nHeads: 0 }), 'E_VALUE', 'config.nHeads'],
    ];
    for (const [f, code, argument] of cases) {
      const e = errorOf(f);
      expect([e.code, e.argument], argument).toEqual([code, argument]);
    }
    const session = hasher.session();
    session.append([1, 2]);
    errorOf(() => session.append([3, -4]));
    expect(session.length).toBe(2);
  });

  it.skipIf(!hasNative)('native: the addon re-checks every length and value before touching memory', () => {
    type Native = new (...a: unknown[]) => { hash(...a: unknown[]): void };
    const Hasher = (loadAddon() as { ok: true; addon: { EngramHasher: Native } }).addon.EngramHasher;
    const good: unknown[] = [0, 10, BigInt64Array.of(3n, 5n), Int32Array.of(7), Int32Array.of(0), 1, 2, 1];
    const hasher = new Hasher(...good);
    const call: unknown[] = [Int32Array.of(1, 2), 0, new Int32Array(2)];
    expect(() => hasher.hash(...call)).not.toThrow();
    const badLayout: [number, unknown][] = [[0, 10], [0, -1], [1, 0], [1, 1.5], [2, BigInt64Array.of(3n)], [2, BigInt64Array.of(3n, -5n)],
      [2, BigInt64Array.of(3n, 0n)], [3, Int32Array.of(1)], [3, Int32Array.of(7, 7)], [3, new Float64Array(1)], [4, Int32Array.of(2 ** 31 - 3)],
      [4, Int32Array.of(-1)], [5, 2], [6, 1], [7, 2], [7, 'x']];
    for (const [i, value] of badLayout) {
      const args = [...good];
      args[i] = value;
      expect(errorOf(() => new Hasher(...args)).code, `constructor argument ${i}`).toBe('E_INTERNAL');
    }
    expect(errorOf(() => new Hasher(...good.slice(0, 7))).code).toBe('E_INTERNAL');
    const badCall: [number, unknown][] = [[0, [1, 2]], [0, Int32Array.of(1, 10)], [0, Int32Array.of(-2, 1)], [1, 3], [1, -1], [1, 0.5],
      [2, new Int32Array(1)], [2, new Int32Array(3)], [2, new Uint32Array(2)]];
    for (const [i, value] of badCall) {
      const args = [...call];
      args[i] = value;
      expect(errorOf(() => hasher.hash(...args)).code, `hash argument ${i}`).toBe('E_INTERNAL');
    }
    expect(errorOf(() => hasher.hash(...call.slice(0, 2))).code).toBe('E_INTERNAL');
  });
});
