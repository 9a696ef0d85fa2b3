// Sparse prefill through the whole native path (addon → FlashMLA build → prefill launchers) on the
// CPU emulator of tests/emulator, against the float64 oracle within FlashMLA's prefill tolerances
// (docs/cuda-path.md#prefill): host and device tensors on emulated sm90 and sm100 devices, every
// per-architecture refusal, builds without prefill launchers or kernels, validate: true, graphs.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { flashMlaSparseFwd } from '../../src/api.js';
import { DeviceTensor } from '../../src/device-tensor.js';
import { FlashMLAError } from '../../src/errors.js';
import { FlashMLA } from '../../src/flashmla.js';
import { checkIsAllclose, TOLERANCES } from '../../src/harness/metrics.js';
import { oraclePrefill } from '../../src/harness/prefill-oracle.js';
import { generatePrefillCase, prefillTestGrid, type PrefillCaseParams } from '../../src/harness/prefill-cases.js';
import type { HostTensor, Tensor } from '../../src/tensor.js';
import type { HostSparseFwdArgs, SparseFwdArgs, SparseFwdResult } from '../../src/types.js';
import { SPARSE_FWD_TENSOR_KEYS } from '../../src/validate/args.js';
import { buildEmulator } from '../emulator/build.mjs';
import { useLoggedEmulator } from '../helpers/emulator.js';

const emulator = useLoggedEmulator('native-prefill');

afterAll(() => {
  delete process.env.FLASHMLA_LIBRARY;
});

const refused = async (p: Promise<unknown>, code: string, argument: string | undefined, message?: RegExp): Promise<void> => {
  const e = await p.then(() => null, (x: unknown) => x);
  expect(e).toBeInstanceOf(FlashMLAError);
  expect({ code: (e as FlashMLAError).code, argument: (e as FlashMLAError).argument }, (e as Error).message).toEqual({ code, argument });
  if (message !== undefined) expect((e as Error).message).toMatch(message);
};

function expectOracle(c: HostSparseFwdArgs, got: SparseFwdResult<HostTensor>): void {
  const ref = oraclePrefill(c);
  for (const [k, tol] of [['out', TOLERANCES.prefillOut], ['maxLogits', TOLERANCES.prefillMaxLogits], ['lse', TOLERANCES.prefillLse]] as const) {
    expect(checkIsAllclose(k, got[k], ref[k], tol).reason, k).toBe('');
  }
}

/** Every tensor argument uploaded to `fm`. */
async function onDevice(fm: FlashMLA, args: HostSparseFwdArgs): Promise<{ args: SparseFwdArgs; uploaded: DeviceTensor[] }> {
  const uploaded: DeviceTensor[] = [];
  const moved: Record<string, Tensor> = {};
  for (const k of SPARSE_FWD_TENSOR_KEYS) {
    const t = args[k];
    if (t === null || t === undefined) continue;
    const d = await fm.upload(t);
    uploaded.push(d);
    moved[k] = d;
  }
  return { args: { ...args, ...moved } as SparseFwdArgs, uploaded };
}

async function downloadAll(fm: FlashMLA, r: SparseFwdResult<Tensor>): Promise<SparseFwdResult<HostTensor>> {
  const out: Partial<SparseFwdResult<HostTensor>> = {};
  for (const k of ['out', 'maxLogits', 'lse'] as const) {
    expect(r[k]).toBeInstanceOf(DeviceTensor);
    out[k] = await fm.download(r[k] as DeviceTensor);
    (r[k] as DeviceTensor).dispose();
  }
  return out as SparseFwdResult<HostTensor>;
}

/** FlashMLA's grid, cut to sizes the float64 oracle checks quickly: s_q ≤ 6, every feature combination kept. */
const CUT_GRID = prefillTestGrid().filter((p) => p.sQ <= 6 && (p.sink === undefined || p.sKv === 114));
const small = (p: Partial<PrefillCaseParams>, seed: number) => generatePrefillCase({ sQ: 2, sKv: 200, topk: 128, hQ: 64, dQK: 576, ...p }, seed).args;

