// A CUDA instance on the CPU emulator of tests/emulator (sm90) for one test file: opened before its
// tests, disposed after.
import { afterAll, beforeAll } from 'vitest';
import { FlashMLA } from '../../src/flashmla.js';
import { buildEmulator } from '../emulator/build.mjs';

/** The file's emulated instance and the emulator library path (read them inside tests and hooks). */
export interface EmulatedInstance {
  readonly fm: FlashMLA;
  readonly library: string;
}

/**
 * Registers the hooks that build the emulator, open the instance and dispose it. With
 * `exitOnStaleError`, FLASHMLA_EMU_EXIT=1 makes a launcher reached with a stale error end the
 * process (as the real runtime would), for the file's duration.
 */
export function useEmulatedInstance(options: { exitOnStaleError?: boolean } = {}): EmulatedInstance {
  let fm: FlashMLA | undefined;
  let library: string | undefined;
  beforeAll(async () => {
    library = await buildEmulator();
    process.env.FLASHMLA_EMU_ARCH = 'sm90';
    if (options.exitOnStaleError === true) process.env.FLASHMLA_EMU_EXIT = '1';
    fm = await FlashMLA.open({ backend: 'cuda', library });
  });
  afterAll(async () => {
    await fm?.dispose();
    if (options.exitOnStaleError === true) delete process.env.FLASHMLA_EMU_EXIT;
  });
  return {
    get fm(): FlashMLA {
      if (fm === undefined) throw new Error('the emulated instance is opened in beforeAll');
      return fm;
    },
    get library(): string {
      if (library === undefined) throw new Error('the emulator is built in beforeAll');
      return library;
    },
  };
}
