// The CI emulator (tests/emulator/, docs/architecture.md#ci-emulator): it builds, exports exactly FlashMLA's launcher
// symbols and the CUDA functions the addon resolves, and its C++ self-test (scheduler vs
// docs/flashmla-interface.md#tile-scheduler, memory checker and sticky faults, numerics vs float64) passes.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildEmulator } from '../emulator/build.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const bindingDir = join(root, 'binding');

function launcherNames(): string[] {
  const header = readFileSync(join(bindingDir, 'flashmla_symbols.h'), 'utf8');
  return [...header.matchAll(/"(_Z[^"]+)"/g)].map((m) => m[1]!).filter((n) => !n.startsWith('36'));
}

function cudaFunctionNames(): string[] {
  const header = readFileSync(join(bindingDir, 'cuda_runtime_abi.h'), 'utf8');
  const table = [...header.matchAll(/X\(\w+, "(cuda\w+)"/g)].map((m) => m[1]!);
  return [...table, 'cudaGetDeviceProperties_v2', 'cudaGetDeviceProperties'];
}

function definedDynamicSymbols(lib: string): string[] {
  const out = execFileSync('nm', ['-D', '--defined-only', lib], { encoding: 'utf8' });
  return out.split('\n').map((l) => l.trim().split(/\s+/)[2]).filter((s): s is string => s !== undefined);
}

let lib: string;
let work: string;
let driver: string;

beforeAll(async () => {
  lib = (await buildEmulator()) as string;
  work = mkdtempSync(join(tmpdir(), 'flashmla-emu-'));
  driver = join(work, 'selftest');
  execFileSync('g++', ['-std=c++20', '-O2', '-I', bindingDir, join(root, 'tests/emulator/selftest.cc'), '-o', driver, '-ldl']);
});

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('emulator library', () => {
  it('exports exactly the 12 launcher names of flashmla_symbols.h', () => {
    const names = launcherNames();
    expect(names).toHaveLength(12);
    const exported = definedDynamicSymbols(lib).filter((s) => /^_ZN(4sm90|5sm100|4smxx)/.test(s));
    expect(exported.sort()).toEqual([...names].sort());
  });

  it('exports every CUDA runtime function the addon resolves', () => {
    const exported = new Set(definedDynamicSymbols(lib));
    const wanted = cudaFunctionNames();
    expect(wanted.length).toBeGreaterThan(20);
    expect(wanted.filter((n) => !exported.has(n))).toEqual([]);
  });

  it('needs no library beyond the C/C++ runtime', () => {
    const dyn = execFileSync('readelf', ['-d', lib], { encoding: 'utf8' });
    const needed = [...dyn.matchAll(/Shared library: \[([^\]]+)\]/g)].map((m) => m[1]!);
    const allowed = /^(libstdc\+\+|libm|libc|libgcc_s|libpthread|ld-linux[-\w]*)\.so/;
    // An AddressSanitizer build (FLASHMLA_EMU_SANITIZE=address, see build.mjs) also needs its runtime.
    const sanitizer = process.env.FLASHMLA_EMU_SANITIZE === 'address' ? /^libasan\.so/ : null;
    expect(needed.filter((n) => !allowed.test(n) && !sanitizer?.test(n))).toEqual([]);
  });

  it('returns the same path without rebuilding when nothing changed', async () => {
    const before = readFileSync(lib);
    expect(await buildEmulator()).toBe(lib);
    expect(readFileSync(lib).equals(before)).toBe(true);
  });
});

describe('emulator self-test', () => {
  const runDriver = (test: string, env: Record<string, string> = {}) =>
    spawnSync(driver, [lib, test], { encoding: 'utf8', env: { ...process.env, ...env } });

  it('scheduler agrees with docs/flashmla-interface.md#tile-scheduler + docs/flashmla-interface.md#scheduler-leftover on random cases', () => {
    const r = runDriver('sched');
    expect(r.stdout).toBe('sched: ok\n');
    expect(r.status).toBe(0);
  });

  it('memory checker reports an out-of-bounds read as a sticky fault, logged', () => {
    const log = join(work, 'emu.log');
    const r = runDriver('memory', { FLASHMLA_EMU_LOG: log });
    expect(r.stdout).toBe('memory: ok\n');
    expect(r.status).toBe(0);
    const lines = readFileSync(log, 'utf8').trim().split('\n');
    expect(lines.some((l) => /illegal memory access in kernel get_mla_metadata_kernel: read of 4 bytes/.test(l))).toBe(true);
    expect(lines.some((l) => /device trap in kernel flash_fwd_splitkv_mla_kernel/.test(l))).toBe(true);
  });

  it("dense and sparse results match a float64 computation within FlashMLA's tolerances", () => {
    const r = runDriver('numeric');
    expect(r.stdout).toBe('numeric: ok\n');
    expect(r.status).toBe(0);
  });

  it('refuses a launch on a device its GPU code cannot run on, as the runtime does (error 209)', async () => {
    const noSm100 = await buildEmulator({ name: 'no-sm100', targets: ['sm_90a'] });
    const image = (env: Record<string, string>) => spawnSync(driver, [noSm100, 'image'], { encoding: 'utf8', env: { ...process.env, ...env } });
    expect(image({ FLASHMLA_EMU_ARCH: 'sm90' }).stdout).toBe('image: launched\n');
    expect(image({ FLASHMLA_EMU_ARCH: 'sm100' }).stdout).toMatch(/^image: refused \(run_get_decoding_sched_meta_kernel: CUDA error 209 \(no kernel image/);
    const exited = image({ FLASHMLA_EMU_ARCH: 'sm100', FLASHMLA_EMU_EXIT: '1' });
    expect(exited.status).toBe(1); // what FlashMLA's CHECK_CUDA does to the process
  });

  it('exits like FlashMLA on a failed CHECK_CUDA when FLASHMLA_EMU_EXIT=1', () => {
    // The memory test launches the scheduler again on the faulted device: CHECK_CUDA exits there.
    const r = runDriver('memory', { FLASHMLA_EMU_EXIT: '1' });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/run_get_decoding_sched_meta_kernel: CUDA error 700 \(an illegal memory access was encountered\)/);
    expect(r.stdout).not.toMatch(/memory: ok/);
  });
});
