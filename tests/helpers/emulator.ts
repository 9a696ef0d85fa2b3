// The CPU emulator of tests/emulator for one test file: a CUDA instance on it (sm90), opened before
// the file's tests and disposed after; or the setup of a native fuzz file.
import { readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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

/** The emulator build of a test file and what its memory checker logged so far. */
export interface LoggedEmulator {
  readonly library: string;
  /** The memory checker's and device faults' log ('' when silent). */
  memoryLog(): string;
}

/** How a file's emulator runs: see {@link useLoggedEmulator}. */
export interface LoggedEmulatorOptions {
  /** FLASHMLA_EMU_ARCH from the start (default: the emulator's, sm90). */
  arch?: 'sm90' | 'sm100';
  /** Two emulated devices, for mixed-device calls (default: one). */
  twoDevices?: boolean;
  /** FLASHMLA_EMU_EXIT=1: a launcher reached with bad input ends the process, as FlashMLA's exit(1) does (default: off). */
  exitOnBadLaunch?: boolean;
}

/**
 * Registers the hooks of a file that checks the emulator's memory checker: the emulator built, a
 * fresh log, the options' environment; all undone after the file (FLASHMLA_EMU_ARCH too, which
 * tests may set).
 */
export function useLoggedEmulator(name: string, options: LoggedEmulatorOptions = {}): LoggedEmulator {
  const log = join(tmpdir(), `flashmla-${name}-${process.pid}.log`);
  let library: string | undefined;
  beforeAll(async () => {
    library = await buildEmulator();
    rmSync(log, { force: true });
    process.env.FLASHMLA_EMU_LOG = log;
    if (options.arch !== undefined) process.env.FLASHMLA_EMU_ARCH = options.arch;
    if (options.twoDevices === true) process.env.FLASHMLA_EMU_DEVICES = '2';
    if (options.exitOnBadLaunch === true) process.env.FLASHMLA_EMU_EXIT = '1';
  });
  afterAll(() => {
    for (const v of ['FLASHMLA_EMU_LOG', 'FLASHMLA_EMU_DEVICES', 'FLASHMLA_EMU_EXIT', 'FLASHMLA_EMU_ARCH']) delete process.env[v];
    rmSync(log, { force: true });
  });
  return {
    get library(): string {
      if (library === undefined) throw new Error('the emulator is built in beforeAll');
      return library;
    },
    memoryLog(): string {
      try {
        return readFileSync(log, 'utf8');
      } catch {
        return '';
      }
    },
  };
}
