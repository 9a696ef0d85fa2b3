// Hostile callers, second round, on the reference backend (the CUDA side is in
// native-hostile.test.ts): arguments that change under the call, look-alike objects, prototype
// pollution, forged device tensors, huge extents by zero strides, offsets past 4 GiB, thread
// counts. Each ends in a FlashMLAError or a result that matches the float64 oracle.
import { afterEach, describe, expect, test } from 'vitest';
import { FlashMLAError } from '../../src/errors.js';
import { generateDenseCase, generateSparseCase } from '../../src/harness/cases.js';
import { oracleDecode } from '../../src/harness/oracle.js';
import { absIndicesToKvcacheIndices } from '../../src/kvcache/indices.js';
import { DeviceTensor } from '../../src/device-tensor.js';
import { referenceDecode } from '../../src/reference/index.js';
import { copyBytes } from '../../src/reference/workspace.js';
import { getMlaMetadata } from '../../src/sched-meta.js';
import type { HostTensor } from '../../src/tensor.js';
import type { DecodeArgs, DecodeResult } from '../../src/types.js';
import { expectClose } from '../helpers/decode.js';

afterEach(() => {
  delete (Object.prototype as Record<string, unknown>).offset;
  delete (Object.prototype as Record<string, unknown>).then;
  delete (Object.prototype as Record<string, unknown>).dtype;
});

// Big enough for the worker pool (so the call awaits, and the caller's code runs meanwhile).
const dense = () => generateDenseCase({ b: 4, sQ: 1, sK: 2048, hQ: 16, hK: 1, varlen: false, causal: false, dtype: 'bf16' }, 11);
const sparse = () => generateSparseCase({ b: 2, sQ: 1, hQ: 64, dQK: 512, main: { sK: 4096, topk: 2048, blockSize: 64 } }, 12);
const withMeta = (a: Omit<DecodeArgs, 'schedMeta'>): DecodeArgs => ({ ...a, schedMeta: getMlaMetadata() });
const oracle = (a: Omit<DecodeArgs, 'schedMeta'>) => oracleDecode(withMeta(a));

async function code(p: Promise<unknown> | (() => unknown)): Promise<string> {
  try {
    await (typeof p === 'function' ? p() : p);
    return 'no error';
  } catch (e) {
    expect(e).toBeInstanceOf(FlashMLAError);
    return (e as FlashMLAError).code;
  }
}

describe('the values validated are the values used', () => {
  test('indices and lengths rewritten right after the call is issued do not change it', async () => {
    const c = sparse();
    const want = oracle(c.args);
    const idx = (c.args.indices as HostTensor<'int32'>).data;
    const p = referenceDecode(withMeta(c.args), { threads: 2 });
    idx.fill(2 ** 30); // out of range for the cache: had the call read it, it would fail or read garbage
    expectClose('sparse', await p, want);
  });

  test('dense block tables and lengths rewritten mid-call', async () => {
    const c = dense();
    const want = oracle(c.args);
    const p = referenceDecode(withMeta(c.args), { threads: 2 });
    (c.args.blockTable as HostTensor<'int32'>).data.fill(0);
    (c.args.cacheSeqlens as HostTensor<'int32'>).data.fill(1 << 20);
    expectClose('dense', await p, want);
  });

  test('a data getter is read once; a subclass with a lying length is read through the real length', async () => {
    const c = sparse();
    const want = oracle(c.args);
    const q = c.args.q as HostTensor<'bf16'>;
    let reads = 0;
    const sneaky = {
      dtype: q.dtype, shape: q.shape, strides: q.strides, offset: q.offset,
      get data() {
        reads++;
        return reads === 1 ? q.data : new Uint16Array(1);
      },
    };
    expectClose('sparse', await referenceDecode(withMeta({ ...c.args, q: sneaky as HostTensor })), want);
    expect(reads).toBe(1);

    class Liar extends Uint8Array {
      override get length(): number {
        return 1e12;
      }
    }
    const kv = c.args.kCache as HostTensor<'uint8'>;
    const liar = new Liar(kv.data.buffer as ArrayBuffer, kv.data.byteOffset, 64); // really 64 bytes: far too short
    expect(await code(referenceDecode(withMeta({ ...c.args, kCache: { ...kv, data: liar } })))).toBe('E_BUFFER');
  });

  test('look-alike typed arrays and DataViews are refused', async () => {
    const c = sparse();
    const q = c.args.q as HostTensor<'bf16'>;
    const fake = { length: q.data.length, BYTES_PER_ELEMENT: 2, buffer: q.data.buffer };
    expect(await code(referenceDecode(withMeta({ ...c.args, q: { ...q, data: fake as unknown as Uint16Array } })))).toBe('E_DTYPE');
    const dv = new DataView(q.data.buffer);
    expect(await code(referenceDecode(withMeta({ ...c.args, q: { ...q, data: dv as unknown as Uint16Array } })))).toBe('E_DTYPE');
  });

  test('a shape Proxy that answers differently each time is read once', async () => {
    const c = sparse();
    const q = c.args.q as HostTensor<'bf16'>;
    let n = 0;
    const shape = new Proxy([...q.shape], { get: (t, k) => (k === '2' ? (n++ === 0 ? 64 : 1 << 30) : Reflect.get(t, k)) });
    expectClose('sparse', await referenceDecode(withMeta({ ...c.args, q: { ...q, shape } })), oracle(c.args));
  });

  test('a buffer detached while the call runs ends in E_BUFFER, never a wrong result', async () => {
    const c = dense();
    const kv = c.args.kCache as HostTensor<'bf16'>;
    const copy = { ...kv, data: kv.data.slice() };
    const p = referenceDecode(withMeta({ ...c.args, kCache: copy }), { threads: 2 });
    structuredClone(copy.data.buffer, { transfer: [copy.data.buffer] });
    const r = await p.then((x) => x, (e: unknown) => e);
    if (r instanceof FlashMLAError) expect(r.code).toBe('E_BUFFER');
    else expectClose('dense', r as DecodeResult<HostTensor>, oracle(c.args));
  });
});

