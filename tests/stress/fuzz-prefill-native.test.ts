// The sparse prefill fuzzer (src/harness/prefill-fuzz.ts) on the native path: the CPU emulator of
// tests/emulator loaded as the FlashMLA build, two emulated devices (mixed-device calls), device
// families on, launchers that exit(1) like FlashMLA's on a failed check
// (docs/flashmla-interface.md#launcher-checks) — so a call that reaches a launcher with bad input
// ends this test process. The emulator's memory checker must stay silent.
import { describe, expect, it } from 'vitest';
import { flashMlaSparseFwd } from '../../src/api.js';
import { FlashMLA } from '../../src/flashmla.js';
import { fuzzDeviceOf } from '../../src/harness/fuzz.js';
import { fuzzSparseFwd } from '../../src/harness/prefill-fuzz.js';
import { useLoggedEmulator } from '../helpers/emulator.js';

const emulator = useLoggedEmulator('fuzz-prefill-native', { twoDevices: true, exitOnBadLaunch: true });

describe.each([{ arch: 'sm90', seed: 21 }, { arch: 'sm100', seed: 22 }] as const)('sparse prefill on an emulated $arch', ({ arch, seed }) => {
  it('seeded hostile calls end in a result matching the oracle or the declared FlashMLAError; the memory checker stays silent', async () => {
    process.env.FLASHMLA_EMU_ARCH = arch;
    const fm = await FlashMLA.open({ backend: 'cuda', library: emulator.library, device: 0 });
    const elsewhere = await FlashMLA.open({ backend: 'cuda', library: emulator.library, device: 1 });
    try {
      const report = await fuzzSparseFwd({
        sparseFwd: (args, options) => fm.flashMlaSparseFwd(args, options),
        reference: (args) => flashMlaSparseFwd(args, { backend: 'reference' }),
        device: fuzzDeviceOf(fm, elsewhere), arch, calls: 250, seed, timeBoundMs: 20_000,
      });
      expect(report.failures).toEqual([]);
      expect(emulator.memoryLog()).toBe('');
      expect(report.results).toBeGreaterThan(30);
      expect(Object.keys(report.errors)).toEqual(expect.arrayContaining(['E_DISPOSED', 'E_DEVICE', 'E_RANGE', 'E_STRIDE', 'E_VALUE']));
    } finally {
      await elsewhere.dispose();
      await fm.dispose();
    }
  }, 600_000);
});
