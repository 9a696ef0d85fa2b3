import { describe, expect, test } from 'vitest';
import { FlashMLAError, type FlashMLAErrorCode } from '../../src/errors.js';
import { generateDenseCase, generateSparseCase } from '../../src/harness/cases.js';
import { referenceDecode } from '../../src/reference/index.js';
import { getMlaMetadata } from '../../src/sched-meta.js';
import type { HostTensor } from '../../src/tensor.js';
import type { DecodeArgs, HostDecodeArgs } from '../../src/types.js';
import { validateDecode } from '../../src/validate/index.js';
import { withMeta } from '../helpers/decode.js';

type Args = Omit<HostDecodeArgs, 'schedMeta'>;

const denseArgs = (): Args => generateDenseCase({ b: 2, sQ: 2, sK: 100, hQ: 4, hK: 1, varlen: true, causal: true }, 11).args;
const v32Args = (): Args => generateSparseCase({ b: 2, sQ: 1, hQ: 64, dQK: 576, main: { sK: 100, topk: 64, blockSize: 64 } }, 12).args;
const model1Args = (): Args => generateSparseCase({
  b: 2, sQ: 1, hQ: 64, dQK: 512, sink: true,
  main: { sK: 100, topk: 64, blockSize: 61, withLength: true }, extra: { sK: 50, topk: 64, blockSize: 2, withLength: true },
}, 13).args;

function expectError(args: Args | DecodeArgs, code: FlashMLAErrorCode, argument: string, message?: RegExp): void {
  const full = 'schedMeta' in args ? (args as DecodeArgs) : withMeta(args);
  let err: unknown;
  try {
    validateDecode(full);
  } catch (e) {
    err = e;
  }
  expect(err, `expected ${code} on ${argument}`).toBeInstanceOf(FlashMLAError);
  const f = err as FlashMLAError;
  expect(f.name).toBe('FlashMLAError');
  expect({ code: f.code, argument: f.argument }).toEqual({ code, argument });
  expect(f.message).toContain(argument);
  if (message) expect(f.message).toMatch(message);
}

const t = <T extends HostTensor>(x: T, patch: Partial<HostTensor>): HostTensor => ({ ...x, ...patch }) as HostTensor;

describe('valid inputs pass', () => {
  test.each([['dense', denseArgs], ['V3.2', v32Args], ['MODEL1 with everything', model1Args]])('%s', (_, make) => {
    expect(() => validateDecode(withMeta(make()))).not.toThrow();
  });
});

