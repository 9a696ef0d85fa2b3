// Streams and events (docs/cuda-path.md#streams-and-events) on the CPU emulator: an instance opened
// on another instance's stream shares it (and never destroys it), synchronize() and recorded events
// resolve off the event loop, and misuse (a stream of another device, a handle the runtime does not
// know, a stream with the reference backend, a disposed event) is a FlashMLAError.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FlashMLAError } from '../../src/errors.js';
import { FlashMLA } from '../../src/flashmla.js';
import { generateDenseCase } from '../../src/harness/cases.js';
import { DeviceTensor } from '../../src/device-tensor.js';
import { getMlaMetadata } from '../../src/sched-meta.js';
import type { HostTensor, Tensor } from '../../src/tensor.js';
import type { DecodeArgs, DecodeResult } from '../../src/types.js';
import { TENSOR_ARG_KEYS } from '../../src/validate/args.js';
import { buildEmulator } from '../emulator/build.mjs';

let library: string;
let fm: FlashMLA;

beforeAll(async () => {
  library = await buildEmulator();
  process.env.FLASHMLA_EMU_ARCH = 'sm90';
  fm = await FlashMLA.open({ backend: 'cuda', library });
});
afterAll(() => fm.dispose());

const refused = async (p: Promise<unknown> | (() => unknown), code: string, argument?: string): Promise<void> => {
  const e = typeof p === 'function' ? await Promise.resolve().then(p).then(() => null, (x: unknown) => x) : await p.then(() => null, (x: unknown) => x);
  expect(e).toBeInstanceOf(FlashMLAError);
  expect((e as FlashMLAError).code, (e as Error).message).toBe(code);
  if (argument !== undefined) expect((e as FlashMLAError).argument).toBe(argument);
};

const bits = (t: HostTensor): Uint8Array => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength).slice();

async function uploaded(x: FlashMLA, args: Omit<DecodeArgs, 'schedMeta'>): Promise<DecodeArgs> {
  const moved: Record<string, Tensor> = {};
  for (const k of TENSOR_ARG_KEYS) if (args[k]) moved[k] = await x.upload(args[k] as HostTensor);
  return { ...args, ...moved, schedMeta: getMlaMetadata() } as DecodeArgs;
}

describe('streams', () => {
  it('fm.stream is the instance\'s cudaStream_t; a reference instance has none', async () => {
    expect(typeof fm.stream).toBe('bigint');
    expect(fm.stream).not.toBe(0n);
    const ref = await FlashMLA.open({ backend: 'reference' });
    expect(ref.stream).toBeNull();
    await refused(ref.synchronize(), 'E_BACKEND');
    await refused(() => ref.record(), 'E_BACKEND');
  });

  it('an instance opened on another\'s stream issues its calls there, and its dispose() leaves the stream alone', async () => {
    const shared = await FlashMLA.open({ backend: 'cuda', library, stream: fm.stream! });
    expect(shared.stream).toBe(fm.stream);
    const c = generateDenseCase({ b: 2, sQ: 2, sK: 90, hQ: 8, hK: 2, varlen: true, causal: true }, 81);
    const want = await fm.flashMlaWithKvCache({ ...c.args, schedMeta: getMlaMetadata() });
    const dev = await uploaded(shared, c.args);
    const r = await shared.flashMlaWithKvCache(dev) as DecodeResult<DeviceTensor>;
    await shared.synchronize();
    expect([bits(await shared.download(r.out)), bits(await shared.download(r.lse))]).toEqual([bits(want.out), bits(want.lse)]);
    await shared.dispose();
    // The stream is still usable by its owner.
    const again = await uploaded(fm, c.args);
    const r2 = await fm.flashMlaWithKvCache(again) as DecodeResult<DeviceTensor>;
    await fm.synchronize();
    expect(bits(await fm.download(r2.out))).toEqual(bits(want.out));
  });

  it('a stream of another device is refused (E_DEVICE), as are a handle the runtime does not know and a stream without CUDA', async () => {
    process.env.FLASHMLA_EMU_DEVICES = '2';
    const one = await FlashMLA.open({ backend: 'cuda', library, device: 1 });
    try {
      await refused(FlashMLA.open({ backend: 'cuda', library, device: 0, stream: one.stream! }), 'E_DEVICE', 'options.stream');
      const same = await FlashMLA.open({ backend: 'cuda', library, device: 1, stream: one.stream! });
      expect(same.stream).toBe(one.stream);
      await same.dispose();
    } finally {
      await one.dispose();
      delete process.env.FLASHMLA_EMU_DEVICES;
    }
    // (The emulator knows its handles; a real runtime may not survive a pointer that is no stream.)
    await refused(FlashMLA.open({ backend: 'cuda', library, stream: 0x12345n }), 'E_VALUE', 'options.stream');
    await refused(FlashMLA.open({ backend: 'cuda', library, stream: 5 as unknown as bigint }), 'E_VALUE', 'options.stream');
    await refused(FlashMLA.open({ backend: 'cuda', library, stream: -1n }), 'E_VALUE', 'options.stream');
    await refused(FlashMLA.open({ backend: 'reference', stream: fm.stream! }), 'E_VALUE', 'options.stream');
  });
});

describe('events', () => {
  it('record() after queued work completes with it; await ev and ev.synchronize(); dispose is idempotent, a disposed event refuses waits', async () => {
    const c = generateDenseCase({ b: 2, sQ: 1, sK: 64, hQ: 8, hK: 1, varlen: false, causal: false }, 91);
    const dev = await uploaded(fm, c.args);
    const r = await fm.flashMlaWithKvCache(dev) as DecodeResult<DeviceTensor>;
    const ev = fm.record();
    await ev;
    await ev.synchronize();
    expect(ev.disposed).toBe(false);
    ev.dispose();
    ev.dispose();
    expect(ev.disposed).toBe(true);
    await refused(ev.synchronize(), 'E_DISPOSED');
    // Recorded while an upload is still queued: it is recorded behind it, and then waits for it.
    const pending = fm.upload(c.args.q as HostTensor);
    const behind = fm.record();
    await behind;
    (await pending).dispose();
    behind.dispose();
    r.out.dispose();
    r.lse.dispose();
  });

  it('events and synchronize end with their instance', async () => {
    const x = await FlashMLA.open({ backend: 'cuda', library });
    const ev = x.record();
    await x.dispose();
    expect(ev.disposed).toBe(true);
    await refused(ev.synchronize(), 'E_DISPOSED');
    await refused(x.synchronize(), 'E_DISPOSED');
    await refused(() => x.record(), 'E_DISPOSED');
    ev.dispose();
  });
});
