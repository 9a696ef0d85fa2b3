// The addon, finding and loading a FlashMLA build, backendInfo() and the child-process doctor.
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { backendInfo, doctorReport, formatDoctor } from '../../src/backend-info.js';
import { FlashMLA } from '../../src/flashmla.js';
import { loadAddon } from '../../src/addon.js';
import { inspectBuild } from '../../src/cuda/build-file.js';
import { locateFlashMla } from '../../src/cuda/locate.js';
import { buildEmulator } from '../emulator/build.mjs';

let library: string;
const dir = mkdtempSync(join(tmpdir(), 'flashmla-native-info-'));
const saved = { ...process.env };

beforeAll(async () => {
  library = await buildEmulator();
});
afterEach(() => {
  for (const k of ['FLASHMLA_LIBRARY', 'FLASHMLA_PYTHON', 'FLASHMLA_EMU_ARCH', 'FLASHMLA_EMU_DEVICES', 'FLASHMLA_EMU_DRIVER_VERSION']) {
    if (saved[k] === undefined) delete process.env[k];
    else process.env[k] = saved[k];
  }
});

describe('the addon', () => {
  it('is built and loads', () => {
    const a = loadAddon();
    expect(a.ok, a.ok ? '' : a.reason).toBe(true);
  });

  it('looks up exactly the names the emulator exports (docs/flashmla-interface.md#mangled-names and the CUDA runtime table)', () => {
    const a = loadAddon();
    if (!a.ok) throw new Error(a.reason);
    const exported = inspectBuild(library).exports;
    const launcherLike = [...exported].filter((s) => /^_ZN(4sm90|5sm100|4smxx)/.test(s)).sort();
    expect(launcherLike).toEqual(a.addon.launchers.map((l) => l.mangled).sort());
    for (const f of a.addon.cudaFunctions) expect(exported.has(f), f).toBe(true);
  });
});

describe('backendInfo', () => {
  it('explains why there is no CUDA backend when no build is found', async () => {
    delete process.env.FLASHMLA_LIBRARY;
    process.env.FLASHMLA_PYTHON = 'python3';
    const info = await backendInfo();
    expect(info.backend).toBe('reference');
    expect(info.reason).toMatch(/no flash_mla package|was not found/);
    expect(info.library.ok).toBe(false);
    expect(Object.values(info.features).every((f) => !f.ok && f.reason.length > 0)).toBe(true);
    process.env.FLASHMLA_PYTHON = join(dir, 'no-such-python');
    expect((await backendInfo()).reason).toMatch(/no-such-python was not found.*FLASHMLA_PYTHON/);
  });

  it('reports the reference backend: the tier auto uses, each tier with a reason when unavailable, threads', async () => {
    const { reference } = await backendInfo();
    expect(reference.tiers.js.ok).toBe(true);
    expect(reference.tiers[reference.tier].ok).toBe(true);
    expect(Object.values(reference.tiers).every((t) => t.ok || t.reason.length > 0)).toBe(true);
    expect(reference.threads).toBeGreaterThanOrEqual(1);
    process.env.FLASHMLA_REFERENCE_TIER = 'js';
    try {
      expect((await backendInfo()).reference.tier).toBe('js');
    } finally {
      delete process.env.FLASHMLA_REFERENCE_TIER;
    }
  });

  it('reports a usable emulated Hopper: versions, device, entry points, features', async () => {
    process.env.FLASHMLA_LIBRARY = library;
    process.env.FLASHMLA_EMU_ARCH = 'sm90';
    const info = await backendInfo();
    expect(info.backend).toBe('cuda');
    expect(info.library).toMatchObject({ ok: true, path: library, kind: 'kernels-only', source: 'env', preloads: [] });
    expect(info.cuda).toMatchObject({ ok: true, runtimeVersion: '13.0', driverVersion: '13.0' });
    expect(info.devices[0]).toMatchObject({ computeCapability: '9.0', sms: 132, supported: { ok: true } });
    expect(Object.values(info.entryPoints).every((v) => v !== null)).toBe(true);
    expect([info.features.denseBf16.ok, info.features.denseFp16.ok, info.features.v32.ok, info.features.model1.ok]).toEqual([true, true, true, true]);
    expect(info.architectures?.targets).toEqual(['sm_100f', 'sm_90a']);
    expect(info.featuresByArch?.sm100.features.denseBf16).toMatchObject({ ok: false, reason: expect.stringMatching(/9\.0 \(Hopper\) only/) });
    expect(info.featuresByArch?.sm100.features.model1.ok).toBe(true);
  });

  it('sees an old driver, and a Blackwell device', async () => {
    process.env.FLASHMLA_EMU_ARCH = 'sm100';
    const b = await backendInfo({ library });
    expect([b.features.model1.ok, b.features.v32.ok, b.features.denseBf16.ok]).toEqual([true, true, false]);
    expect(b.features.denseBf16.reason).toMatch(/9\.0/);
    process.env.FLASHMLA_EMU_DRIVER_VERSION = '12040';
    const old = await backendInfo({ library });
    expect(old.backend).toBe('reference');
    expect(old.cuda.reason).toMatch(/driver.*older than the CUDA runtime 13\.0/);
  });

  it('no visible device; a missing device; auto falls back to the reference', async () => {
    process.env.FLASHMLA_EMU_DEVICES = '0';
    expect((await backendInfo({ library })).reason).toMatch(/no CUDA device is visible/);
    process.env.FLASHMLA_EMU_DEVICES = '1';
    await expect(FlashMLA.open({ backend: 'cuda', library, device: 3 })).rejects.toMatchObject({ code: 'E_BACKEND', message: expect.stringMatching(/device 3 does not exist/) });
    const auto = await FlashMLA.open({ library: join(dir, 'missing.so') });
    expect([auto.backend, auto.device]).toEqual(['reference', null]);
    expect((await auto.info()).reason).toMatch(/missing\.so.*does not exist/);
  });

  it('recognises a PyTorch extension and says what it needs', async () => {
    const ext = join(dir, 'cuda.cpython-311-x86_64-linux-gnu.so');
    copyFileSync(library, ext);
    process.env.FLASHMLA_PYTHON = 'python3'; // has a shared libpython here, but no torch
    const r = await locateFlashMla(ext);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.reason).toMatch(/PyTorch extension.*no torch package/);
    const fake = join(dir, 'python-static');
    writeFileSync(fake, `#!/bin/sh\necho '{"executable":"${fake}","version":"3.12.0","flashMla":null,"extensions":[],"torchLib":"${dir}","libpython":null,"shared":false}'\n`);
    chmodSync(fake, 0o755);
    process.env.FLASHMLA_PYTHON = fake;
    const info = await backendInfo({ library: ext });
    expect(info.library.kind).toBe(null);
    expect(info.reason).toMatch(/needs a shared libpython.*--enable-shared/);
  });
});