for (const arch of ['sm90', 'sm100'] as const) {
  describe(`sparse prefill on an emulated ${arch} device`, () => {
    let fm: FlashMLA;
    beforeAll(async () => {
      process.env.FLASHMLA_EMU_ARCH = arch;
      fm = await FlashMLA.open({ backend: 'cuda', library: emulator.library });
    });
    afterAll(() => fm.dispose());

    it('runs on CUDA (the cut grid covers every launcher of the architecture)', () => {
      expect(fm.backend).toBe('cuda');
      expect(CUT_GRID.length).toBeGreaterThanOrEqual(20);
    });

    for (const [n, p] of CUT_GRID.entries()) {
      const c = generatePrefillCase(p, 700 + n);
      it(`host tensors: ${c.name}`, async () => {
        expectOracle(c.args, await fm.flashMlaSparseFwd(c.args) as SparseFwdResult<HostTensor>);
        expect(emulator.memoryLog()).toBe('');
      });
    }

    for (const [n, p] of CUT_GRID.filter((_, i) => i % 3 === 0).entries()) {
      const c = generatePrefillCase(p, 800 + n);
      it(`device tensors, device outputs: ${c.name}`, async () => {
        const { args, uploaded } = await onDevice(fm, c.args);
        expectOracle(c.args, await downloadAll(fm, await fm.flashMlaSparseFwd(args)));
        for (const t of uploaded) t.dispose();
        expect(emulator.memoryLog()).toBe('');
      });
    }

    it('h_q 128 with d_qk 512 and topk > 1280 (sm100: head128 instead of small-topk)', async () => {
      const c = generatePrefillCase({ sQ: 1, sKv: 1500, topk: 1408, hQ: 128, dQK: 512, withLength: true }, 31);
      expectOracle(c.args, await fm.flashMlaSparseFwd(c.args) as SparseFwdResult<HostTensor>);
    });

    it('a device q with host kv and indices: device outputs', async () => {
      const c = small({ sink: true }, 32);
      const q = await fm.upload(c.q);
      expectOracle(c, await downloadAll(fm, await fm.flashMlaSparseFwd({ ...c, q })));
      q.dispose();
    });

    it('validate: true downloads device q, indices, topkLength, attnSink and the used kv rows', async () => {
      const c = small({ withLength: true, sink: true }, 33);
      const { args, uploaded } = await onDevice(fm, c);
      expectOracle(c, await downloadAll(fm, await fm.flashMlaSparseFwd(args, { validate: true })));
      // A NaN in a kv row the call uses (the first used index: inside its token's topkLength, in range).
      const idx = c.indices.data as Int32Array;
      const lengths = c.topkLength!.data as Int32Array;
      const at = Array.from(idx.keys()).find((i) => i % 128 < lengths[Math.floor(i / 128)]! && idx[i]! >= 0 && idx[i]! < 200)!;
      const t = idx[at]!;
      const kvData = Uint16Array.from(c.kv.data as Uint16Array);
      kvData[t * 576 + 3] = 0x7fc0;
      const kv = await fm.upload({ ...c.kv, data: kvData });
      await refused(fm.flashMlaSparseFwd({ ...args, kv }, { validate: true }), 'E_VALUE', 'kv', new RegExp(`\\[${t}, 0, 3\\]`));
      // A topkLength beyond topk.
      const topkLength = await fm.upload({ dtype: 'int32', shape: [2], data: Int32Array.from([1, 129]) });
      await refused(fm.flashMlaSparseFwd({ ...args, topkLength }, { validate: true }), 'E_RANGE', 'topkLength');
      for (const x of [...uploaded, kv, topkLength]) x.dispose();
    });

    it('a device q whose base is not 16-byte aligned is refused before any launch', async () => {
      const c = small({}, 34);
      const n = (c.q.data as Uint16Array).length;
      const padded = new Uint16Array(n + 8);
      padded.set(c.q.data as Uint16Array, 1);
      const q = await fm.upload({ dtype: 'bf16', shape: [n + 8], data: padded });
      const wrapped = await fm.wrap(q.address + 2n, { dtype: 'bf16', shape: c.q.shape, capacity: n });
      await refused(fm.flashMlaSparseFwd({ ...c, q: wrapped }), 'E_STRIDE', 'q', /16-byte aligned/);
      q.dispose();
    });

    it('the arguments are validated first (E_SHAPE, E_DTYPE naming the argument)', async () => {
      const c = small({}, 35);
      await refused(fm.flashMlaSparseFwd({ ...c, kv: { dtype: 'bf16', shape: [200, 1, 512], data: new Uint16Array(200 * 512) } }), 'E_SHAPE', 'kv');
      await refused(fm.flashMlaSparseFwd({ ...c, indices: { ...c.indices, dtype: 'fp32', data: new Float32Array(256) } }), 'E_DTYPE', 'indices');
    });
  });
}

