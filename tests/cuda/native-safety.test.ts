// docs/flashmla-interface.md#launcher-checks: FlashMLA's dense, combine and sched-meta launchers exit(1) on a failed check, and
// wrong-arch or misaligned launches poison the device. With FLASHMLA_EMU_EXIT=1 the emulator's
// launchers exit like FlashMLA's, so every case below would end this test process if it reached a
// launcher: each must be a FlashMLAError raised before any launch.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FlashMLAError } from '../../src/errors.js';
import { FlashMLA } from '../../src/flashmla.js';
import { generateSparseCase } from '../../src/harness/cases.js';
import { getMlaMetadata } from '../../src/sched-meta.js';
import { numel, type DType, type HostTensor } from '../../src/tensor.js';
import type { DecodeArgs } from '../../src/types.js';
import { buildEmulator } from '../emulator/build.mjs';

let library: string;
beforeAll(async () => {
  library = await buildEmulator();
  process.env.FLASHMLA_EMU_EXIT = '1';
});
afterAll(() => {
  delete process.env.FLASHMLA_EMU_EXIT;
  delete process.env.FLASHMLA_EMU_ARCH;
  delete process.env.FLASHMLA_EMU_SMS;
});

async function rejected(p: Promise<unknown>, code: string, text?: RegExp): Promise<void> {
  const e = await p.then(() => null, (x: unknown) => x);
  expect(e).toBeInstanceOf(FlashMLAError);
  expect((e as FlashMLAError).code, (e as Error).message).toBe(code);
  if (text) expect((e as Error).message).toMatch(text);
}

async function openOn(arch: 'sm90' | 'sm100', sms?: number): Promise<FlashMLA> {
  process.env.FLASHMLA_EMU_ARCH = arch;
  if (sms === undefined) delete process.env.FLASHMLA_EMU_SMS;
  else process.env.FLASHMLA_EMU_SMS = String(sms);
  return FlashMLA.open({ backend: 'cuda', library });
}

/**
 * Device tensors of any shape over a small allocation: zero strides on every dim but the last
 * (unless given), so the extent, and the memory wrap() checks, stay small (validation reads no values).
 */
async function huge(fm: FlashMLA, dtype: DType, shape: number[], strides?: number[]) {
  const s = strides ?? shape.map((_, i) => (i === shape.length - 1 ? 1 : 0));
  const extent = numel(shape) === 0 ? 1 : 1 + shape.reduce((a, d, i) => a + (d - 1) * s[i]!, 0);
  const backing = await fm.allocate(dtype, [extent]);
  return fm.wrap(backing.address, { dtype, shape, strides: s, capacity: extent });
}

const denseArgs = async (fm: FlashMLA, b: number, dQK = 576): Promise<DecodeArgs> => ({
  q: await huge(fm, 'bf16', [b, 1, 8, dQK]),
  kCache: await huge(fm, 'bf16', [1, 64, 1, dQK]),
  blockTable: await huge(fm, 'int32', [b, 1]),
  cacheSeqlens: await huge(fm, 'int32', [b]),
  headDimV: 512,
  schedMeta: getMlaMetadata(),
});

