// CUDA graphs (docs/cuda-path.md#graphs) on the CPU emulator, which records the launches and
// copies issued on a capturing stream and replays them: replayed results are bitwise equal to
// direct calls, the pool memory a graph uses is not handed out while it lives, a sched meta first
// computed inside the capture is recomputed by direct calls, and what cannot be captured is refused.
import { describe, expect, it } from 'vitest';
import { FlashMLAError } from '../../src/errors.js';
import { FlashMLA } from '../../src/flashmla.js';
import { generateDenseCase, generateSparseCase, type DecodeCase } from '../../src/harness/cases.js';
import type { DeviceTensor } from '../../src/device-tensor.js';
import { getMlaMetadata } from '../../src/sched-meta.js';
import type { HostTensor, Tensor } from '../../src/tensor.js';
import type { DecodeArgs, DecodeResult } from '../../src/types.js';
import { TENSOR_ARG_KEYS } from '../../src/validate/args.js';
import { useEmulatedInstance } from '../helpers/emulator.js';

const emu = useEmulatedInstance({ exitOnStaleError: true });

const bits = (t: HostTensor): Uint8Array => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength).slice();
const hostBits = async (r: DecodeResult<Tensor>): Promise<Uint8Array[]> =>
  [bits(await emu.fm.download(r.out as DeviceTensor)), bits(await emu.fm.download(r.lse as DeviceTensor))];

async function onDevice(c: DecodeCase): Promise<Omit<DecodeArgs, 'schedMeta'>> {
  const moved: Record<string, Tensor> = {};
  for (const k of TENSOR_ARG_KEYS) if (c.args[k]) moved[k] = await emu.fm.upload(c.args[k] as HostTensor);
  return { ...c.args, ...moved } as Omit<DecodeArgs, 'schedMeta'>;
}

const refused = async (p: Promise<unknown>, code: string, argument?: string): Promise<void> => {
  const e = await p.then(() => null, (x: unknown) => x);
  expect(e).toBeInstanceOf(FlashMLAError);
  expect((e as FlashMLAError).code, (e as Error).message).toBe(code);
  if (argument !== undefined) expect((e as FlashMLAError).argument).toBe(argument);
};

describe('capture and replay', () => {
  it('replays of captured calls (sched metas computed inside the capture) are bitwise equal to direct calls', async () => {
    const cases = [
      generateDenseCase({ b: 2, sQ: 2, sK: 100, hQ: 8, hK: 2, varlen: true, causal: true }, 201),
      generateSparseCase({ b: 2, sQ: 2, hQ: 64, dQK: 512, sink: true, main: { sK: 200, topk: 64, blockSize: 64, withLength: true }, extra: { sK: 100, topk: 64, blockSize: 2 } }, 202),
      generateSparseCase({ b: 2, sQ: 1, hQ: 128, dQK: 576, main: { sK: 300, topk: 128, blockSize: 64 } }, 203),
    ];
    const want = await Promise.all(cases.map(async (c) => {
      const r = await emu.fm.flashMlaWithKvCache({ ...c.args, schedMeta: getMlaMetadata() });
      return [bits(r.out), bits(r.lse)];
    }));
    const inputs = await Promise.all(cases.map(onDevice));
    const metas = cases.map(() => getMlaMetadata());
    const outputs: DecodeResult<DeviceTensor>[] = [];
    const graph = await emu.fm.captureGraph(async () => {
      for (let i = 0; i < cases.length; i++) outputs.push(await emu.fm.flashMlaWithKvCache({ ...inputs[i]!, schedMeta: metas[i]! }) as DecodeResult<DeviceTensor>);
    });
    for (let k = 0; k < 2; k++) {
      await graph.replay();
      for (let i = 0; i < cases.length; i++) expect(await hostBits(outputs[i]!)).toEqual(want[i]);
    }
    // The sched metas were computed by the graph only: a direct call computes them again, correctly.
    for (let i = 0; i < cases.length; i++) {
      expect(await hostBits(await emu.fm.flashMlaWithKvCache({ ...inputs[i]!, schedMeta: metas[i]! }))).toEqual(want[i]);
    }
    graph.dispose();
    graph.dispose();
    await refused(graph.replay(), 'E_DISPOSED');
  });

  it('a graph keeps its pool memory: outputs disposed after capture are not handed to other calls while it lives', async () => {
    const c = generateDenseCase({ b: 2, sQ: 1, sK: 64, hQ: 8, hK: 1, varlen: false, causal: false }, 211);
    const other = generateDenseCase({ b: 2, sQ: 1, sK: 64, hQ: 8, hK: 1, varlen: false, causal: false }, 212);
    const dev = await onDevice(c);
    const devOther = await onDevice(other);
    let captured: DecodeResult<DeviceTensor> | undefined;
    const graph = await emu.fm.captureGraph(async () => {
      captured = await emu.fm.flashMlaWithKvCache({ ...dev, schedMeta: getMlaMetadata() }) as DecodeResult<DeviceTensor>;
    });
    captured!.out.dispose();
    captured!.lse.dispose();
    const direct = await emu.fm.flashMlaWithKvCache({ ...devOther, schedMeta: getMlaMetadata() }) as DecodeResult<DeviceTensor>;
    const before = await hostBits(direct);
    await graph.replay();
    expect(await hostBits(direct)).toEqual(before);
    graph.dispose();
  });

  it('replaying 61 captured calls: one sched meta per step, as a model step would', async () => {
    const c = generateSparseCase({ b: 2, sQ: 1, hQ: 64, dQK: 576, main: { sK: 128, topk: 64, blockSize: 64 } }, 221);
    const want = await emu.fm.flashMlaWithKvCache({ ...c.args, schedMeta: getMlaMetadata() });
    const dev = await onDevice(c);
    const schedMeta = getMlaMetadata();
    const outs: DecodeResult<DeviceTensor>[] = [];
    const graph = await emu.fm.captureGraph(async () => {
      for (let l = 0; l < 61; l++) outs.push(await emu.fm.flashMlaWithKvCache({ ...dev, schedMeta }) as DecodeResult<DeviceTensor>);
    });
    await graph.replay();
    for (const l of [0, 30, 60]) expect(await hostBits(outs[l]!)).toEqual([bits(want.out), bits(want.lse)]);
    graph.dispose();
  });
});

