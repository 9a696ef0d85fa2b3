import { expect, test } from 'vitest';
import { FlashMLAError } from '../../src/errors.js';
import { FlashMLA } from '../../src/flashmla.js';
import { fuzz } from '../../src/harness/fuzz.js';
import { referenceDecode } from '../../src/reference/index.js';

test('reference backend: 400 seeded hostile calls end in a result matching the oracle or the FlashMLAError each mutation declares', async () => {
  const report = await fuzz({
    decode: (args, options) => referenceDecode(args, options), calls: 400, seed: 1, timeBoundMs: 20_000,
    openBuild: (library) => FlashMLA.open({ backend: 'cuda', library }),
  });
  expect(report.failures).toEqual([]);
  expect(report.results).toBeGreaterThan(20);
  expect(Object.keys(report.errors).length).toBeGreaterThan(5);
}, 300_000);

test('the fuzzer fails a backend that answers malformed calls with the wrong error code', async () => {
  const report = await fuzz({
    decode: async () => { throw new FlashMLAError('E_SCHED_META', 'always this'); }, calls: 30, seed: 2, timeBoundMs: 5_000,
  });
  expect(report.failures.some((f) => /wrong error code E_SCHED_META/.test(f.problem))).toBe(true);
  expect(report.failures.some((f) => /valid call rejected/.test(f.problem))).toBe(true);
});
