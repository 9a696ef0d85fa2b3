// Builds that are not what they seem: no GPU code for the device, no launchers, a static CUDA
// runtime, unreadable GPU code, not an ELF file, truncated, a FIFO. Each must end in a clear reason,
// `auto` falling back to the reference and `backend: 'cuda'` refusing, never an exit or a hang.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { backendInfo, doctorReport, formatDoctor } from '../../src/backend-info.js';
import { PREFILL_LAUNCHERS } from '../../src/cuda/prefill-host-layer.js';
import { targetsByLauncher } from '../../src/cuda/kernels.js';
import { FlashMLA } from '../../src/flashmla.js';
import { generateDenseCase, generateSparseCase } from '../../src/harness/cases.js';
import { inspectBuild } from '../../src/cuda/build-file.js';
import { parseFatbin, runsOn } from '../../src/cuda/fatbin.js';
import { oracleDecode } from '../../src/harness/oracle.js';
import type { HostTensor } from '../../src/tensor.js';
import type { DecodeResult } from '../../src/types.js';
import { buildEmulator } from '../emulator/build.mjs';
import { expectClose, withMeta } from '../helpers/decode.js';

const dir = mkdtempSync(join(tmpdir(), 'flashmla-vetting-'));
const saved = { ...process.env };
afterEach(() => {
  for (const k of ['FLASHMLA_LIBRARY', 'FLASHMLA_EMU_ARCH', 'FLASHMLA_EMU_MINOR', 'FLASHMLA_EMU_EXIT']) {
    if (saved[k] === undefined) delete process.env[k];
    else process.env[k] = saved[k];
  }
});

const lib: Record<string, string> = {};
beforeAll(async () => {
  lib.full = await buildEmulator();
  lib.noSm100 = await buildEmulator({ name: 'no-sm100', targets: ['sm_90a'] });
  lib.noSm90 = await buildEmulator({ name: 'no-sm90', targets: ['sm_100f'] });
  lib.noDense = await buildEmulator({ name: 'no-dense-code', kernelTargets: { dense_bf16: ['sm_100f'], dense_fp16: ['sm_100f'] } });
  lib.noLaunchers = await buildEmulator({ name: 'no-launchers', exports: 'no-launchers' });
  lib.staticRuntime = await buildEmulator({ name: 'static-runtime', exports: 'no-runtime' });
  lib.noFatbin = await buildEmulator({ name: 'no-fatbin', fatbin: 'none' });
  lib.corruptFatbin = await buildEmulator({ name: 'corrupt-fatbin', fatbin: 'corrupt' });
  lib.sm100a = await buildEmulator({ name: 'sm100a', targets: ['sm_90a', 'sm_100a'] });
}, 120_000);

const denseArgs = () => generateDenseCase({ b: 1, sQ: 1, sK: 100, hQ: 16, hK: 1, varlen: false, causal: false, dtype: 'bf16' }, 3).args;
const sparseArgs = () => generateSparseCase({ b: 1, sQ: 1, hQ: 64, dQK: 512, main: { sK: 128, topk: 64, blockSize: 64 } }, 4).args;

async function refusedEverywhere(library: string, reason: RegExp): Promise<void> {
  const info = await backendInfo({ library });
  expect(info.backend).toBe('reference');
  expect(info.reason).toMatch(reason);
  await expect(FlashMLA.open({ backend: 'cuda', library })).rejects.toMatchObject({ code: 'E_BACKEND', message: reason });
  const auto = await FlashMLA.open({ library });
  expect(auto.backend).toBe('reference');
  const r = await auto.flashMlaWithKvCache(withMeta(denseArgs()));
  expectClose('dense', r as DecodeResult<HostTensor>, oracleDecode(withMeta(denseArgs())));
  const doctor = await doctorReport({ library });
  expect(doctor.backend).toBe('reference');
  expect(formatDoctor(doctor)).toMatch(reason);
}

