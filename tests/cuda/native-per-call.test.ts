// The per-call path of device-resident decodes (docs/cuda-path.md#per-call-cost) on the CPU
// emulator: calls issued on the calling thread agree bitwise with the worker-thread path and stay
// in call order with queued copies; the plan cache never serves a stale plan; preallocated outputs
// (docs/cuda-path.md#preallocated-outputs) are written in place and checked like any argument; the
// pool (docs/cuda-path.md#memory-pool) reuses its blocks and gives them back.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FlashMLAError } from '../../src/errors.js';
import { FlashMLA } from '../../src/flashmla.js';
import { generateDenseCase, generateSparseCase, type DecodeCase } from '../../src/harness/cases.js';
import { DeviceTensor } from '../../src/device-tensor.js';
import { openCudaSession, type CudaSession } from '../../src/cuda/session.js';
import { getMlaMetadata } from '../../src/sched-meta.js';
import type { HostTensor, Tensor } from '../../src/tensor.js';
import type { DecodeArgs, DecodeResult } from '../../src/types.js';
import { TENSOR_ARG_KEYS } from '../../src/validate/args.js';
import { buildEmulator } from '../emulator/build.mjs';

let library: string;
let session: CudaSession;

beforeAll(async () => {
  library = await buildEmulator();
  process.env.FLASHMLA_EMU_ARCH = 'sm90';
  process.env.FLASHMLA_EMU_EXIT = '1'; // a launcher reached with a stale error would end this process
  const r = await openCudaSession({ library });
  if (!r.ok) throw new Error(r.reason);
  session = r.session;
});

afterAll(async () => {
  await session.dispose();
  delete process.env.FLASHMLA_EMU_EXIT;
});

const bits = (t: HostTensor): Uint8Array => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength).slice();

async function onDevice(s: CudaSession, c: DecodeCase): Promise<DecodeArgs> {
  const moved: Record<string, Tensor> = {};
  for (const k of TENSOR_ARG_KEYS) {
    const t = c.args[k];
    if (t) moved[k] = await s.upload(t as HostTensor);
  }
  return { ...c.args, ...moved, schedMeta: getMlaMetadata() } as DecodeArgs;
}

async function hostOf(s: CudaSession, r: DecodeResult<Tensor>): Promise<[Uint8Array, Uint8Array]> {
  return [bits(await s.download(r.out as DeviceTensor)), bits(await s.download(r.lse as DeviceTensor))];
}

// With the lse strides FlashMLA returns: a view of the kernels' (b, s_q, h_q) for one kv head and s_q > 1, else contiguous.
const CASES: [string, () => DecodeCase, number[]][] = [
  ['dense h_k 2, s_q 2 (q regrouped, out and lse reshaped on the device)', () => generateDenseCase({ b: 2, sQ: 2, sK: 100, hQ: 8, hK: 2, varlen: true, causal: true }, 21), [16, 2, 1]],
  ['dense h_k 1, s_q 1', () => generateDenseCase({ b: 3, sQ: 1, sK: 130, hQ: 16, hK: 1, varlen: true, causal: false }, 22), [16, 1, 1]],
  ['dense h_k 1, s_q 2 (lse a view)', () => generateDenseCase({ b: 2, sQ: 2, sK: 90, hQ: 16, hK: 1, varlen: true, causal: true }, 24), [32, 1, 16]],
  ['sparse MODEL1 s_q 2 with extra cache and sink (lse a view of what the kernels wrote)', () => generateSparseCase({
    b: 2, sQ: 2, hQ: 64, dQK: 512, sink: true, main: { sK: 200, topk: 64, blockSize: 64, withLength: true }, extra: { sK: 100, topk: 64, blockSize: 2 },
  }, 23), [128, 1, 64]],
];

