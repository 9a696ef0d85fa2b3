// Device tensors, the per-instance worker (ordering, concurrency), the sched-meta lifecycle and
// stale-error hygiene, on the CPU emulator of tests/emulator.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FlashMLAError } from '../../src/errors.js';
import { FlashMLA } from '../../src/flashmla.js';
import { generateDenseCase, generateSparseCase } from '../../src/harness/cases.js';
import { DeviceTensor } from '../../src/device-tensor.js';
import { openCudaSession, type CudaSession } from '../../src/cuda/session.js';
import { getMlaMetadata } from '../../src/sched-meta.js';
import type { DeviceTensorMeta, HostTensor } from '../../src/tensor.js';
import type { DecodeResult } from '../../src/types.js';
import { useEmulatedInstance } from '../helpers/emulator.js';
import { expectClose, reference } from '../helpers/decode.js';

const emu = useEmulatedInstance({ exitOnStaleError: true });

const rejectsWith = async (p: Promise<unknown>, code: string): Promise<FlashMLAError> => {
  const e = await p.then(() => null, (x: unknown) => x);
  expect(e).toBeInstanceOf(FlashMLAError);
  expect((e as FlashMLAError).code).toBe(code);
  return e as FlashMLAError;
};

describe('device tensors', () => {
  it('upload and download round-trip a strided view', async () => {
    const data = Float32Array.from({ length: 40 }, (_, i) => i);
    const host: HostTensor<'fp32'> = { dtype: 'fp32', shape: [3, 4], strides: [10, 2], offset: 5, data };
    const dev = await emu.fm.upload(host);
    expect(dev).toBeInstanceOf(DeviceTensor);
    expect([dev.shape, dev.strides, dev.offset, dev.capacity, dev.device]).toEqual([[3, 4], [10, 2], 0, 27, 0]);
    const back = await emu.fm.download(dev);
    expect(Array.from(back.data)).toEqual([5, 7, 9, 11, 15, 17, 19, 21, 25, 27, 29, 31]);
    dev.dispose();
  });

  it('allocate, wrap without ownership, dispose twice, use after dispose', async () => {
    const a = await emu.fm.allocate('int32', [4, 8]);
    expect([a.capacity, a.owned]).toEqual([32, true]);
    await emu.fm.upload({ dtype: 'int32', shape: [1], data: new Int32Array([1]) }).then((t) => t.dispose());
    const w = await emu.fm.wrap(a.address + 16n, { dtype: 'int32', shape: [2, 4] });
    expect([w.owned, w.capacity]).toEqual([false, 8]);
    w.dispose();
    w.dispose();
    expect(w.disposed).toBe(true);
    expect(a.disposed).toBe(false); // disposing a wrap never frees the memory
    a.dispose();
    a.dispose();
    await rejectsWith(emu.fm.download(a), 'E_DISPOSED');
    await rejectsWith(emu.fm.wrap(0x1234n, { dtype: 'int32', shape: [2] }), 'E_DEVICE'); // not device memory
  });

  it('frees memory on dispose (an emulated 64 MiB device fits a 40 MiB tensor twice only after freeing)', async () => {
    process.env.FLASHMLA_EMU_MEMORY = String(64 << 20);
    const small = await FlashMLA.open({ backend: 'cuda', library: emu.library });
    try {
      const a = await small.allocate('uint8', [40 << 20]);
      await rejectsWith(small.allocate('uint8', [40 << 20]), 'E_OUT_OF_MEMORY');
      a.dispose();
      const b = await small.allocate('uint8', [40 << 20]);
      b.dispose();
    } finally {
      await small.dispose();
      delete process.env.FLASHMLA_EMU_MEMORY;
    }
  });

  it('under memory pressure, the memory of dropped device tensors is collected before out-of-memory is reported', async () => {
    process.env.FLASHMLA_EMU_MEMORY = String(64 << 20);
    const small = await FlashMLA.open({ backend: 'cuda', library: emu.library });
    try {
      // Dropped, never disposed: only garbage collection can give their memory back.
      for (let i = 0; i < 20; i++) await small.allocate('uint8', [40 << 20]);
      const err = await small.allocate('uint8', [100 << 20]).then(() => null, (e: unknown) => e);
      expect(err).toMatchObject({ code: 'E_OUT_OF_MEMORY', message: expect.stringMatching(/104857600 bytes/) });
      // The error came back from the worker thread with the stack of the call that made it.
      expect((err as Error).stack).toMatch(/native-memory\.test\.ts/);
    } finally {
      await small.dispose();
      delete process.env.FLASHMLA_EMU_MEMORY;
    }
  });

  it('a disposed instance disposes its tensors and rejects calls', async () => {
    const other = await FlashMLA.open({ backend: 'cuda', library: emu.library });
    const t = await other.allocate('fp32', [8]);
    await other.dispose();
    await other.dispose();
    expect(t.disposed).toBe(true);
    t.dispose(); // no double free after the instance freed everything
    await rejectsWith(other.allocate('fp32', [1]), 'E_DISPOSED');
    await rejectsWith(other.flashMlaWithKvCache({} as never), 'E_DISPOSED');
  });

  it('the reference backend has no device memory', async () => {
    const ref = await FlashMLA.open({ backend: 'reference' });
    expect([ref.backend, ref.device]).toEqual(['reference', null]);
    await expect(ref.allocate('fp32', [1])).rejects.toMatchObject({ code: 'E_BACKEND' });
    await rejectsWith(ref.upload({ dtype: 'fp32', shape: [1], data: new Float32Array(1) }), 'E_BACKEND');
  });

  it('rejects device tensors of another device', async () => {
    const c = generateDenseCase({ b: 1, sQ: 1, sK: 64, hQ: 8, hK: 1, varlen: false, causal: false }, 1);
    process.env.FLASHMLA_EMU_DEVICES = '2';
    const other = await FlashMLA.open({ backend: 'cuda', library: emu.library, device: 1 });
    try {
      const q = await other.upload(c.args.q as HostTensor);
      await rejectsWith(emu.fm.flashMlaWithKvCache({ ...c.args, q, schedMeta: getMlaMetadata() }), 'E_DEVICE');
    } finally {
      await other.dispose();
      delete process.env.FLASHMLA_EMU_DEVICES;
    }
  });

  it('rejects look-alike device tensors (a plain object could point anywhere)', async () => {
    const c = generateDenseCase({ b: 1, sQ: 1, sK: 64, hQ: 8, hK: 1, varlen: false, causal: false }, 1);
    const q = await emu.fm.upload(c.args.q as HostTensor);
    const forged: DeviceTensorMeta = { dtype: q.dtype, shape: q.shape, strides: q.strides, device: 0, capacity: q.capacity, address: 0n, disposed: false };
    await rejectsWith(emu.fm.flashMlaWithKvCache({ ...c.args, q: forged, schedMeta: getMlaMetadata() }), 'E_VALUE');
    q.dispose();
  });
});