describe('what cannot be captured', () => {
  it('host tensors, validate: true, copies, waits, events and nested captures are refused inside a capture; an error ends it', async () => {
    const c = generateDenseCase({ b: 2, sQ: 1, sK: 64, hQ: 8, hK: 1, varlen: false, causal: false }, 231);
    const dev = await onDevice(c);
    const seen: Promise<void>[] = [];
    const graph = await emu.fm.captureGraph(async () => {
      seen.push(refused(emu.fm.flashMlaWithKvCache({ ...c.args, schedMeta: getMlaMetadata() }), 'E_UNSUPPORTED', 'q'));
      seen.push(refused(emu.fm.flashMlaWithKvCache({ ...dev, schedMeta: getMlaMetadata() }, { validate: true }), 'E_UNSUPPORTED', 'options.validate'));
      seen.push(refused(emu.fm.upload(c.args.q as HostTensor), 'E_UNSUPPORTED'));
      seen.push(refused(emu.fm.download(dev.q as DeviceTensor), 'E_UNSUPPORTED'));
      seen.push(refused(emu.fm.allocate('fp32', [4]), 'E_UNSUPPORTED'));
      seen.push(refused(emu.fm.synchronize(), 'E_UNSUPPORTED'));
      seen.push(refused(Promise.resolve().then(() => emu.fm.record()), 'E_UNSUPPORTED'));
      seen.push(refused(emu.fm.captureGraph(() => undefined), 'E_UNSUPPORTED'));
      await Promise.all(seen);
    });
    graph.dispose();
    // An error inside the capture ends it and comes back as it is; the instance works on.
    const boom = new Error('boom');
    await expect(emu.fm.captureGraph(() => { throw boom; })).rejects.toBe(boom);
    await refused(emu.fm.captureGraph(async () => {
      await emu.fm.flashMlaWithKvCache({ ...dev, headDimV: 256, schedMeta: getMlaMetadata() });
    }), 'E_VALUE', 'headDimV');
    const r = await emu.fm.flashMlaWithKvCache({ ...dev, schedMeta: getMlaMetadata() });
    const want = await emu.fm.flashMlaWithKvCache({ ...c.args, schedMeta: getMlaMetadata() });
    expect(await hostBits(r)).toEqual([bits(want.out), bits(want.lse)]);
  });

  it('a graph ends with its instance; the reference backend has none', async () => {
    const x = await FlashMLA.open({ backend: 'cuda', library: emu.library });
    const graph = await x.captureGraph(() => undefined);
    await x.dispose();
    expect(graph.disposed).toBe(true);
    await refused(graph.replay(), 'E_DISPOSED');
    const ref = await FlashMLA.open({ backend: 'reference' });
    await refused(ref.captureGraph(() => undefined), 'E_BACKEND');
  });
});