describe('per-architecture refusals (FlashMLA launchers whose KU_ASSERTs would end the process)', () => {
  const open = async (arch: 'sm90' | 'sm100', backend: 'cuda' | 'auto', lib = emulator.library) => {
    process.env.FLASHMLA_EMU_ARCH = arch;
    return FlashMLA.open({ backend, library: lib });
  };

  it('sm90: topk must be a multiple of 128; under auto host tensors run on the reference', async () => {
    const c = small({ topk: 64 }, 41);
    const cuda = await open('sm90', 'cuda');
    await refused(cuda.flashMlaSparseFwd(c), 'E_UNSUPPORTED', 'indices', /sm90 \(Hopper\) sparse prefill kernel needs topk .* multiple of 128, got 64/);
    const { args, uploaded } = await onDevice(cuda, c);
    await refused(cuda.flashMlaSparseFwd(args), 'E_UNSUPPORTED', 'indices');
    for (const t of uploaded) t.dispose();
    await cuda.dispose();
    const auto = await open('sm90', 'auto');
    expect(auto.backend).toBe('cuda');
    expectOracle(c, await auto.flashMlaSparseFwd(c) as SparseFwdResult<HostTensor>);
    await auto.dispose();
  });

  it('sm100: topk a multiple of 64 (head64, small-topk) or 128 (head128); h_q 128 with d_qk 576 is head128', async () => {
    const cuda = await open('sm100', 'cuda');
    expectOracle(small({ topk: 64 }, 42), await cuda.flashMlaSparseFwd(small({ topk: 64 }, 42)) as SparseFwdResult<HostTensor>);
    expectOracle(small({ topk: 192, hQ: 128, dQK: 512 }, 43), await cuda.flashMlaSparseFwd(small({ topk: 192, hQ: 128, dQK: 512 }, 43)) as SparseFwdResult<HostTensor>);
    await refused(cuda.flashMlaSparseFwd(small({ topk: 192, hQ: 128, dQK: 576 }, 44)), 'E_UNSUPPORTED', 'indices', /sm100 \(Blackwell\) head128 .*multiple of 128, got 192/);
    await refused(cuda.flashMlaSparseFwd(generatePrefillCase({ sQ: 1, sKv: 1400, topk: 1344, hQ: 128, dQK: 512 }, 45).args), 'E_UNSUPPORTED', 'indices', /head128/);
    await cuda.dispose();
  });

  it('validate: true on device tensors gives the verdict of the same call on host tensors (kv rows past topkLength included)', async () => {
    // A NaN in the kv row of index position 100, past topkLength 70 but inside the first block of
    // 128 positions: whatever validateSparseFwd decides about such rows, the downloaded copy must
    // hold them for it to decide the same on device tensors.
    const c = small({ sQ: 1, sKv: 300, topk: 256 }, 47);
    const kvData = Uint16Array.from(c.kv.data as Uint16Array);
    kvData[100 * 576 + 7] = 0x7f80;
    const args = { ...c, kv: { ...c.kv, data: kvData }, indices: { dtype: 'int32' as const, shape: [1, 1, 256], data: Int32Array.from({ length: 256 }, (_, p) => p) },
      topkLength: { dtype: 'int32' as const, shape: [1], data: Int32Array.from([70]) } };
    const fm = await open('sm90', 'cuda');
    const verdict = (p: Promise<unknown>) => p.then(() => 'ran', (e: FlashMLAError) => `${e.code} ${e.argument} ${e.message}`);
    const onHost = await verdict(fm.flashMlaSparseFwd(args));
    const { args: dev, uploaded } = await onDevice(fm, args);
    const result = fm.flashMlaSparseFwd(dev, { validate: true });
    expect(await verdict(result.then((r) => downloadAll(fm, r)))).toBe(onHost);
    for (const t of uploaded) t.dispose();
    await fm.dispose();
    expect(emulator.memoryLog()).toBe('');
  });

  it('sm100: index rows must be 32-byte aligned (a device view at a 16-byte offset, or an odd row stride)', async () => {
    const c = small({}, 46);
    const padded = new Int32Array(4 + (c.indices.data as Int32Array).length);
    padded.set(c.indices.data as Int32Array, 4);
    for (const arch of ['sm90', 'sm100'] as const) {
      const fm = await open(arch, 'cuda');
      const indices = await fm.upload({ dtype: 'int32', shape: [padded.length], data: padded });
      // The same indices 16 bytes into an allocation (cudaMalloc bases are 256-byte aligned).
      const view = await fm.wrap(indices.address + 16n, { dtype: 'int32', shape: c.indices.shape, capacity: padded.length - 4 });
      if (arch === 'sm100') await refused(fm.flashMlaSparseFwd({ ...c, indices: view }), 'E_STRIDE', 'indices', /32-byte aligned/);
      else expectOracle(c, await fm.flashMlaSparseFwd({ ...c, indices: view }) as SparseFwdResult<HostTensor>);
      indices.dispose();
      const odd = new Int32Array(2 * 132);
      for (let s = 0; s < 2; s++) odd.set((c.indices.data as Int32Array).subarray(s * 128, s * 128 + 128), s * 132);
      const oddArgs = { ...c, indices: { dtype: 'int32' as const, shape: [2, 1, 128], strides: [132, 128, 1], data: odd } };
      if (arch === 'sm100') await refused(fm.flashMlaSparseFwd(oddArgs), 'E_STRIDE', 'indices', /multiple of 8/);
      else expectOracle(oddArgs, await fm.flashMlaSparseFwd(oddArgs) as SparseFwdResult<HostTensor>);
      await fm.dispose();
    }
    expect(emulator.memoryLog()).toBe('');
  });
});

