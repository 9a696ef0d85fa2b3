// The sparse prefill fuzzer (src/harness/prefill-fuzz.ts) on the native path: the CPU emulator of
// tests/emulator loaded as the FlashMLA build, two emulated devices (mixed-device calls), device
// families on, launchers that exit(1) like FlashMLA's on a failed check
// (docs/flashmla-interface.md#launcher-checks) — so a call that reaches a launcher with bad input
// ends this test process. The emulator's memory checker must stay silent. Skipped while the build
// reports no sparse prefill feature (a CUDA path without prefill launchers).
import { readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { flashMlaSparseFwd } from '../../src/api.js';
import { FlashMLA } from '../../src/flashmla.js';
import type { FuzzDevice } from '../../src/harness/fuzz.js';
import { fuzzSparseFwd } from '../../src/harness/prefill-fuzz.js';
import type { DeviceTensorMeta } from '../../src/tensor.js';
import { buildEmulator } from '../emulator/build.mjs';

const log = join(tmpdir(), `flashmla-fuzz-prefill-native-${process.pid}.log`);
let library: string;

beforeAll(async () => {
  library = await buildEmulator();
  rmSync(log, { force: true });
  process.env.FLASHMLA_EMU_LOG = log;
  process.env.FLASHMLA_EMU_DEVICES = '2';
  process.env.FLASHMLA_EMU_EXIT = '1';
});

afterAll(() => {
  for (const v of ['FLASHMLA_EMU_LOG', 'FLASHMLA_EMU_DEVICES', 'FLASHMLA_EMU_EXIT', 'FLASHMLA_EMU_ARCH']) delete process.env[v];
  rmSync(log, { force: true });
});

const memoryLog = (): string => {
  try {
    return readFileSync(log, 'utf8');
  } catch {
    return '';
  }
};

describe.each([{ arch: 'sm90', seed: 21 }, { arch: 'sm100', seed: 22 }] as const)('sparse prefill on an emulated $arch', ({ arch, seed }) => {
  it('seeded hostile calls end in a result matching the oracle or the declared FlashMLAError; the memory checker stays silent', async (ctx) => {
    process.env.FLASHMLA_EMU_ARCH = arch;
    const fm = await FlashMLA.open({ backend: 'cuda', library, device: 0 });
    const elsewhere = await FlashMLA.open({ backend: 'cuda', library, device: 1 });
    try {
      if (!('prefillV32' in (await fm.info()).features)) {
        ctx.skip();
        return;
      }
      const device: FuzzDevice = {
        upload: (t) => fm.upload(t),
        download: (t: DeviceTensorMeta) => fm.download(t),
        wrap: (address, meta) => fm.wrap(address, meta),
        uploadElsewhere: (t) => elsewhere.upload(t),
      };
      const report = await fuzzSparseFwd({
        sparseFwd: (args, options) => fm.flashMlaSparseFwd(args, options),
        reference: (args) => flashMlaSparseFwd(args, { backend: 'reference' }),
        device, arch, calls: 250, seed, timeBoundMs: 20_000,
      });
      expect(report.failures).toEqual([]);
      expect(memoryLog()).toBe('');
      expect(report.results).toBeGreaterThan(30);
      expect(Object.keys(report.errors)).toEqual(expect.arrayContaining(['E_DISPOSED', 'E_DEVICE', 'E_RANGE', 'E_STRIDE', 'E_VALUE']));
    } finally {
      await elsewhere.dispose();
      await fm.dispose();
    }
  }, 600_000);
});