describe('exit(1) and trap conditions are rejected before any launcher runs', () => {
  it('dense with d_qk 512 (the dense launcher exits) and head_dim_v != 512', async () => {
    const fm = await openOn('sm90');
    const e = await fm.flashMlaWithKvCache(await denseArgs(fm, 2, 512)).then(() => null, (x: unknown) => x);
    expect(e).toBeInstanceOf(FlashMLAError);
    expect(['E_SHAPE', 'E_UNSUPPORTED']).toContain((e as FlashMLAError).code);
    await rejected(fm.flashMlaWithKvCache({ ...(await denseArgs(fm, 2)), headDimV: 576 }), 'E_VALUE');
    await fm.dispose();
  });

  it('num_sm_parts above 160 (the combine exits)', async () => {
    const fm = await openOn('sm100', 400);
    const c = generateSparseCase({ b: 2, sQ: 1, hQ: 64, dQK: 576, main: { sK: 128, topk: 64, blockSize: 64 } }, 1);
    await rejected(fm.flashMlaWithKvCache({ ...c.args, schedMeta: getMlaMetadata() }), 'E_UNSUPPORTED', /num_sm_parts = 400/);
    await fm.dispose();
  });

  it('a batch too large for the scheduler\'s shared memory (the sched-meta launcher exits)', async () => {
    const fm = await openOn('sm90');
    await rejected(fm.flashMlaWithKvCache(await denseArgs(fm, 12_000)), 'E_UNSUPPORTED', /shared memory/);
    await fm.dispose();
  });

  it('(b + P)·s_q·h_q·512 ≥ 2^31', async () => {
    const fm = await openOn('sm90');
    const args: DecodeArgs = {
      q: await huge(fm, 'bf16', [600, 64, 128, 576]),
      kCache: await huge(fm, 'uint8', [1, 64, 1, 656]),
      indices: await huge(fm, 'int32', [600, 64, 64]),
      headDimV: 512, isFp8Kvcache: true, schedMeta: getMlaMetadata(),
    };
    await rejected(fm.flashMlaWithKvCache(args), 'E_UNSUPPORTED', /2\^31/);
    await fm.dispose();
  });

  it('dense decode on a 10.x device (the sm90 kernel would trap)', async () => {
    const fm = await openOn('sm100');
    await rejected(fm.flashMlaWithKvCache(await denseArgs(fm, 2)), 'E_UNSUPPORTED', /compute capability 9\.0/);
    await fm.dispose();
  });

  it('sm100 head128 with stride_q_s_q == 0 (SIGFPE in the launcher)', async () => {
    const fm = await openOn('sm100');
    const c = generateSparseCase({ b: 2, sQ: 1, hQ: 128, dQK: 512, main: { sK: 128, topk: 64, blockSize: 64 } }, 2);
    const q = c.args.q as HostTensor;
    await rejected(fm.flashMlaWithKvCache({ ...c.args, q: { ...q, strides: [q.strides![0]!, 0, q.strides![2]!, 1] }, schedMeta: getMlaMetadata() }),
      'E_STRIDE', /head128/);
    await fm.dispose();
  });

  for (const arch of ['sm90', 'sm100'] as const) {
    it(`${arch}: a compact MODEL1 cache with an odd block size (misaligned loads / TMA rows)`, async () => {
      const fm = await openOn(arch);
      const c = generateSparseCase({ b: 2, sQ: 1, hQ: 64, dQK: 512, main: { sK: 120, topk: 64, blockSize: 61 } }, 3);
      const kv = c.args.kCache as HostTensor;
      const [n, B] = kv.shape as [number, number];
      // sm90 needs stride0 % 16 (docs/flashmla-interface.md#sm90-cache-loads), sm100 stride0 % 576 (TMA rows, docs/flashmla-interface.md#launcher-checks).
      const stride0 = arch === 'sm90' ? B * 584 : Math.ceil((B * 584) / 16) * 16;
      await rejected(fm.flashMlaWithKvCache({ ...c.args, kCache: { ...kv, shape: [n, B, 1, 584], strides: [stride0, 584, 584, 1] }, schedMeta: getMlaMetadata() }),
        'E_STRIDE', arch === 'sm90' ? /multiple of 16/ : /multiple of 576/);
      await fm.dispose();
    });

    it(`${arch}: a KV cache whose device base is not 16-byte aligned`, async () => {
      const fm = await openOn(arch);
      const c = generateSparseCase({ b: 2, sQ: 1, hQ: 64, dQK: 576, main: { sK: 128, topk: 64, blockSize: 64 } }, 4);
      const kv = c.args.kCache as HostTensor<'uint8'>;
      const padded = new Uint8Array(kv.data.length + 8);
      padded.set(kv.data, 8);
      const dev = await fm.upload({ dtype: 'uint8', shape: [padded.length], data: padded });
      const shifted = await fm.wrap(dev.address + 8n, { dtype: 'uint8', shape: kv.shape, strides: kv.strides, capacity: kv.data.length });
      await rejected(fm.flashMlaWithKvCache({ ...c.args, kCache: shifted, schedMeta: getMlaMetadata() }), 'E_STRIDE', /16-byte aligned/);
      await fm.dispose();
    });
  }

  it('sm90: V3.2 with topk_length or an extra cache (the sm90 V32 launcher rejects them)', async () => {
    const fm = await openOn('sm90');
    const c = generateSparseCase({ b: 2, sQ: 1, hQ: 64, dQK: 576, main: { sK: 128, topk: 64, blockSize: 64, withLength: true } }, 5);
    await rejected(fm.flashMlaWithKvCache({ ...c.args, schedMeta: getMlaMetadata() }), 'E_UNSUPPORTED', /topkLength/);
    await fm.dispose();
  });

  it('the process is still alive and the device still works', async () => {
    const fm = await openOn('sm90');
    const c = generateSparseCase({ b: 2, sQ: 1, hQ: 64, dQK: 512, main: { sK: 128, topk: 64, blockSize: 64 } }, 6);
    const r = await fm.flashMlaWithKvCache({ ...c.args, schedMeta: getMlaMetadata() });
    expect(r.out.shape).toEqual([2, 1, 64, 512]);
    await fm.dispose();
  });
});