describe('doctor', () => {
  it('probes in a child process and formats a report', async () => {
    process.env.FLASHMLA_EMU_ARCH = 'sm90';
    const info = await doctorReport({ library });
    expect(info.probedIn).toBe('child process');
    expect(info.backend).toBe('cuda');
    const text = formatDoctor(info);
    expect(text).toMatch(/backend \(auto\): cuda/);
    expect(text).toMatch(/compute capability 9\.0, 132 SMs/);
    expect(text).toMatch(/12\/12 resolved/);
  });

  it('survives a build that crashes while loading', async () => {
    const src = join(dir, 'crash.cc');
    // Looks like a FlashMLA build to the file checks (a launcher, a runtime, an empty fatbin), then aborts when loaded.
    writeFileSync(src, [
      '#include <cstdlib>',
      'extern "C" void _ZN4smxx6decode34run_get_decoding_sched_meta_kernelER24GetDecodeSchedMetaParams() {}',
      'extern "C" int cudaGetDeviceCount(int*) { return 0; }',
      '__attribute__((used, section(".nv_fatbin"))) static const unsigned char fatbin[16] = {0x50, 0xed, 0x55, 0xba, 1, 0, 16};',
      '__attribute__((constructor)) static void boom() { std::abort(); }',
    ].join('\n'));
    const so = join(dir, 'libcrash.so');
    execFileSync('g++', ['-shared', '-fPIC', '-o', so, src]);
    const info = await doctorReport({ library: so, timeoutMs: 20_000 });
    expect(info.backend).toBe('reference');
    expect(info.library.reason).toMatch(/probe process failed: the process was killed by SIGABRT/);
    expect(formatDoctor(info)).toMatch(/SIGABRT/);
  });

  it('reports a file that is not a shared library', async () => {
    const txt = join(dir, 'not-a-library.so');
    writeFileSync(txt, 'hello');
    const info = await doctorReport({ library: txt });
    expect(info.reason).toMatch(/not a loadable shared library/);
  });
});
