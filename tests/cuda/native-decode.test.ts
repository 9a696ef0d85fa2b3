// The whole native path (addon → FlashMLA build → launchers) against the CPU emulator of
// tests/emulator, compared with the reference backend within FlashMLA's tolerances (docs/flashmla-interface.md#tolerances).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FlashMLA } from '../../src/flashmla.js';
import { generateDenseCase, generateSparseCase, type DecodeCase } from '../../src/harness/cases.js';
import { DeviceTensor } from '../../src/device-tensor.js';
import { getMlaMetadata } from '../../src/sched-meta.js';
import type { HostTensor, Tensor } from '../../src/tensor.js';
import type { DecodeArgs, DecodeResult } from '../../src/types.js';
import { expectClose, reference } from '../helpers/decode.js';
import { useLoggedEmulator } from '../helpers/emulator.js';

const emulator = useLoggedEmulator('native-decode');

async function native(fm: FlashMLA, c: DecodeCase, onDevice: boolean): Promise<DecodeResult<HostTensor>> {
  const args: DecodeArgs = { ...c.args, schedMeta: getMlaMetadata() };
  if (!onDevice) return (await fm.flashMlaWithKvCache(args)) as DecodeResult<HostTensor>;
  const uploaded: DeviceTensor[] = [];
  const up = async (t: Tensor | null | undefined) => {
    if (t === null || t === undefined) return t;
    const d = await fm.upload(t as HostTensor);
    uploaded.push(d);
    return d;
  };
  const dev: DecodeArgs = {
    ...args,
    q: (await up(args.q))!, kCache: (await up(args.kCache))!, blockTable: await up(args.blockTable), cacheSeqlens: await up(args.cacheSeqlens),
    indices: await up(args.indices), attnSink: await up(args.attnSink), extraKCache: await up(args.extraKCache),
    extraIndicesInKvcache: await up(args.extraIndicesInKvcache), topkLength: await up(args.topkLength), extraTopkLength: await up(args.extraTopkLength),
  };
  const r = await fm.flashMlaWithKvCache(dev);
  expect(r.out).toBeInstanceOf(DeviceTensor);
  const out = { out: await fm.download(r.out as DeviceTensor), lse: await fm.download(r.lse as DeviceTensor) };
  (r.out as DeviceTensor).dispose();
  (r.lse as DeviceTensor).dispose();
  for (const t of uploaded) t.dispose();
  return out;
}

async function expectAgrees(fm: FlashMLA, c: DecodeCase, onDevice = false): Promise<void> {
  const got = await native(fm, c, onDevice);
  expectClose(c.kind, got, await reference(c.args));
  expect(emulator.memoryLog()).toBe('');
}

describe('dense decode on an emulated sm90 device', () => {
  let fm: FlashMLA;
  beforeAll(async () => {
    process.env.FLASHMLA_EMU_ARCH = 'sm90';
    fm = await FlashMLA.open({ backend: 'cuda', library: emulator.library });
  });
  afterAll(() => fm.dispose());

  const cases: [string, Parameters<typeof generateDenseCase>[0]][] = [
    ['bf16, h_k 1', { b: 2, sQ: 1, sK: 140, hQ: 16, hK: 1, varlen: false, causal: false }],
    ['fp16, s_q 2, causal', { b: 2, sQ: 2, sK: 140, hQ: 16, hK: 1, varlen: true, causal: true, dtype: 'fp16' }],
    ['h_k 2, s_q 2 (regrouped q, reshaped out and lse)', { b: 2, sQ: 2, sK: 100, hQ: 8, hK: 2, varlen: true, causal: true }],
    ['h_q == h_k, s_q 3', { b: 1, sQ: 3, sK: 70, hQ: 3, hK: 3, varlen: false, causal: false }],
    ['varlen with zero lengths', { b: 6, sQ: 1, sK: 200, hQ: 8, hK: 1, varlen: true, causal: false, zeroSeqlen: true }],
    ['strided q and cache', { b: 2, sQ: 2, sK: 90, hQ: 8, hK: 1, varlen: false, causal: true, nonContiguous: true }],
  ];
  cases.forEach(([name, p], i) => {
    it(`${name}: host tensors`, async () => expectAgrees(fm, generateDenseCase(p, 100 + i)));
  });
  it('device-resident inputs give device outputs that agree', async () => {
    await expectAgrees(fm, generateDenseCase({ b: 2, sQ: 2, sK: 100, hQ: 8, hK: 2, varlen: true, causal: true }, 7), true);
  });
});

const sparseCases: [string, Parameters<typeof generateSparseCase>[0]][] = [
  ['V3.2 h64 with sink', { b: 2, sQ: 1, hQ: 64, dQK: 576, main: { sK: 256, topk: 128, blockSize: 64 }, sink: true }],
  ['V3.2 h128 s_q 2', { b: 2, sQ: 2, hQ: 128, dQK: 576, main: { sK: 300, topk: 64, blockSize: 61, varlen: true } }],
  ['MODEL1 h64, topk_length, extra cache, sink', {
    b: 2, sQ: 2, hQ: 64, dQK: 512, sink: true,
    main: { sK: 200, topk: 64, blockSize: 64, withLength: true }, extra: { sK: 100, topk: 64, blockSize: 2, withLength: true },
  }],
  ['MODEL1 h128, all-invalid rows, zero lengths', {
    b: 3, sQ: 1, hQ: 128, dQK: 512, sink: true, main: { sK: 128, topk: 64, blockSize: 64, allInvalid: true },
    extra: { sK: 100, topk: 64, blockSize: 64, zeroSeqlen: true },
  }],
];

for (const arch of ['sm90', 'sm100'] as const) {
  describe(`sparse decode on an emulated ${arch} device`, () => {
    let fm: FlashMLA;
    beforeAll(async () => {
      process.env.FLASHMLA_EMU_ARCH = arch;
      fm = await FlashMLA.open({ backend: 'cuda', library: emulator.library });
    });
    afterAll(() => fm.dispose());
    sparseCases.forEach(([name, p], i) => {
      it(name, async () => expectAgrees(fm, generateSparseCase(p, 300 + i), i % 2 === 1));
    });
    if (arch === 'sm100') {
      it('V3.2 with topk_length (sm100 accepts it)', async () => {
        await expectAgrees(fm, generateSparseCase({ b: 2, sQ: 1, hQ: 64, dQK: 576, main: { sK: 200, topk: 128, blockSize: 64, withLength: true } }, 9));
      });
    }
  });
}