describe('calls issued on the calling thread', () => {
  for (const [name, make, lseStrides] of CASES) {
    it(`${name}: bitwise equal to the host-tensor call, with new and with preallocated outputs`, async () => {
      const c = make();
      const viaWorker = await session.decode({ ...c.args, schedMeta: getMlaMetadata() }) as DecodeResult<HostTensor>;
      const dev = await onDevice(session, c);
      const fresh = await session.decode(dev);
      expect(fresh.out).toBeInstanceOf(DeviceTensor);
      expect(fresh.lse.strides).toEqual(lseStrides);
      expect(await hostOf(session, fresh)).toEqual([bits(viaWorker.out), bits(viaWorker.lse)]);
      const out = await session.allocate(fresh.out.dtype, fresh.out.shape);
      const lse = await session.allocate('fp32', fresh.lse.shape, fresh.lse.strides);
      const given = await session.decode(dev, { out, lse });
      expect(given.out).toBe(out);
      expect(given.lse).toBe(lse);
      expect(await hostOf(session, given)).toEqual([bits(viaWorker.out), bits(viaWorker.lse)]);
      // Only one of them preallocated: the other comes from the pool.
      const half = await session.decode(dev, { lse });
      expect(half.lse).toBe(lse);
      expect(half.out).not.toBe(out);
      expect(await hostOf(session, half)).toEqual([bits(viaWorker.out), bits(viaWorker.lse)]);
      for (const t of [fresh.out, fresh.lse, half.out, out, lse]) (t as DeviceTensor).dispose();
    });
  }

  it('a call made while a download is still queued runs after it (stream order is call order)', async () => {
    const a = generateDenseCase({ b: 2, sQ: 1, sK: 64, hQ: 8, hK: 1, varlen: false, causal: false }, 31);
    const b = generateDenseCase({ b: 2, sQ: 1, sK: 64, hQ: 8, hK: 1, varlen: false, causal: false }, 32);
    const want = await session.decode({ ...a.args, schedMeta: getMlaMetadata() }) as DecodeResult<HostTensor>;
    const devA = await onDevice(session, a);
    const devB = await onDevice(session, b);
    const first = await session.decode(devA);
    const out = first.out as DeviceTensor;
    const lse = first.lse as DeviceTensor;
    // Queued on the worker, not yet issued when the next call comes: that call must wait its turn.
    const downloading = Promise.all([session.download(out), session.download(lse)]);
    const second = session.decode(devB, { out, lse });
    const [o, l] = await downloading;
    expect([bits(o), bits(l)]).toEqual([bits(want.out), bits(want.lse)]);
    await second;
    out.dispose();
    lse.dispose();
  });

  it('the plan cache serves no stale plan: a changed scalar or tensor is a new plan; a disposed tensor is refused', async () => {
    const c = generateDenseCase({ b: 2, sQ: 1, sK: 64, hQ: 8, hK: 1, varlen: false, causal: false }, 41);
    const dev = await onDevice(session, c);
    const base = await hostOf(session, await session.decode(dev));
    const scaled = await hostOf(session, await session.decode({ ...dev, schedMeta: getMlaMetadata(), softmaxScale: 0.01 }));
    expect(scaled).not.toEqual(base);
    const want = await session.decode({ ...c.args, softmaxScale: 0.01, schedMeta: getMlaMetadata() }) as DecodeResult<HostTensor>;
    expect(scaled).toEqual([bits(want.out), bits(want.lse)]);
    (dev.kCache as DeviceTensor).dispose();
    const e = await session.decode({ ...dev, schedMeta: getMlaMetadata() }).then(() => null, (x: unknown) => x);
    expect(e).toBeInstanceOf(FlashMLAError);
    expect(e).toMatchObject({ code: 'E_DISPOSED', argument: 'kCache' });
  });

  it('61 calls of a step share one sched meta: the scheduler runs once', async () => {
    const c = generateSparseCase({ b: 2, sQ: 1, hQ: 64, dQK: 576, main: { sK: 128, topk: 64, blockSize: 64 } }, 51);
    const dev = await onDevice(session, c);
    const before = { ...session.stats };
    for (let l = 0; l < 61; l++) {
      const r = await session.decode(dev);
      (r.out as DeviceTensor).dispose();
      (r.lse as DeviceTensor).dispose();
    }
    expect(session.stats.decodes - before.decodes).toBe(61);
    expect(session.stats.schedMetaRuns - before.schedMetaRuns).toBe(1);
  });
});