describe('only FlashMLAErrors leave, whatever the objects are', () => {
  test('throwing getters, inherited dtype names, own toJSON methods, Proxies', async () => {
    const c = sparse();
    const q = c.args.q as HostTensor<'bf16'>;
    const throwing = { ...q, get shape(): number[] { throw new Error('boom'); } };
    const err = await referenceDecode(withMeta({ ...c.args, q: throwing as unknown as HostTensor })).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'E_VALUE', argument: 'q.shape', cause: expect.objectContaining({ message: 'boom' }) });
    expect(await code(referenceDecode(withMeta({ ...c.args, q: { ...q, dtype: 'constructor' as 'bf16' } })))).toBe('E_DTYPE');
    const withMethod = { ...q, toJSON: () => 'x' };
    expectClose('sparse', await referenceDecode(withMeta({ ...c.args, q: withMethod }), { threads: 2 }), oracle(c.args));
    const proxied = new Proxy({ ...q }, {});
    expectClose('sparse', await referenceDecode(withMeta({ ...c.args, q: proxied }), { threads: 2 }), oracle(c.args));
    const throwingArgs = { ...withMeta(c.args), get indices(): never { throw new RangeError('nope'); } };
    expect(await code(referenceDecode(throwingArgs))).toBe('E_VALUE');
  });

  test('a frozen sched meta works; its state cannot be reset from outside', async () => {
    const c = sparse();
    const meta = getMlaMetadata();
    Object.freeze(meta);
    expectClose('sparse', await referenceDecode({ ...c.args, schedMeta: meta }), oracle(c.args));
    const m2 = getMlaMetadata();
    await referenceDecode({ ...c.args, schedMeta: m2 });
    expect(() => { (m2 as unknown as { haveInitialized: boolean }).haveInitialized = false; }).toThrow(TypeError);
    expect(() => { (m2 as unknown as { config: null }).config = null; }).toThrow(TypeError);
    const other = generateSparseCase({ b: 3, sQ: 1, hQ: 64, dQK: 512, main: { sK: 128, topk: 64, blockSize: 64 } }, 2).args;
    expect(await code(referenceDecode({ ...other, schedMeta: m2 }))).toBe('E_SCHED_META');
  });

  test('DeviceTensors cannot be constructed or forged', async () => {
    const owner = { device: 0, disposed: false, release: () => undefined };
    const Ctor = DeviceTensor as unknown as new (...a: unknown[]) => unknown;
    expect(() => new Ctor(Symbol('DeviceTensor'), owner, { dtype: 'bf16', shape: [1], capacity: 1 << 30, address: 0x1000n, allocation: null }))
      .toThrow(FlashMLAError);
    const forged = Object.create(DeviceTensor.prototype) as DeviceTensor;
    expect(DeviceTensor.isDeviceTensor(forged)).toBe(false);
    const c = sparse();
    expect(await code(referenceDecode(withMeta({ ...c.args, q: forged as never })))).toBe('E_VALUE');
    const lookAlike = { dtype: 'bf16', shape: [2, 1, 64, 512], device: 0, capacity: 1 << 30, address: 0x1000n, disposed: false };
    expect(await code(referenceDecode(withMeta({ ...c.args, q: lookAlike as never })))).toBe('E_VALUE');
  });
});

