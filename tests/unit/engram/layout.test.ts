import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { describe, expect, it } from 'vitest';
import { FlashMLAError } from '../../../src/errors.js';
import { configFromHf, paperDemoConfig } from '../../../src/engram/config.js';
import { layout, multiplierBound } from '../../../src/engram/layout.js';

const v41 = configFromHf(readFileSync(new URL('../../fixtures/engram/v41-config.json', import.meta.url), 'utf8'));

/** Primality by plain trial division over every odd divisor (independent of the sieve in layout.ts). */
function isPrimeSlow(x: number): boolean {
  if (x < 2) return x === 2;
  if (x % 2 === 0) return x === 2;
  for (let d = 3; d * d <= x; d += 2) if (x % d === 0) return false;
  return true;
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

describe('layout', () => {
  it('gives DeepSeek-V4.1 its primes, offsets, row counts and multipliers', () => {
    const t0 = performance.now();
    const [l1, l14] = layout(v41);
    // A measurement, printed (not asserted): the brief asks for milliseconds.
    console.log(`V4.1 layout computed in ${(performance.now() - t0).toFixed(1)} ms`);
    expect(l1!.layerId).toBe(1);
    expect([...l1!.primes.subarray(0, 8)]).toEqual([16000057, 16000079, 16000081, 16000097, 16000121, 16000129, 16000133, 16000183]);
    expect(l1!.primes[8]).toBe(16000189);
    expect(l1!.primes[15]).toBe(16000321);
    expect(l1!.primes[16]).toBe(16000339);
    expect(l1!.primes[23]).toBe(16000463);
    expect(l14!.primes[0]).toBe(16000477);
    expect(l14!.primes[23]).toBe(16000889);
    expect(l1!.numEmbeddings).toBe(384006168);
    expect(l14!.numEmbeddings).toBe(384016682);
    for (const l of [l1!, l14!]) {
      let sum = 0;
      l.primes.forEach((p, i) => {
        expect(l.offsets[i]).toBe(sum);
        sum += p;
      });
      expect(sum).toBe(l.numEmbeddings);
    }
    expect(multiplierBound(99092)).toBe(46539438283891n);
    expect([...l1!.multipliers]).toEqual([76632096046245n, 4839876093313n, 35959672319349n, 73987337458391n]);
    expect([...l14!.multipliers]).toEqual([67716810739261n, 51510806800915n, 30921347202721n, 82619226485591n]);
  });

  it('draws each order\'s heads as the next unused primes, one seen-set across layers', () => {
    const c = paperDemoConfig({ compressedVocabSize: 1000, vocabSizes: [100, 110], nHeads: 4 });
    const layers = layout(c);
    const all = layers.flatMap((l) => [...l.primes]);
    expect(new Set(all).size).toBe(all.length);
    expect(all.every(isPrimeSlow)).toBe(true);
    // Order 2 of layer 1 starts above 99; order 3 above 109, skipping what order 2 took; layer 15 takes the next ones.
    expect(all).toEqual([101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167, 173, 179]);
    for (const l of layers) for (const m of l.multipliers) expect(m % 2n).toBe(1n);
  });

  it('takes V′ from options over the config, and checks what it must', () => {
    const c = paperDemoConfig();
    expect(errorOf(() => layout(c)).argument).toBe('options.compressedVocabSize');
    expect(errorOf(() => layout(c, { compressedVocabSize: 0 })).argument).toBe('options.compressedVocabSize');
    expect(errorOf(() => layout(c, { compressedVocabSize: 1.5 })).argument).toBe('options.compressedVocabSize');
    const withOption = layout(paperDemoConfig({ compressedVocabSize: 5 }), { compressedVocabSize: 129280 });
    expect(withOption[0]!.multipliers).toEqual(layout(c, { compressedVocabSize: 129280 })[0]!.multipliers);
    const wrongRows = errorOf(() => layout({ ...v41, numEmbeddings: [384006168, 1] }));
    expect([wrongRows.code, wrongRows.argument]).toEqual(['E_VALUE', 'config.numEmbeddings']);
    const tooBig = errorOf(() => layout(paperDemoConfig({ compressedVocabSize: 10, vocabSizes: [2 ** 30, 2 ** 30] })));
    expect([tooBig.code, tooBig.argument]).toEqual(['E_RANGE', 'config.vocabSizes']);
  });

  it('seeds layer L with seed + 10007·L exactly, also past 2^53', () => {
    // numpy: (np.random.default_rng(2**53 - 1 + 10007*5).integers(0, (2**63 - 1)//1000//2, size=3, dtype=np.int64) * 2 + 1)
    const c = paperDemoConfig({ seed: 2 ** 53 - 1, layerIds: [5], maxNgramSize: 3, nHeads: 1, vocabSizes: [100, 100], compressedVocabSize: 1000 });
    expect([...layout(c)[0]!.multipliers]).toEqual([52838345210977n, 6587206424151247n, 1305952806223841n]);
  });

  it('keeps every (V′ − 1)·m below 2^63 (the hash needs exact non-negative products)', () => {
    for (const v of [1, 2, 3, 99092, 2 ** 20 + 7, 2 ** 29, 2 ** 31 - 1]) {
      const [l] = layout(paperDemoConfig({ compressedVocabSize: v, vocabSizes: [1000, 1000] }));
      for (const m of l!.multipliers) {
        expect(m > 0n).toBe(true);
        expect(m * BigInt(v - 1) < 2n ** 63n).toBe(true);
      }
    }
  });
});