describe('dense: FlashMLA host checks and launcher checks', () => {
  test('schedMeta must come from getMlaMetadata', () => {
    expectError({ ...denseArgs(), schedMeta: {} as never }, 'E_VALUE', 'schedMeta');
  });
  test('q rank and dtype', () => {
    const a = denseArgs();
    expectError({ ...a, q: t(a.q as HostTensor, { shape: [2, 2, 4 * 576] , strides: undefined }) }, 'E_SHAPE', 'q');
    expectError({ ...a, q: { dtype: 'fp32', shape: [2, 2, 4, 576], data: new Float32Array(2 * 2 * 4 * 576) } }, 'E_DTYPE', 'q');
  });
  test('kCache dtype must equal q dtype', () => {
    const a = denseArgs();
    const k = a.kCache as HostTensor;
    expectError({ ...a, kCache: { ...k, dtype: 'fp16' } as HostTensor }, 'E_DTYPE', 'kCache');
  });
  test('cacheSeqlens and blockTable are int32 and required', () => {
    const a = denseArgs();
    expectError({ ...a, cacheSeqlens: null }, 'E_VALUE', 'cacheSeqlens');
    expectError({ ...a, blockTable: undefined }, 'E_VALUE', 'blockTable');
    expectError({ ...a, cacheSeqlens: { dtype: 'fp32', shape: [2], data: new Float32Array(2) } }, 'E_DTYPE', 'cacheSeqlens');
  });
  test('last dim contiguous; cacheSeqlens contiguous', () => {
    const a = denseArgs();
    const q = a.q as HostTensor;
    expectError({ ...a, q: { dtype: 'bf16', shape: [2, 2, 4, 576], strides: [2 * 4 * 576 * 2, 4 * 576 * 2, 576 * 2, 2], data: new Uint16Array(q.data.length * 2) } }, 'E_STRIDE', 'q');
    expectError({ ...a, cacheSeqlens: { dtype: 'int32', shape: [2], strides: [2], data: new Int32Array(4) } }, 'E_STRIDE', 'cacheSeqlens');
  });
  test('d_qk 512 is rejected before the launcher would exit(1)', () => {
    const q = { dtype: 'bf16' as const, shape: [1, 1, 4, 512], data: new Uint16Array(4 * 512) };
    const k = { dtype: 'bf16' as const, shape: [1, 64, 1, 512], data: new Uint16Array(64 * 512) };
    expectError({ q, kCache: k, blockTable: { dtype: 'int32', shape: [1, 1], data: new Int32Array(1) }, cacheSeqlens: { dtype: 'int32', shape: [1], data: new Int32Array(1) }, headDimV: 512 }, 'E_UNSUPPORTED', 'q', /576/);
    const q2 = { dtype: 'bf16' as const, shape: [1, 1, 4, 128], data: new Uint16Array(4 * 128) };
    expectError({ ...denseArgs(), q: q2 }, 'E_SHAPE', 'q');
  });
  test('headDimV must be 512', () => {
    expectError({ ...denseArgs(), headDimV: 576 }, 'E_VALUE', 'headDimV');
  });
  test('page block size 64, b > 0, s_q > 0, h_q % h_k == 0', () => {
    const a = denseArgs();
    const k = a.kCache as HostTensor;
    expectError({ ...a, kCache: { ...k, shape: [k.shape[0]! * 2, 32, 1, 576], strides: [32 * 576, 576, 576, 1] } as HostTensor }, 'E_UNSUPPORTED', 'kCache', /64/);
    expectError({ ...a, q: { dtype: 'bf16', shape: [0, 2, 4, 576], data: new Uint16Array(0) } }, 'E_SHAPE', 'q');
    expectError({ ...a, q: { dtype: 'bf16', shape: [2, 0, 4, 576], data: new Uint16Array(0) } }, 'E_SHAPE', 'q');
    expectError({ ...a, kCache: { ...k, shape: [k.shape[0]!, 64, 3, 576], strides: [64 * 3 * 576, 3 * 576, 576, 1], data: new Uint16Array(k.shape[0]! * 64 * 3 * 576) } as HostTensor }, 'E_SHAPE', 'kCache', /multiple/);
  });
  test('shapes of cacheSeqlens and blockTable', () => {
    const a = denseArgs();
    expectError({ ...a, cacheSeqlens: { dtype: 'int32', shape: [3], data: new Int32Array(3) } }, 'E_SHAPE', 'cacheSeqlens');
    expectError({ ...a, blockTable: { dtype: 'int32', shape: [1, 4], data: new Int32Array(4) } }, 'E_SHAPE', 'blockTable');
    expectError({ ...a, blockTable: { dtype: 'int32', shape: [2, 0], data: new Int32Array(0) }, cacheSeqlens: { dtype: 'int32', shape: [2], data: new Int32Array(2) } }, 'E_SHAPE', 'blockTable');
  });
  test('TMA: q strides must be multiples of 16 bytes, base aligned', () => {
    const a = denseArgs();
    const q = a.q as HostTensor;
    expectError({ ...a, q: { ...q, offset: 3, data: new Uint16Array(q.data.length + 8) } as HostTensor }, 'E_STRIDE', 'q', /16-byte/);
    expectError({ ...a, q: { dtype: 'bf16', shape: [2, 2, 4, 576], strides: [2 * 4 * 580, 4 * 580, 580, 1], data: new Uint16Array(2 * 2 * 4 * 580) } }, 'E_STRIDE', 'q');
    // A unit stride is only for the innermost dim; a size-1 dim's stride still goes into the descriptor.
    const k = a.kCache as HostTensor;
    expectError({ ...a, kCache: { ...k, strides: [64 * 576, 1, 1, 1] } as HostTensor }, 'E_STRIDE', 'kCache', /strides\[1\]/);
    const q1 = { dtype: 'bf16' as const, shape: [2, 2, 1, 576], strides: [2 * 600, 600, 3, 1], data: new Uint16Array(2 * 2 * 600) };
    expectError({ ...a, q: q1, kCache: { ...k, shape: [k.shape[0]!, 64, 1, 576] } as HostTensor }, 'E_STRIDE', 'q', /strides\[2\]/);
  });
  test('sparse-only arguments are rejected', () => {
    const a = denseArgs();
    expectError({ ...a, attnSink: { dtype: 'fp32', shape: [4], data: new Float32Array(4) } }, 'E_UNSUPPORTED', 'attnSink');
    expectError({ ...a, topkLength: { dtype: 'int32', shape: [2], data: new Int32Array(2) } }, 'E_UNSUPPORTED', 'topkLength');
  });
  test('cacheSeqlens beyond the block table, negative, or used block ids outside the cache (not checked by FlashMLA)', () => {
    const a = denseArgs();
    const cols = a.blockTable!.shape[1]!;
    expectError({ ...a, cacheSeqlens: { dtype: 'int32', shape: [2], data: Int32Array.from([cols * 64 + 1, 5]) } }, 'E_RANGE', 'cacheSeqlens');
    expectError({ ...a, cacheSeqlens: { dtype: 'int32', shape: [2], data: Int32Array.from([-1, 5]) } }, 'E_RANGE', 'cacheSeqlens');
    const table = new Int32Array(a.blockTable!.data as Int32Array);
    table[0] = 2147480000;
    expectError({ ...a, blockTable: { dtype: 'int32', shape: a.blockTable!.shape, data: table } }, 'E_RANGE', 'blockTable', /\[0\]\[0\]/);
    table[0] = -1;
    expectError({ ...a, blockTable: { dtype: 'int32', shape: a.blockTable!.shape, data: table } }, 'E_RANGE', 'blockTable');
  });
  test('buffers too short for shape, strides and offset', () => {
    const a = denseArgs();
    const q = a.q as HostTensor;
    expectError({ ...a, q: { ...q, data: (q.data as Uint16Array).subarray(0, 100) } as HostTensor }, 'E_BUFFER', 'q');
    expectError({ ...a, q: { ...q, offset: 1 << 24 } as HostTensor }, 'E_BUFFER', 'q');
    const bt = a.blockTable as HostTensor;
    expectError({ ...a, blockTable: { ...bt, data: new Int32Array(1) } as HostTensor }, 'E_BUFFER', 'blockTable');
  });
  test('detached buffers', () => {
    const a = denseArgs();
    const data = new Int32Array(new ArrayBuffer(8));
    structuredClone(data.buffer, { transfer: [data.buffer] });
    expectError({ ...a, cacheSeqlens: { dtype: 'int32', shape: [2], data } }, 'E_BUFFER', 'cacheSeqlens', /detached/);
  });
  test('malformed shapes, strides and scalars', () => {
    const a = denseArgs();
    const q = a.q as HostTensor;
    expectError({ ...a, q: { ...q, shape: [2, 2, -4, 576] } as HostTensor }, 'E_SHAPE', 'q');
    expectError({ ...a, q: { ...q, shape: [2, 2, NaN, 576] } as HostTensor }, 'E_SHAPE', 'q');
    expectError({ ...a, q: { ...q, strides: [1, 2, 3] } as HostTensor }, 'E_STRIDE', 'q');
    expectError({ ...a, q: { ...q, strides: [-8, 8, 8, 1] } as HostTensor }, 'E_STRIDE', 'q');
    expectError({ ...a, q: 5 as never }, 'E_VALUE', 'q');
    expectError({ ...a, softmaxScale: NaN }, 'E_VALUE', 'softmaxScale');
    expectError({ ...a, softmaxScale: Infinity }, 'E_VALUE', 'softmaxScale');
    expectError({ ...a, causal: 'yes' as never }, 'E_VALUE', 'causal');
  });
  test('non-finite q values would give NaN rows', () => {
    const a = denseArgs();
    const q = a.q as HostTensor;
    const data = new Uint16Array(q.data as Uint16Array);
    data[5] = 0x7fc0;
    expectError({ ...a, q: { ...q, data } as HostTensor }, 'E_VALUE', 'q', /finite/);
  });
});