describe('builds that cannot run prefill', () => {
  it('without the prefill launchers: cuda refuses naming the launcher, auto runs host tensors on the reference', async () => {
    const noPrefill = await buildEmulator({ name: 'no-prefill', exports: 'no-prefill' });
    process.env.FLASHMLA_EMU_ARCH = 'sm90';
    const info = await (await FlashMLA.open({ backend: 'cuda', library: noPrefill })).info();
    expect(info.features.v32.ok).toBe(true);
    expect(info.features.prefillV32).toEqual({ ok: false, reason: 'this FlashMLA build lacks the sm90_prefill_k576 launcher' });
    expect(info.featuresByArch?.sm100.features.prefillModel1.ok).toBe(false);
    const c = small({}, 51);
    const cuda = await FlashMLA.open({ backend: 'cuda', library: noPrefill });
    await refused(cuda.flashMlaSparseFwd(c), 'E_UNSUPPORTED', undefined, /lacks the sm90_prefill_k576 launcher/);
    const { args, uploaded } = await onDevice(cuda, c);
    await refused(cuda.flashMlaSparseFwd(args), 'E_UNSUPPORTED', undefined, /lacks the sm90_prefill_k576 launcher/);
    for (const t of uploaded) t.dispose();
    await cuda.dispose();
    const auto = await FlashMLA.open({ library: noPrefill });
    expect(auto.backend).toBe('cuda');
    expectOracle(c, await auto.flashMlaSparseFwd(c) as SparseFwdResult<HostTensor>);
    await auto.dispose();
    // The top-level function: its default instance loads FLASHMLA_LIBRARY (first use in this file).
    process.env.FLASHMLA_LIBRARY = noPrefill;
    expectOracle(c, await flashMlaSparseFwd(c));
    expectOracle(c, await flashMlaSparseFwd(c, { backend: 'auto' }));
    await refused(flashMlaSparseFwd(c, { backend: 'cuda' }), 'E_UNSUPPORTED', undefined, /lacks the sm90_prefill_k576 launcher/);
  });

  it('a launcher without GPU code for the device: refused under cuda, reference under auto', async () => {
    const noH64 = await buildEmulator({ name: 'no-h64-prefill-sm100', kernelTargets: { sm100_prefill_h64_k512: ['sm_90a'] } });
    process.env.FLASHMLA_EMU_ARCH = 'sm100';
    const c = small({ dQK: 512 }, 52);
    const cuda = await FlashMLA.open({ backend: 'cuda', library: noH64 });
    expect((await cuda.info()).features.prefillModel1.reason).toMatch(/^only h_q 128, topk ≤ 1280, h_q 128, topk > 1280: .*no GPU code for compute capability 10\.0 in its sm100_prefill_h64_k512 kernels/);
    await refused(cuda.flashMlaSparseFwd(c), 'E_UNSUPPORTED', undefined, /no GPU code for compute capability 10\.0 in its sm100_prefill_h64_k512 kernels \(they are built for sm_90a\)/);
    expectOracle(small({}, 53), await cuda.flashMlaSparseFwd(small({}, 53)) as SparseFwdResult<HostTensor>);
    await cuda.dispose();
    const auto = await FlashMLA.open({ library: noH64 });
    expectOracle(c, await auto.flashMlaSparseFwd(c) as SparseFwdResult<HostTensor>);
    await auto.dispose();
    expect(emulator.memoryLog()).toBe('');
  });
});

