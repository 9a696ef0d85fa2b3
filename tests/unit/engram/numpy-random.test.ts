import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { FlashMLAError } from '../../../src/errors.js';
import { defaultRngIntegers, Pcg64, SeedSequence } from '../../../src/engram/numpy-random.js';

interface Fixture {
  cases: { seed: string; high: string; values: string[] }[];
  sequence: { seed: string; calls: { high: string; values: string[] }[] };
}
// Produced by numpy itself (the `generator` field of the file says the call; numpy 2.x).
const fixture = JSON.parse(
  readFileSync(new URL('../../fixtures/engram/numpy-integers.json', import.meta.url), 'utf8'),
) as Fixture;

describe('numpy-random (SeedSequence → PCG64 → integers)', () => {
  it('reproduces DeepSeek-V4.1 Engram multipliers (seed 10007·layer, V′ = 99092)', () => {
    const bound = ((2n ** 63n - 1n) / 99092n) / 2n;
    expect(bound).toBe(46539438283891n);
    const m = (layer: number) => defaultRngIntegers(10007 * layer, bound, 4).map((r) => 2n * r + 1n);
    expect(m(1)).toEqual([76632096046245n, 4839876093313n, 35959672319349n, 73987337458391n]);
    expect(m(14)).toEqual([67716810739261n, 51510806800915n, 30921347202721n, 82619226485591n]);
  });

  it(`matches numpy on ${fixture.cases.length} (seed, high) cases: 32- and 64-bit paths, multi-word seeds`, () => {
    for (const c of fixture.cases) {
      const got = defaultRngIntegers(BigInt(c.seed), BigInt(c.high), c.values.length);
      expect(got.map(String), `seed ${c.seed}, high ${c.high}`).toEqual(c.values);
    }
  });

  it('keeps the pending upper 32 bits between calls on one generator, as numpy does', () => {
    const g = new Pcg64(new SeedSequence(BigInt(fixture.sequence.seed)));
    for (const call of fixture.sequence.calls) {
      expect(g.integers(BigInt(call.high), call.values.length).map(String)).toEqual(call.values);
    }
  });

  it('draws within [0, high) and rejects bounds numpy rejects', () => {
    const values = defaultRngIntegers(3, 7n, 200);
    expect(values.every((v) => v >= 0n && v < 7n)).toBe(true);
    expect(new Set(values).size).toBe(7);
    const argumentOf = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        expect(e).toBeInstanceOf(FlashMLAError);
        return (e as FlashMLAError).argument;
      }
      return 'no error';
    };
    expect(argumentOf(() => defaultRngIntegers(3, 0n, 1))).toBe('high');
    expect(argumentOf(() => defaultRngIntegers(3, 2n ** 63n, 1))).toBe('high');
    expect(argumentOf(() => defaultRngIntegers(3, 5n, -1))).toBe('size');
    expect(argumentOf(() => new SeedSequence(-1))).toBe('seed');
    expect(argumentOf(() => new SeedSequence(0.5))).toBe('seed');
  });
});
