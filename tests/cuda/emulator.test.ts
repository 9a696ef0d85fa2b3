// The CI emulator (tests/emulator/, docs/architecture.md#ci-emulator): it builds, exports exactly FlashMLA's launcher
// symbols and the CUDA functions the addon resolves, and its C++ self-test (scheduler vs
// docs/flashmla-interface.md#tile-scheduler, memory checker and sticky faults, numerics vs float64,
// the sparse prefill launchers of docs/flashmla-interface.md#sparse-prefill) passes.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inspectBuild } from '../../src/cuda/build-file.js';
import { targetsByLauncher } from '../../src/cuda/kernels.js';
import { buildEmulator } from '../emulator/build.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const bindingDir = join(root, 'binding');

/** The launchers of flashmla_symbols.h: key and mangled name (any fallback substring after it is not a name). */
function launchers(): { key: string; mangled: string }[] {
  const header = readFileSync(join(bindingDir, 'flashmla_symbols.h'), 'utf8');
  return [...header.matchAll(/\{Launcher::\w+, "(\w+)",\s*"(_Z[^"]+)"/g)].map((m) => ({ key: m[1]!, mangled: m[2]! }));
}

const launcherNames = (): string[] => launchers().map((l) => l.mangled);
const prefillNames = (): string[] => launchers().filter((l) => l.key.includes('_prefill_')).map((l) => l.mangled);

const exportedLaunchers = (lib: string): string[] => definedDynamicSymbols(lib).filter((s) => /^_ZN(4sm90|5sm100|4smxx)/.test(s)).sort();

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
  it('exports exactly the launcher names of flashmla_symbols.h: 12 decode and 9 sparse prefill', () => {
    const names = launcherNames();
    expect(names).toHaveLength(21);
    expect(prefillNames()).toHaveLength(9);
    expect(exportedLaunchers(lib)).toEqual([...names].sort());
  });

  it("carries GPU code for every launcher's kernels under the names flashmla-node looks for", () => {
    const targets = targetsByLauncher(inspectBuild(lib));
    expect(Object.keys(targets).sort()).toEqual(launchers().map((l) => l.key).sort());
    for (const key of Object.keys(targets)) expect([key, targets[key]]).toEqual([key, ['sm_100f', 'sm_90a']]);
  });

  it('builds variants without the prefill launchers, or without any launcher', async () => {
    const noPrefill = await buildEmulator({ name: 'no-prefill', exports: 'no-prefill' });
    const prefill = new Set(prefillNames());
    expect(exportedLaunchers(noPrefill)).toEqual(launcherNames().filter((n) => !prefill.has(n)).sort());
    const code = targetsByLauncher(inspectBuild(noPrefill));
    for (const l of launchers()) expect([l.key, code[l.key]]).toEqual([l.key, l.key.includes('_prefill_') ? [] : ['sm_100f', 'sm_90a']]);
    const noLaunchers = await buildEmulator({ name: 'no-launchers', exports: 'no-launchers' });
    expect(exportedLaunchers(noLaunchers)).toEqual([]);
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

  it('sparse prefill launchers match a float64 computation (invalid indices, topk_length, sinks, empty rows)', () => {
    const r = runDriver('prefill');
    expect(r.stdout).toBe('prefill: ok\n');
    expect(r.status).toBe(0);
  });

  it("sparse prefill launchers throw on their KU_ASSERTs (even with FLASHMLA_EMU_EXIT=1); a bad kv stride is a sticky fault", () => {
    const log = join(work, 'prefill.log');
    const r = runDriver('prefill-checks', { FLASHMLA_EMU_LOG: log, FLASHMLA_EMU_EXIT: '1' });
    expect(r.stdout).toBe('prefill-checks: ok\n');
    expect(r.status).toBe(0);
    const lines = readFileSync(log, 'utf8').trim().split('\n');
    expect(lines.some((l) => /sm90::fwd::run_fwd_phase1_kernel<512,false>: assertion failed: params\.topk % \(2\*B_TOPK\) == 0/.test(l))).toBe(true);
    expect(lines.some((l) => /illegal memory access in kernel sparse_attn_fwd_kernel: read of 1024 bytes/.test(l))).toBe(true);
    expect(lines.some((l) => /device trap in kernel sparse_attn_fwd_kernel/.test(l))).toBe(true);
  });

  it('refuses a prefill launch where the launcher has no GPU code for the device (error 209)', async () => {
    const image = (library: string, arch: string) =>
      spawnSync(driver, [library, 'prefill-image'], { encoding: 'utf8', env: { ...process.env, FLASHMLA_EMU_ARCH: arch } }).stdout;
    expect(image(lib, 'sm90')).toBe('prefill-image: launched\n');
    expect(image(lib, 'sm100')).toBe('prefill-image: launched\n');
    const noSm100 = await buildEmulator({ name: 'no-sm100', targets: ['sm_90a'] });
    expect(image(noSm100, 'sm90')).toBe('prefill-image: launched\n');
    expect(image(noSm100, 'sm100')).toMatch(/^prefill-image: refused \(sm100::fwd::head64::run_fwd_phase1_kernel<512>: CUDA error 209 \(no kernel image/);
    // Per launcher: only the head64 <512> prefill kernel lacks sm100 code here.
    const noH64 = await buildEmulator({ name: 'no-h64-prefill-sm100', kernelTargets: { sm100_prefill_h64_k512: ['sm_90a'] } });
    expect(image(noH64, 'sm100')).toMatch(/^prefill-image: refused \(.*CUDA error 209/);
    expect(spawnSync(driver, [noH64, 'image'], { encoding: 'utf8', env: { ...process.env, FLASHMLA_EMU_ARCH: 'sm100' } }).stdout).toBe('image: launched\n');
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