describe('prototype pollution changes nothing', () => {
  test('an inherited offset or dtype is never read', async () => {
    const c = sparse();
    const want = oracle(c.args);
    (Object.prototype as Record<string, unknown>).offset = 8;
    (Object.prototype as Record<string, unknown>).dtype = 'fp32';
    expectClose('sparse', await referenceDecode(withMeta(c.args), { threads: 2 }), want);
  });

  test('Object.prototype.then: a clear error, never a Promise that does not settle', async () => {
    const c = sparse();
    (Object.prototype as Record<string, unknown>).then = () => undefined;
    // Strings only: while `then` is polluted, resolving any promise with an object would call it.
    const outcome = await Promise.race([
      referenceDecode(withMeta(c.args)).then(() => 'settled', (e: FlashMLAError) => `${e.code}: ${e.message}`),
      new Promise<string>((r) => setTimeout(() => r('hung'), 5000)),
    ]);
    delete (Object.prototype as Record<string, unknown>).then;
    expect(outcome).toMatch(/^E_VALUE: .*Object\.prototype\.then/);
  });
});

describe('sizes', () => {
  test('zero strides claiming h_q = 2^40 or b = 2^40 are refused at once', async () => {
    const c = generateDenseCase({ b: 1, sQ: 1, sK: 64, hQ: 16, hK: 1, varlen: false, causal: false, dtype: 'bf16' }, 1);
    const q = c.args.q as HostTensor<'bf16'>;
    const t0 = Date.now();
    expect(await code(referenceDecode(withMeta({ ...c.args, q: { ...q, shape: [1, 1, 2 ** 40, 576], strides: [0, 0, 0, 1], offset: 0 } })))).toBe('E_UNSUPPORTED');
    const s = sparse();
    const sq = s.args.q as HostTensor<'bf16'>;
    expect(await code(referenceDecode(withMeta({ ...s.args, q: { ...sq, shape: [2 ** 40, 1, 64, 512], strides: [0, 0, 512, 1], offset: 0 } })))).not.toBe('no error');
    expect(Date.now() - t0).toBeLessThan(2000);
  });

  test('byte copies are exact at offsets past 4 GiB', () => {
    const big = new ArrayBuffer(2 ** 32 + 4096); // pages are only committed where written
    const src = new Uint8Array(big, 2 ** 32, 1024);
    for (let i = 0; i < 1024; i++) src[i] = (i * 37 + 11) & 0xff;
    const dst = new Uint8Array(1024);
    copyBytes(src, 16, dst, 0, 656);
    expect([...dst.subarray(0, 656)]).toEqual([...src.subarray(16, 16 + 656)]);
  });

  test('threads beyond the cap are refused', async () => {
    const c = sparse();
    expect(await code(referenceDecode(withMeta(c.args), { threads: 200 }))).toBe('E_VALUE');
  });
});

describe('defined extremes', () => {
  test('a finite softmaxScale beyond float32 range (or whose log2(e) factor overflows) is refused', async () => {
    const s = sparse();
    for (const softmaxScale of [1e39, -1e39, 3e38]) {
      expect(await code(referenceDecode(withMeta({ ...s.args, softmaxScale })))).toBe('E_VALUE');
    }
    const d = dense();
    expect(await code(referenceDecode(withMeta({ ...d.args, softmaxScale: 2.4e38 })))).toBe('E_VALUE');
  });

  test('a non-boolean causal is refused on both paths', async () => {
    const s = sparse();
    expect(await code(referenceDecode(withMeta({ ...s.args, causal: 'yes' as unknown as boolean })))).toBe('E_VALUE');
    const d = dense();
    expect(await code(referenceDecode(withMeta({ ...d.args, causal: 1 as unknown as boolean })))).toBe('E_VALUE');
  });

  test('absIndicesToKvcacheIndices refuses block ids that would wrap', () => {
    const abs = { dtype: 'int32' as const, shape: [1, 1, 2], data: new Int32Array([0, 70]) };
    const table = (ids: number[]) => ({ dtype: 'int32' as const, shape: [1, 2], data: new Int32Array(ids) });
    expect(absIndicesToKvcacheIndices(abs, table([3, 5]), 64).data).toEqual(new Int32Array([192, 326]));
    expect(() => absIndicesToKvcacheIndices(abs, table([3, -1]), 64)).toThrow(/must be a block id/);
    expect(() => absIndicesToKvcacheIndices(abs, table([3, 2 ** 26]), 64)).toThrow(/fits int32/);
  });
});