describe('prefill in a CUDA graph', () => {
  it('device-tensor prefills are captured and replayed (reading the inputs again); host tensors and validate: true are refused', async () => {
    process.env.FLASHMLA_EMU_ARCH = 'sm90';
    const fm = await FlashMLA.open({ backend: 'cuda', library: emulator.library });
    const c = small({ withLength: true, sink: true }, 61);
    const { args, uploaded } = await onDevice(fm, c);
    let captured: SparseFwdResult<Tensor> | undefined;
    const graph = await fm.captureGraph(async () => {
      captured = await fm.flashMlaSparseFwd(args);
    });
    await graph.replay();
    const first: Partial<SparseFwdResult<HostTensor>> = {};
    for (const k of ['out', 'maxLogits', 'lse'] as const) first[k] = await fm.download(captured![k] as DeviceTensor);
    expectOracle(c, first as SparseFwdResult<HostTensor>);
    // A replay gives the direct call's results, bit for bit.
    const direct = await downloadAll(fm, await fm.flashMlaSparseFwd(args));
    await graph.replay();
    for (const k of ['out', 'maxLogits', 'lse'] as const) {
      const again = await fm.download(captured![k] as DeviceTensor);
      expect(Buffer.from(again.data.buffer, again.data.byteOffset, again.data.byteLength)
        .equals(Buffer.from(direct[k].data.buffer, direct[k].data.byteOffset, direct[k].data.byteLength)), k).toBe(true);
    }
    await refused(fm.captureGraph(async () => { await fm.flashMlaSparseFwd(c); }), 'E_UNSUPPORTED', 'q');
    await refused(fm.captureGraph(async () => { await fm.flashMlaSparseFwd(args, { validate: true }); }), 'E_UNSUPPORTED', 'options.validate');
    graph.dispose();
    for (const k of ['out', 'maxLogits', 'lse'] as const) (captured![k] as DeviceTensor).dispose();
    for (const t of uploaded) t.dispose();
    await fm.dispose();
    expect(emulator.memoryLog()).toBe('');
  });
});

describe('rows with nothing to attend', () => {
  it('all-invalid rows and ±Infinity sinks give the oracle\'s 0 / −inf / +inf on both architectures', async () => {
    for (const arch of ['sm90', 'sm100'] as const) {
      process.env.FLASHMLA_EMU_ARCH = arch;
      const fm = await FlashMLA.open({ backend: 'cuda', library: emulator.library });
      const c = generatePrefillCase({ sQ: 8, sKv: 64, topk: 128, hQ: 64, dQK: 512, sink: true, withLength: true, allInvalid: true }, 71).args;
      const got = await fm.flashMlaSparseFwd(c) as SparseFwdResult<HostTensor>;
      expectOracle(c, got);
      await fm.dispose();
    }
  });
});