describe('the fatbin reader', () => {
  it('reads the targets of each launcher from the emulator build', () => {
    const f = inspectBuild(lib.noDense!);
    expect(f.fatbin.ok).toBe(true);
    if (!f.fatbin.ok) return;
    const cubins = f.fatbin.entries.filter((e) => e.kind === 'cubin');
    expect(cubins.length).toBe(2 * 21 - 2); // 12 decode and 9 prefill launchers; dense_bf16/fp16 carry sm_100f only
    expect(cubins.every((e) => e.kernels?.length === 1)).toBe(true);
    // Each prefill launcher's kernel is attributed to it alone (src/cuda/kernels.ts prefixes).
    const byLauncher = targetsByLauncher(f);
    for (const k of PREFILL_LAUNCHERS) expect(byLauncher[k], k).toEqual(['sm_100f', 'sm_90a']);
  });

  it('knows which targets run on which device', () => {
    const t = (kind: 'cubin' | 'ptx', sm: number, variant: '' | 'a' | 'f') => ({ kind, sm, variant });
    expect(runsOn(t('cubin', 90, 'a'), 9, 0)).toBe(true);
    expect(runsOn(t('cubin', 90, 'a'), 10, 0)).toBe(false);
    expect(runsOn(t('cubin', 100, 'f'), 10, 3)).toBe(true);
    expect(runsOn(t('cubin', 100, 'a'), 10, 3)).toBe(false);
    expect(runsOn(t('cubin', 103, 'f'), 10, 0)).toBe(false);
    expect(runsOn(t('cubin', 80, ''), 9, 0)).toBe(false);
    expect(runsOn(t('ptx', 90, ''), 10, 0)).toBe(true);
    expect(runsOn(t('ptx', 90, 'a'), 10, 0)).toBe(false);
    expect(runsOn(t('ptx', 100, 'f'), 10, 3)).toBe(true);
    expect(runsOn(t('ptx', 100, 'f'), 12, 0)).toBe(false);
  });

  it('refuses bytes that are not fatbin containers, or that lie about their sizes', () => {
    expect(() => parseFatbin(Buffer.from('definitely not a fatbin'))).toThrow(/not a fatbin container/);
    const h = Buffer.alloc(32);
    h.writeUInt32LE(0xba55ed50, 0);
    h.writeUInt16LE(16, 6);
    h.writeBigUInt64LE(1n << 40n, 8);
    expect(() => parseFatbin(h)).toThrow(/past the end/);
    h.writeBigUInt64LE(16n, 8); // one entry header whose own sizes are too small
    expect(() => parseFatbin(h)).toThrow(/cut off/);
    h.writeBigUInt64LE(0n, 8);
    expect(parseFatbin(h.subarray(0, 16))).toEqual([]); // an empty container
  });
});