describe('sparse: FlashMLA host checks, launcher checks (docs/flashmla-interface.md#launcher-checks) and ranges', () => {
  test('causal and isFp8Kvcache', () => {
    expectError({ ...v32Args(), causal: true }, 'E_UNSUPPORTED', 'causal');
    expectError({ ...v32Args(), isFp8Kvcache: false }, 'E_UNSUPPORTED', 'isFp8Kvcache');
  });
  test('h_kv must be 1, h_q 64 or 128, d_qk 576 or 512', () => {
    const a = v32Args();
    const k = a.kCache as HostTensor;
    expectError({ ...a, kCache: { ...k, shape: [k.shape[0]!, 32, 2, 656], strides: [k.strides![0]!, 1312, 656, 1] } as HostTensor }, 'E_UNSUPPORTED', 'kCache', /MQA/);
    const q = { dtype: 'bf16' as const, shape: [2, 1, 96, 576], data: new Uint16Array(2 * 96 * 576) };
    expectError({ ...a, q }, 'E_UNSUPPORTED', 'q', /64 or 128/);
    const q2 = { dtype: 'bf16' as const, shape: [2, 1, 64, 256], data: new Uint16Array(2 * 64 * 256) };
    expectError({ ...a, q: q2 }, 'E_SHAPE', 'q');
  });
  test('q must be bf16, kCache uint8, indices int32, sink fp32', () => {
    const a = model1Args();
    const q = a.q as HostTensor;
    expectError({ ...a, q: { ...q, dtype: 'fp16' } as HostTensor }, 'E_DTYPE', 'q');
    expectError({ ...a, indices: { dtype: 'fp32', shape: a.indices!.shape, data: new Float32Array((a.indices!.data as Int32Array).length) } }, 'E_DTYPE', 'indices');
    expectError({ ...a, attnSink: { dtype: 'int32', shape: [64], data: new Int32Array(64) } }, 'E_DTYPE', 'attnSink');
  });
  test('layout mismatch: a MODEL1 cache with V3.2 queries', () => {
    const a = model1Args();
    const v = v32Args();
    expectError({ ...a, q: v.q, extraKCache: null, extraIndicesInKvcache: null, extraTopkLength: null }, 'E_SHAPE', 'kCache', /656/);
  });
  test('stride(1) must be the token size; block stride a multiple of 16 and no overlap', () => {
    const a = model1Args();
    const k = a.kCache as HostTensor;
    expectError({ ...a, kCache: { ...k, strides: [k.strides![0]!, 576, 584, 1] } as HostTensor }, 'E_STRIDE', 'kCache', /584/);
    expectError({ ...a, kCache: { ...k, shape: [2, 61, 1, 584], strides: [61 * 584, 584, 584, 1], data: new Uint8Array(2 * 61 * 584) } as HostTensor }, 'E_STRIDE', 'kCache', /16/);
    expectError({ ...a, kCache: { ...k, shape: [2, 61, 1, 584], strides: [61 * 576, 584, 584, 1] } as HostTensor }, 'E_STRIDE', 'kCache', /overlap/);
    expectError({ ...a, kCache: { ...k, offset: 8 } as HostTensor }, 'E_STRIDE', 'kCache', /16/);
  });
  test('topk and extra_topk must be multiples of 64', () => {
    const a = v32Args();
    expectError({ ...a, indices: { dtype: 'int32', shape: [2, 1, 32], data: new Int32Array(64).fill(-1) } }, 'E_UNSUPPORTED', 'indices', /64/);
    const m = model1Args();
    expectError({ ...m, extraIndicesInKvcache: { dtype: 'int32', shape: [2, 1, 96], data: new Int32Array(192).fill(-1) }, extraTopkLength: null }, 'E_UNSUPPORTED', 'extraIndicesInKvcache');
  });
  test('extra cache and extra indices come together', () => {
    const m = model1Args();
    expectError({ ...m, extraIndicesInKvcache: null }, 'E_VALUE', 'extraIndicesInKvcache');
    expectError({ ...m, extraKCache: null, extraTopkLength: null }, 'E_VALUE', 'extraIndicesInKvcache');
    expectError({ ...m, extraKCache: null, extraIndicesInKvcache: null }, 'E_VALUE', 'extraTopkLength');
  });
  test('shapes of indices, topkLength, attnSink', () => {
    const m = model1Args();
    expectError({ ...m, indices: { dtype: 'int32', shape: [3, 1, 64], data: new Int32Array(192).fill(-1) } }, 'E_SHAPE', 'indices');
    expectError({ ...m, topkLength: { dtype: 'int32', shape: [3], data: new Int32Array(3) } }, 'E_SHAPE', 'topkLength');
    expectError({ ...m, attnSink: { dtype: 'fp32', shape: [128], data: new Float32Array(128) } }, 'E_SHAPE', 'attnSink');
  });
  test('indices must be -1 or inside the cache (FlashMLA would fault)', () => {
    for (const bad of [-2, -2147483648, 1 << 30]) {
      const a = v32Args();
      (a.indices!.data as Int32Array)[3] = bad;
      expectError(a, 'E_RANGE', 'indices', /\[0\]\[0\]\[3\]/);
    }
    const m = model1Args();
    (m.extraIndicesInKvcache!.data as Int32Array)[0] = 1e9;
    (m.extraTopkLength!.data as Int32Array)[0] = 64;
    expectError(m, 'E_RANGE', 'extraIndicesInKvcache');
  });
  test('topkLength and extraTopkLength within [0, topk]', () => {
    const m = model1Args();
    (m.topkLength!.data as Int32Array)[1] = 65;
    expectError(m, 'E_RANGE', 'topkLength');
    const m2 = model1Args();
    (m2.extraTopkLength!.data as Int32Array)[0] = -1;
    expectError(m2, 'E_RANGE', 'extraTopkLength');
  });
  test('NaN attention sink (±Infinity are fine)', () => {
    const m = model1Args();
    (m.attnSink!.data as Float32Array)[3] = NaN;
    expectError(m, 'E_VALUE', 'attnSink');
    (m.attnSink!.data as Float32Array).fill(Infinity, 0, 10);
    (m.attnSink!.data as Float32Array)[3] = -Infinity;
    expect(() => validateDecode(withMeta(m))).not.toThrow();
  });
  test('an empty cache (no block for -1 entries to read)', () => {
    const a = v32Args();
    expectError({ ...a, kCache: { dtype: 'uint8', shape: [0, 64, 1, 656], data: new Uint8Array(0) } }, 'E_SHAPE', 'kCache');
  });
});

