import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadAddon } from '../../../src/addon.js';
import { EngramTable } from '../../../src/engram/table.js';
import { inspectTable } from '../../../src/engram/table-inspect.js';
import { FlashMLAError } from '../../../src/errors.js';
import { zeros } from '../../../src/tensor.js';
import {
  decodeF32, packedRows, rng, safetensorsBytes, sameBf16, sameF32, syntheticTable, tempDir, toBf16, writeShard,
} from './table-fixtures.js';

const loaded = loadAddon();
const hasMapping = loaded.ok && loaded.addon.EngramMapping !== undefined;
const ioModes: ('mmap' | 'pread')[] = hasMapping ? ['mmap', 'pread'] : ['pread'];

const dir = tempDir();
const table = syntheticTable(1000, 256, 7);
const shard = join(dir, 'model-00002-of-00009.safetensors');
writeShard(shard, table, 14);
const open: EngramTable[] = [];
afterAll(() => {
  open.forEach((t) => t.close());
  rmSync(dir, { recursive: true, force: true });
});

/** Row ids covering the first rows (scale corners), the last row, and random ones with repeats. */
const r = rng(11);
const ids = Int32Array.from([0, 1, 2, 3, 999, 500, 500, ...Array.from({ length: 57 }, () => Math.floor(r() * 1000))]);

function expectError(f: () => unknown, code: string, argument: string): void {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(FlashMLAError);
    expect({ code: (e as FlashMLAError).code, argument: (e as FlashMLAError).argument }).toEqual({ code, argument });
    return;
  }
  throw new Error('no error');
}

describe.each(ioModes)('EngramTable over a V4.1-style safetensors shard (%s)', (io) => {
  const t = EngramTable.open(shard, { io });
  open.push(t);

  it('describes the table', () => {
    expect({ rows: t.rows, headDim: t.headDim, rowBytes: t.rowBytes, format: t.format, io: t.io, layerId: t.layerId, kind: t.kind, path: t.path })
      .toEqual({ rows: 1000, headDim: 256, rowBytes: 264, format: 'fp8', io, layerId: 14, kind: 'safetensors', path: shard });
  });

  it('lookupRaw returns the written bytes as packed records', () => {
    expect(t.lookupRaw(ids)).toEqual(packedRows(table, ids));
    const out = new Uint8Array(ids.length * 264 + 10);
    const got = t.lookupRaw([...ids], { out });
    expect(got.buffer).toBe(out.buffer);
    expect(got).toEqual(packedRows(table, ids));
  });

  it('lookup is bit-exact against an independent decode (fp32 and bf16)', () => {
    const want = decodeF32(table, ids);
    const f = t.lookup(ids, { dtype: 'fp32' });
    expect(f.dtype).toBe('fp32');
    expect(f.shape).toEqual([ids.length, 256]);
    expect(sameF32(f.data as Float32Array, want)).toBe(true);
    const b = t.lookup(ids);
    expect(b.dtype).toBe('bf16');
    expect(sameBf16(b.data as Uint16Array, toBf16(want))).toBe(true);
  });

  it('writes into options.out (with an offset) and returns it', () => {
    const data = new Float32Array(5 + ids.length * 256);
    const out = { dtype: 'fp32' as const, shape: [ids.length, 256], data, offset: 5 };
    expect(t.lookup(ids, { out })).toBe(out);
    expect(sameF32(data.subarray(5), decodeF32(table, ids))).toBe(true);
    const bf = zeros('bf16', [ids.length, 256]);
    expect(t.lookup(ids, { out: bf })).toBe(bf);
    expect(sameBf16(bf.data, toBf16(decodeF32(table, ids)))).toBe(true);
  });

  it('async lookups give the same rows', async () => {
    expect(await t.lookupRawAsync(ids)).toEqual(packedRows(table, ids));
    const f = await t.lookupAsync(ids, { dtype: 'fp32' });
    expect(sameF32(f.data as Float32Array, decodeF32(table, ids))).toBe(true);
    const b = await t.lookupAsync(Array.from(ids));
    expect(sameBf16(b.data as Uint16Array, toBf16(decodeF32(table, ids)))).toBe(true);
  });

  it('an empty lookup is an empty tensor', () => {
    expect(t.lookup([]).shape).toEqual([0, 256]);
    expect(t.lookupRaw(new Int32Array(0)).length).toBe(0);
  });

  it('rejects bad row ids and outputs, naming them, never clamping', () => {
    expectError(() => t.lookup([0, 1000]), 'E_RANGE', 'rowIds[1]');
    expectError(() => t.lookup([5, -1]), 'E_RANGE', 'rowIds[1]');
    expectError(() => t.lookupRaw(Int32Array.from([3, 2, 2 ** 31 - 1])), 'E_RANGE', 'rowIds[2]');
    expectError(() => t.lookup([1.5]), 'E_VALUE', 'rowIds[0]');
    expectError(() => t.lookup([NaN]), 'E_VALUE', 'rowIds[0]');
    expectError(() => t.lookup(['1' as unknown as number]), 'E_VALUE', 'rowIds[0]');
    expectError(() => t.lookup(new Float32Array([1]) as unknown as Int32Array), 'E_VALUE', 'rowIds');
    expectError(() => t.lookup([1], { dtype: 'fp16' as 'bf16' }), 'E_VALUE', 'options.dtype');
    expectError(() => t.lookup([1], { out: zeros('fp32', [2, 256]) }), 'E_SHAPE', 'options.out');
    expectError(() => t.lookup([1], { out: zeros('fp32', [1, 128]) }), 'E_SHAPE', 'options.out');
    expectError(() => t.lookup([1], { dtype: 'bf16', out: zeros('fp32', [1, 256]) }), 'E_DTYPE', 'options.out');
    expectError(() => t.lookup([1, 2], { out: { dtype: 'fp32', shape: [2, 256], strides: [1, 2], data: new Float32Array(512) } }), 'E_STRIDE', 'options.out');
    expectError(() => t.lookup([1], { out: { dtype: 'fp32', shape: [1, 256], data: new Float32Array(10) } }), 'E_BUFFER', 'options.out');
    expectError(() => t.lookupRaw([1, 2], { out: new Uint8Array(264) }), 'E_BUFFER', 'options.out');
    expectError(() => t.lookupRaw([1], { out: new Uint16Array(264) as unknown as Uint8Array }), 'E_DTYPE', 'options.out');
  });
});