describe('preallocated outputs are checked like any argument', () => {
  let fm: FlashMLA;
  let dev: DecodeArgs;
  let c: DecodeCase;
  beforeAll(async () => {
    fm = await FlashMLA.open({ backend: 'cuda', library });
    c = generateDenseCase({ b: 2, sQ: 1, sK: 64, hQ: 8, hK: 1, varlen: false, causal: false }, 61);
    dev = { ...c.args, schedMeta: getMlaMetadata() };
    for (const k of TENSOR_ARG_KEYS) if (c.args[k]) (dev as unknown as Record<string, Tensor>)[k] = await fm.upload(c.args[k] as HostTensor);
  });
  afterAll(() => fm.dispose());

  const refused = async (p: Promise<unknown>, code: string, argument: string): Promise<void> => {
    const e = await p.then(() => null, (x: unknown) => x);
    expect(e).toBeInstanceOf(FlashMLAError);
    expect({ code: (e as FlashMLAError).code, argument: (e as FlashMLAError).argument }, (e as Error).message).toEqual({ code, argument });
  };

  it('wrong shape, dtype, strides, kind, disposed, another device, host q, reference backend', async () => {
    const lse = await fm.allocate('fp32', [2, 8, 1]);
    await refused(fm.flashMlaWithKvCache(dev, { out: await fm.allocate('bf16', [2, 1, 8, 256]) }), 'E_SHAPE', 'options.out');
    await refused(fm.flashMlaWithKvCache(dev, { out: await fm.allocate('fp16', [2, 1, 8, 512]) }), 'E_DTYPE', 'options.out');
    await refused(fm.flashMlaWithKvCache(dev, { lse: await fm.allocate('fp32', [2, 1, 8]) }), 'E_SHAPE', 'options.lse');
    await refused(fm.flashMlaWithKvCache(dev, { lse: await fm.allocate('bf16', [2, 8, 1]) }), 'E_DTYPE', 'options.lse');
    const backing = await fm.allocate('bf16', [2 * 8 * 1024]);
    const strided = await fm.wrap(backing.address, { dtype: 'bf16', shape: [2, 1, 8, 512], strides: [8192, 8192, 1024, 1] });
    await refused(fm.flashMlaWithKvCache(dev, { out: strided }), 'E_STRIDE', 'options.out');
    const host = { dtype: 'fp32', shape: [2, 8, 1], data: new Float32Array(16) } as unknown as DeviceTensor;
    await refused(fm.flashMlaWithKvCache(dev, { lse: host }), 'E_VALUE', 'options.lse');
    const gone = await fm.allocate('fp32', [2, 8, 1]);
    gone.dispose();
    await refused(fm.flashMlaWithKvCache(dev, { lse: gone }), 'E_DISPOSED', 'options.lse');
    await refused(fm.flashMlaWithKvCache({ ...c.args, schedMeta: getMlaMetadata() }, { lse }), 'E_UNSUPPORTED', 'options.lse');
    const ref = await FlashMLA.open({ backend: 'reference' });
    await refused(ref.flashMlaWithKvCache({ ...c.args, schedMeta: getMlaMetadata() }, { lse }), 'E_UNSUPPORTED', 'options.lse');
    process.env.FLASHMLA_EMU_DEVICES = '2';
    const other = await FlashMLA.open({ backend: 'cuda', library, device: 1 });
    try {
      await refused(fm.flashMlaWithKvCache(dev, { lse: await other.allocate('fp32', [2, 8, 1]) }), 'E_DEVICE', 'options.lse');
    } finally {
      await other.dispose();
      delete process.env.FLASHMLA_EMU_DEVICES;
    }
    // Nothing of the refused calls reached a launcher (FLASHMLA_EMU_EXIT=1 would have ended the process); the instance still works.
    const r = await fm.flashMlaWithKvCache(dev, { lse });
    expect(r.lse).toBe(lse);
  });

  it('an s_q > 1 call takes only an lse laid out as it returns one; allocate() makes it, and checks the strides it is given', async () => {
    const c2 = generateSparseCase({ b: 2, sQ: 2, hQ: 64, dQK: 512, main: { sK: 128, topk: 64, blockSize: 64 } }, 71);
    const dev2 = { ...c2.args, schedMeta: getMlaMetadata() } as DecodeArgs;
    for (const k of TENSOR_ARG_KEYS) if (c2.args[k]) (dev2 as unknown as Record<string, Tensor>)[k] = await fm.upload(c2.args[k] as HostTensor);
    const contiguous = await fm.allocate('fp32', [2, 64, 2]);
    const e = await fm.flashMlaWithKvCache(dev2, { lse: contiguous }).then(() => null, (x: unknown) => x as FlashMLAError);
    expect(e).toBeInstanceOf(FlashMLAError);
    expect([e!.code, e!.argument]).toEqual(['E_STRIDE', 'options.lse']);
    expect(e!.message).toMatch(/strides \(128, 1, 64\).*allocate it with those strides/);
    const view = await fm.allocate('fp32', [2, 64, 2], [128, 1, 64]);
    expect([view.strides, view.capacity]).toEqual([[128, 1, 64], 256]);
    const r = await fm.flashMlaWithKvCache(dev2, { lse: view });
    expect(r.lse).toBe(view);
    const want = await fm.flashMlaWithKvCache({ ...c2.args, schedMeta: getMlaMetadata() }) as DecodeResult<HostTensor>;
    expect(bits(await fm.download(view))).toEqual(bits(want.lse));
    await refused(fm.allocate('fp32', [2, 64, 2], [128, 1]), 'E_STRIDE', 'strides');
    await refused(fm.allocate('fp32', [2, 64, 2], [128, -1, 64]), 'E_STRIDE', 'strides');
    for (const t of [contiguous, view, r.out as DeviceTensor]) t.dispose();
  });
});

describe('the pool', () => {
  it('reuses freed blocks (no device allocation per call), and emptyCache and dispose give them back', async () => {
    const r = await openCudaSession({ library });
    if (!r.ok) throw new Error(r.reason);
    const s = r.session;
    const c = generateSparseCase({ b: 2, sQ: 1, hQ: 64, dQK: 512, main: { sK: 128, topk: 64, blockSize: 64 } }, 71);
    const dev = await onDevice(s, c);
    const step = async () => {
      const schedMeta = getMlaMetadata();
      for (let l = 0; l < 20; l++) {
        const x = await s.decode({ ...dev, schedMeta });
        (x.out as DeviceTensor).dispose();
        (x.lse as DeviceTensor).dispose();
      }
      schedMeta.dispose();
    };
    await step(); // the first step meets every size once
    const held = s.pooledBytes;
    expect(held).toBeGreaterThan(0);
    for (let k = 0; k < 5; k++) await step();
    expect(s.pooledBytes).toBe(held);
    await s.emptyCache();
    // What stays: the workspace (in use).
    expect(s.pooledBytes).toBeLessThan(held);
    await s.dispose();
    expect(s.pooledBytes).toBe(0);
  });
});
