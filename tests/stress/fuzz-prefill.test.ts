// The sparse prefill fuzzer (src/harness/prefill-fuzz.ts) on the reference backend, short (scripts/fuzz.mjs
// --mode prefill runs 10,000 calls per backend); tests/stress/fuzz-prefill-native.test.ts runs it on the CUDA path.
import { expect, test } from 'vitest';
import { flashMlaSparseFwd } from '../../src/api.js';
import { FlashMLAError } from '../../src/errors.js';
import { fuzzSparseFwd } from '../../src/harness/prefill-fuzz.js';
import { oraclePrefill } from '../../src/harness/prefill-oracle.js';

const CALLS = Number(process.env.PREFILL_FUZZ_CALLS ?? 400);

test(`reference backend: ${CALLS} seeded hostile sparse prefill calls end in a result matching the oracle or the FlashMLAError (code and argument) each mutation declares`, async () => {
  const report = await fuzzSparseFwd({ sparseFwd: (args, options) => flashMlaSparseFwd(args, { ...options, backend: 'reference' }), calls: CALLS, seed: 11, timeBoundMs: 20_000 });
  expect(report.failures.slice(0, 20)).toEqual([]);
  expect(report.results).toBeGreaterThan(CALLS / 10);
  expect(Object.keys(report.errors)).toEqual(expect.arrayContaining(['E_VALUE', 'E_SHAPE', 'E_DTYPE', 'E_STRIDE', 'E_BUFFER', 'E_RANGE', 'E_UNSUPPORTED']));
}, 300_000);

test('the prefill fuzzer fails a backend that errs with the wrong code or argument, or answers wrongly', async () => {
  const wrongCode = await fuzzSparseFwd({ sparseFwd: async () => { throw new FlashMLAError('E_SCHED_META', 'always this'); }, calls: 40, seed: 2 });
  expect(wrongCode.failures.some((f) => /wrong error code E_SCHED_META/.test(f.problem))).toBe(true);
  expect(wrongCode.failures.some((f) => /valid call rejected/.test(f.problem))).toBe(true);
  const wrongName = await fuzzSparseFwd({ sparseFwd: async () => { throw new FlashMLAError('E_SHAPE', 'names nothing useful', 'nothing'); }, calls: 60, seed: 3 });
  expect(wrongName.failures.some((f) => /error names 'nothing'/.test(f.problem))).toBe(true);
  // Accepts everything and answers with the oracle's result plus a small error in maxLogits.
  const sloppy = await fuzzSparseFwd({
    sparseFwd: async (args) => {
      const r = oraclePrefill(args);
      (r.maxLogits.data as Float32Array).forEach((x, i, a) => { if (Number.isFinite(x)) a[i] = x + 1e-3; });
      return r;
    }, calls: 60, seed: 4,
  });
  expect(sloppy.failures.some((f) => /malformed call was accepted/.test(f.problem))).toBe(true);
  expect(sloppy.failures.some((f) => /maxLogits/.test(f.problem))).toBe(true);
}, 120_000);