describe('EngramTable.open', () => {
  it('finds a layer by layerId in a shard with two Engram layers, and asks for one otherwise', () => {
    const two = join(dir, 'two-layers.safetensors');
    const other = syntheticTable(64, 256, 3);
    writeFileSync(two, safetensorsBytes([
      { name: 'layers.1.engram.embed.weight', dtype: 'F8_E4M3', shape: [64, 256], data: other.weights },
      { name: 'layers.1.engram.embed.scale', dtype: 'F8_E8M0', shape: [64, 8], data: other.scales },
      { name: 'layers.14.engram.embed.weight', dtype: 'F8_E4M3', shape: [1000, 256], data: table.weights },
      { name: 'layers.14.engram.embed.scale', dtype: 'F8_E8M0', shape: [1000, 8], data: table.scales },
    ]));
    expectError(() => EngramTable.open(two), 'E_VALUE', 'options.layerId');
    expectError(() => EngramTable.open(two, { layerId: 2 }), 'E_VALUE', 'options.layerId');
    const t = EngramTable.open(two, { layerId: 1, io: 'pread' });
    expect(t.rows).toBe(64);
    expect(t.lookupRaw([63])).toEqual(packedRows(other, [63]));
    t.close();
  });

  it('opens an fp32 table (a lone F32 weight)', () => {
    const p = join(dir, 'fp32.safetensors');
    const values = Float32Array.from({ length: 10 * 64 }, (_, i) => (i % 7) - 3.25);
    writeFileSync(p, safetensorsBytes([{ name: 'layers.1.engram.embed.weight', dtype: 'F32', shape: [10, 64], data: new Uint8Array(values.buffer) }]));
    for (const io of ioModes) {
      const t = EngramTable.open(p, { io });
      expect({ format: t.format, rowBytes: t.rowBytes, headDim: t.headDim }).toEqual({ format: 'fp32', rowBytes: 256, headDim: 64 });
      expect(t.lookup([9, 0], { dtype: 'fp32' }).data).toEqual(Float32Array.from([...values.subarray(576), ...values.subarray(0, 64)]));
      expect(sameBf16(t.lookup([3]).data as Uint16Array, toBf16(values.slice(192, 256)))).toBe(true);
      t.close();
    }
  });

  it('rejects shards whose tensors do not form a V4.1 table', () => {
    const bad = (name: string, tensors: Parameters<typeof safetensorsBytes>[0], arg = 'path', code = 'E_VALUE'): void => {
      const p = join(dir, `${name}.safetensors`);
      writeFileSync(p, safetensorsBytes(tensors));
      expectError(() => EngramTable.open(p, { io: 'pread' }), code, arg);
    };
    const w = (dtype: string, shape: number[]) => ({ name: 'layers.3.engram.embed.weight', dtype, shape, data: new Uint8Array(shape.reduce((a, b) => a * b, dtype === 'BF16' ? 2 : 1)) });
    const s = (dtype: string, shape: number[]) => ({ name: 'layers.3.engram.embed.scale', dtype, shape, data: new Uint8Array(shape.reduce((a, b) => a * b, 1)) });
    bad('none', [{ name: 'x', dtype: 'U8', shape: [1], data: new Uint8Array(1) }], 'options.layerId');
    bad('no-scale', [w('F8_E4M3', [4, 64])]);
    expect(inspectTable(join(dir, 'no-scale.safetensors')).tables).toEqual([
      { layerId: 3, rows: 4, headDim: 64, format: 'fp8', rowBytes: 66, problem: expect.stringContaining('no layers.3.engram.embed.scale') },
    ]);
    bad('bf16-weight', [w('BF16', [4, 64]), s('F8_E8M0', [4, 2])], 'path', 'E_DTYPE');
    bad('u8-scale', [w('F8_E4M3', [4, 64]), s('U8', [4, 2])], 'path', 'E_DTYPE');
    bad('scale-shape', [w('F8_E4M3', [4, 64]), s('F8_E8M0', [4, 3])], 'path', 'E_SHAPE');
    bad('head-dim', [w('F8_E4M3', [4, 48]), s('F8_E8M0', [4, 2])]);
    bad('rank', [w('F8_E4M3', [4, 64, 1]), s('F8_E8M0', [4, 2])], 'path', 'E_SHAPE');
  });

  it('checks its arguments', () => {
    expectError(() => EngramTable.open(''), 'E_VALUE', 'path');
    expectError(() => EngramTable.open(join(dir, 'missing')), 'E_VALUE', 'path');
    expectError(() => EngramTable.open(shard, { io: 'direct' as 'mmap' }), 'E_VALUE', 'options.io');
    expectError(() => EngramTable.open(shard, { layerId: -1 }), 'E_VALUE', 'options.layerId');
  });

  it('close is idempotent and later use is E_DISPOSED', async () => {
    for (const io of ioModes) {
      const t = EngramTable.open(shard, { io });
      const pending = t.lookupRawAsync(ids);
      t.close();
      t.close();
      expect(t.closed).toBe(true);
      // An async read started before close completes with the right bytes.
      expect(await pending).toEqual(packedRows(table, ids));
      expectError(() => t.lookup([0]), 'E_DISPOSED', undefined as unknown as string);
      await expect(t.lookupAsync([0])).rejects.toMatchObject({ code: 'E_DISPOSED' });
    }
  });
});

describe('lookup output allocation', () => {
  it('an output too large for one typed array is E_RANGE naming rowIds, not a RangeError', () => {
    const t = EngramTable.open(shard, { io: 'pread' });
    // 2^22 ids × 256 × 4 bytes (fp32 rows) = 4 GiB + a row: over Node's typed-array limit.
    const ids = new Int32Array(2 ** 22 + 1);
    expectError(() => t.lookupRaw(ids), 'E_RANGE', 'rowIds');
    expectError(() => t.lookup(ids, { dtype: 'fp32' }), 'E_RANGE', 'rowIds');
    t.close();
  });
});
