// A device fault (here: a device-resident index outside the cache, which FlashMLA dereferences)
// is sticky and poisons the context. The call must fail with a FlashMLAError, every later call
// must fail at once naming the first fault, and the process must live. Own file: the emulated
// device stays faulted for the rest of the process.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { FlashMLAError } from '../../src/errors.js';
import { backendInfo } from '../../src/backend-info.js';
import { FlashMLA } from '../../src/flashmla.js';
import { generateSparseCase } from '../../src/harness/cases.js';
import { getMlaMetadata } from '../../src/sched-meta.js';
import type { HostTensor } from '../../src/tensor.js';
import { buildEmulator } from '../emulator/build.mjs';

let fm: FlashMLA;
beforeAll(async () => {
  process.env.FLASHMLA_EMU_ARCH = 'sm90';
  fm = await FlashMLA.open({ backend: 'cuda', library: await buildEmulator() });
});
afterAll(() => fm.dispose());

it('turns a device fault into "device lost": the first fault named by every later call and by backendInfo', async () => {
  const c = generateSparseCase({ b: 2, sQ: 1, hQ: 64, dQK: 512, main: { sK: 100, topk: 64, blockSize: 64 } }, 21);
  const idx = (c.args.indices as HostTensor<'int32'>).data.slice();
  idx[0] = 1 << 28; // far outside the cache; not checked without validate: true (device-resident)
  const indices = await fm.upload({ dtype: 'int32', shape: c.args.indices!.shape, data: idx });
  const first = await fm.flashMlaWithKvCache({ ...c.args, indices, schedMeta: getMlaMetadata() }).then(() => null, (e: unknown) => e);
  expect(first).toBeInstanceOf(FlashMLAError);
  expect((first as FlashMLAError).code).toBe('E_DEVICE_LOST');
  expect((first as Error).message).toMatch(/first fault was: .*700/);
  for (const later of [
    () => fm.flashMlaWithKvCache({ ...c.args, schedMeta: getMlaMetadata() }),
    () => fm.upload({ dtype: 'int32', shape: [1], data: new Int32Array(1) }),
    () => fm.allocate('uint8', [16]),
  ]) {
    const e = await later().then(() => null, (x: unknown) => x);
    expect((e as FlashMLAError).code).toBe('E_DEVICE_LOST');
    expect((e as Error).message).toBe((first as Error).message);
  }
  const info = await backendInfo({ library: await buildEmulator() });
  expect(info.backend).toBe('reference');
  expect(info.reason).toMatch(/device 0 is lost .*first fault was: .*700/);
  await expect(FlashMLA.open({ backend: 'cuda', library: await buildEmulator() })).rejects.toMatchObject({ code: 'E_BACKEND', message: expect.stringMatching(/lost/) });
});
