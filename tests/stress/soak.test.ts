// A short soak (scripts/soak.mjs runs the long one): thousands of decode and sparse prefill calls in one process on
// the native path (CPU emulator as the FlashMLA build, no-op and computing kernels) and on the
// reference, with device-resident and host tensors, tensors and instances freed by dispose() and
// by GC. RSS, heap, threads and emulated device memory must stay within the soak's bounds, and
// repeated calls must give bitwise identical results.
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterAll, describe, expect, it } from 'vitest';
import * as flashmla from '../../src/flashmla.js';
import * as cases from '../../src/harness/cases.js';
import * as prefillCases from '../../src/harness/prefill-cases.js';
import * as addon from '../../src/addon.js';
import * as libraryModule from '../../src/cuda/library.js';
import * as locate from '../../src/cuda/locate.js';
import * as schedMeta from '../../src/sched-meta.js';
import * as tensor from '../../src/tensor.js';
import { SPARSE_FWD_TENSOR_KEYS, TENSOR_ARG_KEYS } from '../../src/validate/args.js';
import { soakPhase } from './soak-phase.mjs';

type SoakResult = Awaited<ReturnType<typeof soakPhase>>;
import { buildEmulator } from '../emulator/build.mjs';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
const lib = { ...flashmla, ...cases, ...prefillCases, ...addon, ...libraryModule, ...locate, ...schedMeta, ...tensor, TENSOR_ARG_KEYS, SPARSE_FWD_TENSOR_KEYS, buildEmulator };

afterAll(() => {
  delete process.env.FLASHMLA_EMU_MODE;
  delete process.env.FLASHMLA_EMU_ARCH;
});

const expectFlat = (r: SoakResult): void => {
  expect(r.samples.length).toBeGreaterThanOrEqual(20);
  expect(r.violations, JSON.stringify(r.growth)).toEqual([]);
  expect(r.mismatches).toEqual([]);
};

describe('soak', () => {
  it('native, no-op kernels: 6,000 calls, short-lived instances disposed and dropped beside a long-lived one, memory and threads flat', async () => {
    expectFlat(await soakPhase(lib, { phase: 'noop', calls: 6000, samples: 30, dropMetas: false, gc }));
  }, 300_000);

  it('native, computing kernels: 600 calls, bitwise identical repeats, memory flat', async () => {
    expectFlat(await soakPhase(lib, { phase: 'compute', calls: 600, samples: 20, dropMetas: false, gc }));
  }, 300_000);

  it('reference: 2,000 calls on small shapes, bitwise identical repeats, memory flat', async () => {
    expectFlat(await soakPhase(lib, { phase: 'reference', calls: 2000, samples: 20, gc }));
  }, 300_000);

  it('reference sparse prefill: 200 calls, bitwise identical repeats (out, maxLogits, lse), memory flat', async () => {
    expectFlat(await soakPhase(lib, { phase: 'prefill', calls: 200, samples: 20, gc }));
  }, 300_000);

  it('sched metas dropped without dispose() give their device memory back after GC', async () => {
    expectFlat(await soakPhase(lib, { phase: 'noop', calls: 3000, samples: 20, dropMetas: true, gc }));
  }, 300_000);
});
