// A device fault (here: a device-resident index outside the cache, which FlashMLA dereferences,
// SPEC §6.3, §9.8) is sticky and poisons the context. The call must fail with a FlashMLAError,
// later calls must say the context is dead, and the process must live. Own file: the emulated
// device stays faulted for the rest of the process.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { FlashMLAError } from '../src/errors.js';
import { FlashMLA } from '../src/flashmla.js';
import { generateSparseCase } from '../src/harness/cases.js';
import { getMlaMetadata } from '../src/sched-meta.js';
import type { HostTensor } from '../src/tensor.js';
import { buildEmulator } from './emulator/build.mjs';

let fm: FlashMLA;
beforeAll(async () => {
  process.env.FLASHMLA_EMU_ARCH = 'sm90';
  fm = await FlashMLA.open({ backend: 'cuda', library: await buildEmulator() });
});
afterAll(() => fm.dispose());

it('turns a device fault into FlashMLAError E_CUDA and keeps the process alive', async () => {
  const c = generateSparseCase({ b: 2, sQ: 1, hQ: 64, dQK: 512, main: { sK: 100, topk: 64, blockSize: 64 } }, 21);
  const idx = (c.args.indices as HostTensor<'int32'>).data.slice();
  idx[0] = 1 << 28; // far outside the cache; not checked without validate: true (device-resident)
  const indices = await fm.upload({ dtype: 'int32', shape: c.args.indices!.shape, data: idx });
  const first = await fm.flashMlaWithKvCache({ ...c.args, indices, schedMeta: getMlaMetadata() }).then(() => null, (e: unknown) => e);
  expect(first).toBeInstanceOf(FlashMLAError);
  expect((first as FlashMLAError).code).toBe('E_CUDA');
  const second = await fm.flashMlaWithKvCache({ ...c.args, schedMeta: getMlaMetadata() }).then(() => null, (e: unknown) => e);
  expect(second).toBeInstanceOf(FlashMLAError);
  expect((second as FlashMLAError).code).toBe('E_CUDA');
  expect((second as Error).message).toMatch(/700|illegal|error state/i);
});