describe('worker, sched meta and errors', () => {
  let session: CudaSession;
  beforeAll(async () => {
    const r = await openCudaSession({ library: emu.library });
    if (!r.ok) throw new Error(r.reason);
    session = r.session;
  });
  afterAll(() => session.dispose());

  it('computes the sched meta once per FlashMLASchedMeta and reuses it across concurrent calls', async () => {
    const c = generateSparseCase({ b: 3, sQ: 1, hQ: 64, dQK: 512, main: { sK: 200, topk: 128, blockSize: 64, varlen: true } }, 11);
    const want = await reference(c.args);
    const meta = getMlaMetadata();
    const before = { ...session.stats };
    const results = await Promise.all(Array.from({ length: 4 }, () => session.decode({ ...c.args, schedMeta: meta })));
    for (const r of results) expectClose('sparse', r as DecodeResult<HostTensor>, want);
    expect(session.stats.decodes - before.decodes).toBe(4);
    expect(session.stats.schedMetaRuns - before.schedMetaRuns).toBe(1);
    expect(meta.slotCount).toBe(1);
    await session.decode({ ...c.args, schedMeta: getMlaMetadata() });
    expect(session.stats.schedMetaRuns - before.schedMetaRuns).toBe(2);
    meta.dispose();
    expect(meta.slotCount).toBe(0);
    await session.decode({ ...c.args, schedMeta: meta }); // recomputed after dispose
    expect(session.stats.schedMetaRuns - before.schedMetaRuns).toBe(3);
  });

  it('a sched meta keeps FlashMLA\'s consistency check', async () => {
    const a = generateSparseCase({ b: 2, sQ: 1, hQ: 64, dQK: 512, main: { sK: 100, topk: 64, blockSize: 64 } }, 12);
    const b = generateSparseCase({ b: 3, sQ: 1, hQ: 64, dQK: 512, main: { sK: 100, topk: 64, blockSize: 64 } }, 13);
    const meta = getMlaMetadata();
    await session.decode({ ...a.args, schedMeta: meta });
    await expect(session.decode({ ...b.args, schedMeta: meta })).rejects.toMatchObject({ code: 'E_SCHED_META' });
  });

  it('clears a stale CUDA error before launching (the emulator exits on one, like FlashMLA)', async () => {
    // A failed cudaMalloc leaves cudaErrorMemoryAllocation pending, as the real runtime does.
    await expect(session.allocate('uint8', [2 ** 40])).rejects.toBeInstanceOf(FlashMLAError);
    const c = generateDenseCase({ b: 2, sQ: 1, sK: 64, hQ: 8, hK: 1, varlen: false, causal: false }, 14);
    expectClose('dense', (await session.decode({ ...c.args, schedMeta: getMlaMetadata() })) as DecodeResult<HostTensor>, await reference(c.args));
  });

  it('validate: true checks device-resident indices on the host', async () => {
    const c = generateSparseCase({ b: 2, sQ: 1, hQ: 64, dQK: 512, main: { sK: 100, topk: 64, blockSize: 64 } }, 15);
    const idx = (c.args.indices as HostTensor<'int32'>).data.slice();
    idx[3] = 1 << 30;
    const indices = await session.upload({ dtype: 'int32', shape: c.args.indices!.shape, data: idx });
    await expect(session.decode({ ...c.args, indices, schedMeta: getMlaMetadata() }, { validate: true })).rejects.toMatchObject({ code: 'E_RANGE' });
    indices.dispose();
  });
});
