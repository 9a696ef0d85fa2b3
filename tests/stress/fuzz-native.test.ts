// The hostile-input fuzzer (src/harness/fuzz.ts) on the native path: the CPU emulator of
// tests/emulator loaded as the FlashMLA build, two emulated devices (mixed-device calls), the
// reference backend sharing sched metas, and launchers that exit(1) like FlashMLA's on a failed
// check (docs/flashmla-interface.md#launcher-checks) — so a call that reaches a launcher with bad input ends this test process.
// The emulator's memory checker must stay silent. A device fault is sticky for the whole process
// (as on a GPU), so a fault in the first arch's run also fails the second one when it opens.
import { describe, expect, it } from 'vitest';
import { FlashMLA } from '../../src/flashmla.js';
import { fuzz, fuzzDeviceOf } from '../../src/harness/fuzz.js';
import { referenceDecode } from '../../src/reference/index.js';
import { useLoggedEmulator } from '../helpers/emulator.js';

const emulator = useLoggedEmulator('fuzz-native', { twoDevices: true, exitOnBadLaunch: true });

describe.each([
  { arch: 'sm90', kinds: ['dense', 'sparse'] as const, seed: 7 },
  // sm100 has no dense kernel: only sparse base cases.
  { arch: 'sm100', kinds: ['sparse'] as const, seed: 8 },
])('native backend on an emulated $arch', ({ arch, kinds, seed }) => {
  it('seeded hostile calls end in a result matching the oracle or a FlashMLAError; the memory checker stays silent', async () => {
    process.env.FLASHMLA_EMU_ARCH = arch;
    const fm = await FlashMLA.open({ backend: 'cuda', library: emulator.library, device: 0 });
    const elsewhere = await FlashMLA.open({ backend: 'cuda', library: emulator.library, device: 1 });
    try {
      const report = await fuzz({
        decode: (args, options) => fm.flashMlaWithKvCache(args, options),
        other: (args) => referenceDecode(args),
        openBuild: (path) => FlashMLA.open({ backend: 'cuda', library: path }),
        device: fuzzDeviceOf(fm, elsewhere), kinds, calls: 250, seed, timeBoundMs: 20_000,
      });
      expect(report.failures).toEqual([]);
      expect(emulator.memoryLog()).toBe('');
      expect(report.results).toBeGreaterThan(20);
      expect(Object.keys(report.errors)).toEqual(expect.arrayContaining(['E_DISPOSED', 'E_DEVICE', 'E_RANGE', 'E_STRIDE', 'E_SCHED_META']));
    } finally {
      await elsewhere.dispose();
      await fm.dispose();
    }
  }, 600_000);
});