describe('FlashMLASchedMeta', () => {
  test('the first call records the configuration; later calls must match', async () => {
    const meta = getMlaMetadata();
    const a = model1Args();
    await referenceDecode({ ...a, schedMeta: meta });
    expect(meta.haveInitialized).toBe(true);
    expect(meta.config).toMatchObject({ b: 2, sQ: 1, hQ: 64, pageBlockSize: 61, hK: 1, topk: 64, extraPageBlockSize: 2, extraTopk: 64, isFp8Kvcache: true, causal: false });
    await referenceDecode({ ...a, schedMeta: meta }); // same config: fine
    const other = generateSparseCase({ b: 3, sQ: 1, hQ: 64, dQK: 512, main: { sK: 100, topk: 64, blockSize: 61 } }, 1).args;
    await expect(referenceDecode({ ...other, schedMeta: meta })).rejects.toMatchObject({ code: 'E_SCHED_META', argument: 'schedMeta' });
    const v = v32Args();
    await expect(referenceDecode({ ...v, schedMeta: meta })).rejects.toThrow(/inconsistent with sched_meta/);
  });
  test('a changed cacheSeqlens or topkLength is refused: the schedule was made for the old values', async () => {
    const meta = getMlaMetadata();
    const a = denseArgs();
    await referenceDecode({ ...a, schedMeta: meta });
    const L = new Int32Array(a.cacheSeqlens!.data as Int32Array);
    L[1] = L[1]! - 1;
    await expect(referenceDecode({ ...a, cacheSeqlens: { dtype: 'int32', shape: [2], data: L }, schedMeta: meta }))
      .rejects.toMatchObject({ code: 'E_SCHED_META', message: expect.stringMatching(/cacheSeqlens\[1\]/) });
    const m = model1Args();
    const meta2 = getMlaMetadata();
    await referenceDecode({ ...m, schedMeta: meta2 });
    const lengths = new Int32Array(m.extraTopkLength!.data as Int32Array);
    lengths[0] = lengths[0] === 0 ? 1 : 0;
    await expect(referenceDecode({ ...m, extraTopkLength: { dtype: 'int32', shape: [2], data: lengths }, schedMeta: meta2 }))
      .rejects.toMatchObject({ code: 'E_SCHED_META' });
    await referenceDecode({ ...m, schedMeta: meta2 }); // the original values still fit
  });
  test('a call that fails validation leaves the sched meta untouched', async () => {
    const meta = getMlaMetadata();
    await expect(referenceDecode({ ...denseArgs(), headDimV: 1, schedMeta: meta })).rejects.toBeInstanceOf(FlashMLAError);
    expect(meta.haveInitialized).toBe(false);
  });
});