describe('no GPU code for the device', () => {
  it('a build without sm100 code on a Blackwell device: refused with the capability and the targets found', async () => {
    process.env.FLASHMLA_EMU_ARCH = 'sm100';
    process.env.FLASHMLA_EMU_EXIT = '1'; // the emulated launchers would exit the process like FlashMLA's
    await refusedEverywhere(lib.noSm100!, /no GPU code for compute capability 10\.0 .*sm_90a/);
    const info = await backendInfo({ library: lib.noSm100! });
    expect(info.featuresByArch?.sm90.usable).toBe(true);
    expect(info.featuresByArch?.sm100.usable).toBe(false);
    expect(info.architectures?.targets).toEqual(['sm_90a']);
  });

  it('a build without sm90 code on a Hopper device', async () => {
    process.env.FLASHMLA_EMU_ARCH = 'sm90';
    process.env.FLASHMLA_EMU_EXIT = '1';
    await refusedEverywhere(lib.noSm90!, /no GPU code for compute capability 9\.0 .*sm_100f/);
  });

  it('sm_100a code does not run on a 10.3 device; sm_100f does', async () => {
    process.env.FLASHMLA_EMU_ARCH = 'sm100';
    process.env.FLASHMLA_EMU_MINOR = '3';
    expect((await backendInfo({ library: lib.sm100a! })).reason).toMatch(/compute capability 10\.3 .*sm_100a/);
    expect((await backendInfo({ library: lib.full! })).backend).toBe('cuda');
  });

  it('per call: a dense call on a build without dense code runs on the reference under auto, and is refused under cuda', async () => {
    process.env.FLASHMLA_EMU_ARCH = 'sm90';
    process.env.FLASHMLA_EMU_EXIT = '1';
    const info = await backendInfo({ library: lib.noDense! });
    expect(info.backend).toBe('cuda');
    expect(info.features.denseBf16).toMatchObject({ ok: false, reason: expect.stringMatching(/dense_bf16 kernels .*sm_100f/) });
    expect(info.features.model1.ok).toBe(true);

    const auto = await FlashMLA.open({ library: lib.noDense! });
    expect(auto.backend).toBe('cuda');
    const dense = withMeta(denseArgs());
    expectClose('dense', (await auto.flashMlaWithKvCache(dense)) as DecodeResult<HostTensor>, oracleDecode(withMeta(denseArgs())));
    const sparse = withMeta(sparseArgs());
    expectClose('sparse', (await auto.flashMlaWithKvCache(sparse)) as DecodeResult<HostTensor>, oracleDecode(withMeta(sparseArgs())));

    const cuda = await FlashMLA.open({ backend: 'cuda', library: lib.noDense! });
    await expect(cuda.flashMlaWithKvCache(withMeta(denseArgs()))).rejects.toMatchObject({ code: 'E_UNSUPPORTED', message: expect.stringMatching(/no GPU code for compute capability 9\.0/) });
    await auto.dispose();
    await cuda.dispose();
  });
});

describe('files that are not usable FlashMLA builds', () => {
  it('0/21 launchers: "not a FlashMLA build" first', async () => {
    await refusedEverywhere(lib.noLaunchers!, /is not a FlashMLA build \(0\/21 entry points\)/);
    const text = formatDoctor(await doctorReport({ library: lib.noLaunchers! }));
    expect(text.split('\n')[1]).toMatch(/not a FlashMLA build \(0\/21 entry points\)/);
  });

  it('a statically linked CUDA runtime', async () => {
    await refusedEverywhere(lib.staticRuntime!, /links the CUDA runtime statically .*-cudart shared/);
  });

  it('no .nv_fatbin section, or an unreadable one', async () => {
    await refusedEverywhere(lib.noFatbin!, /has no \.nv_fatbin section/);
    await refusedEverywhere(lib.corruptFatbin!, /GPU code of .* cannot be read/);
  });

  it('a file shorter than an ELF header, a truncated ELF, a FIFO', async () => {
    const tiny = join(dir, 'tiny.so');
    writeFileSync(tiny, 'hello');
    await refusedEverywhere(tiny, /not an ELF file/);
    const truncated = join(dir, 'truncated.so');
    writeFileSync(truncated, readFileSync(lib.full!).subarray(0, 4096));
    await refusedEverywhere(truncated, /truncated/);
    const fifo = join(dir, 'fifo.so');
    execFileSync('mkfifo', [fifo]);
    await refusedEverywhere(fifo, /not a regular file/);
  }, 60_000);
});

describe('the doctor report', () => {
  it('says each reason once and lists what the build provides per architecture without a device', async () => {
    process.env.FLASHMLA_EMU_ARCH = 'sm90';
    const text = formatDoctor(await doctorReport({ library: lib.noSm100!, device: 5 }));
    expect(text.match(/device 5 does not exist/g)?.length).toBe(1);
    expect(text).toMatch(/sm90:\n\s+dense bf16\s+yes/);
    expect(text).toMatch(/sm100: none — .*no GPU code for compute capability 10\.0/);
    expect(text).toMatch(/sched_meta\s+sm_90a/);
  });
});
