import { expect, test } from 'vitest';
import { fuzz } from '../src/harness/fuzz.js';
import { referenceDecode } from '../src/reference/index.js';

test('reference backend: 300 seeded hostile calls end in a result matching the oracle or a FlashMLAError', async () => {
  const report = await fuzz({ decode: (args) => referenceDecode(args), calls: 300, seed: 1, timeBoundMs: 20_000 });
  expect(report.failures).toEqual([]);
  expect(report.results).toBeGreaterThan(20);
  expect(Object.keys(report.errors).length).toBeGreaterThan(5);
}, 300_000);
