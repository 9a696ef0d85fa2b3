import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, ftruncateSync, openSync, readFileSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { loadAddon } from '../../../src/addon.js';
import { sourceExecArgv } from '../../helpers/ts-worker.js';
import { crc32c } from '../../../src/engram/crc32c.js';
import { EngramTable } from '../../../src/engram/table.js';
import {
  encodeTableHeader, planSections, readTableHeader, TABLE_ALIGNMENT, verifyTable,
} from '../../../src/engram/table-format.js';
import { inspectTable } from '../../../src/engram/table-inspect.js';
import { convertTable, writeEngramTable } from '../../../src/engram/table-writer.js';
import { FlashMLAError } from '../../../src/errors.js';
import {
  decodeF32, fakeLayout, packedRows, rng, sameBf16, sameF32, syntheticTable, tempDir, toBf16, writeShard,
} from './table-fixtures.js';

const loaded = loadAddon();
const ioModes: ('mmap' | 'pread')[] = loaded.ok && loaded.addon.EngramMapping !== undefined ? ['mmap', 'pread'] : ['pread'];
const dir = tempDir();
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const table = syntheticTable(1000, 256, 21);
const all = Int32Array.from({ length: 1000 }, (_, i) => i);
const layout = fakeLayout(1, 1000);
const r = rng(5);
const ids = Int32Array.from({ length: 80 }, () => Math.floor(r() * 1000));

describe('crc32c', () => {
  it('matches the CRC-32C check value and chains', () => {
    const s = new TextEncoder().encode('123456789');
    expect(crc32c(s)).toBe(0xe3069283);
    expect(crc32c(s.subarray(5), crc32c(s.subarray(0, 5)))).toBe(0xe3069283);
    expect(crc32c(new Uint8Array(0))).toBe(0);
    // 32 zero bytes: RFC 3720 B.4 test vector.
    expect(crc32c(new Uint8Array(32))).toBe(0x8a9136aa);
    expect(crc32c(new Uint8Array(32).fill(0xff))).toBe(0x62a8ab43);
  });
});

describe('own format', () => {
  const tokenMap = { map: Int32Array.from({ length: 300 }, (_, i) => i % 250), size: 250 };

  it('write → open → lookup round trip (iterable chunks not on row boundaries, token map)', async () => {
    const path = join(dir, 'round.engram');
    const packed = packedRows(table, all);
    const chunks = [packed.subarray(0, 1000), packed.subarray(1000, 50_001), packed.subarray(50_001)];
    let progress = 0;
    const file = await writeEngramTable(path, { layout, headDim: 256, format: 'fp8', rows: chunks, tokenMap, onProgress: (done) => { progress = done; } });
    expect(progress).toBe(1000);
    expect(existsSync(`${path}.partial`)).toBe(false);
    expect(file.rowsSection.offset % TABLE_ALIGNMENT).toBe(0);
    expect(file.tokenMap!.offset).toBe(TABLE_ALIGNMENT);
    expect(file.fileBytes).toBe(statSync(path).size);
    for (const io of ioModes) {
      const t = EngramTable.open(path, { io });
      expect({ kind: t.kind, rows: t.rows, rowBytes: t.rowBytes, layerId: t.layerId, io: t.io }).toEqual({ kind: 'engram', rows: 1000, rowBytes: 264, layerId: 1, io });
      expect([...t.layout!.multipliers]).toEqual([...layout.multipliers]);
      expect([...t.layout!.primes]).toEqual([...layout.primes]);
      expect(t.tokenMap!.size).toBe(250);
      expect(t.tokenMap!.map).toEqual(tokenMap.map);
      expect(t.lookupRaw(ids)).toEqual(packedRows(table, ids));
      expect(sameF32(t.lookup(ids, { dtype: 'fp32' }).data as Float32Array, decodeF32(table, ids))).toBe(true);
      expect(sameBf16(t.lookup(ids).data as Uint16Array, toBf16(decodeF32(table, ids)))).toBe(true);
      t.close();
    }
    expect(await verifyTable(path)).toMatchObject({ ok: true, sections: [{ section: 'tokenMap', ok: true }, { section: 'rows', ok: true }] });
  });

  it('writes from a function source and an fp32 table', async () => {
    const path = join(dir, 'fp32.engram');
    const values = Float32Array.from({ length: 1000 * 32 }, (_, i) => Math.sin(i) * 1000);
    const bytes = new Uint8Array(values.buffer);
    const calls: [number, number][] = [];
    await writeEngramTable(path, {
      layout, headDim: 32, format: 'fp32', chunkRows: 300,
      rows: async (first, count) => { calls.push([first, count]); return bytes.slice(first * 128, (first + count) * 128); },
    });
    expect(calls).toEqual([[0, 300], [300, 300], [600, 300], [900, 100]]);
    for (const io of ioModes) {
      const t = EngramTable.open(path, { io });
      expect({ format: t.format, rowBytes: t.rowBytes }).toEqual({ format: 'fp32', rowBytes: 128 });
      expect(t.lookup([999, 3], { dtype: 'fp32' }).data).toEqual(Float32Array.from([...values.subarray(999 * 32), ...values.subarray(96, 128)]));
      t.close();
    }
  });

  it('rejects a source with too few or too many bytes and leaves no file', async () => {
    const path = join(dir, 'short.engram');
    const packed = packedRows(table, all);
    await expect(writeEngramTable(path, { layout, headDim: 256, format: 'fp8', rows: [packed.subarray(1)] }))
      .rejects.toMatchObject({ code: 'E_BUFFER', argument: 'options.rows' });
    await expect(writeEngramTable(path, { layout, headDim: 256, format: 'fp8', rows: [packed, new Uint8Array(1)] }))
      .rejects.toMatchObject({ code: 'E_BUFFER', argument: 'options.rows' });
    await expect(writeEngramTable(path, { layout, headDim: 256, format: 'fp8', rows: [[1, 2] as unknown as Uint8Array] }))
      .rejects.toMatchObject({ code: 'E_VALUE', argument: 'options.rows' });
    expect(existsSync(path) || existsSync(`${path}.partial`)).toBe(false);
    await expect(writeEngramTable(path, { layout, headDim: 100, format: 'fp8', rows: [] })).rejects.toMatchObject({ argument: 'options.headDim' });
    await expect(writeEngramTable(join(dir, 'no-such-dir', 'x.engram'), { layout, headDim: 256, format: 'fp8', rows: [] }))
      .rejects.toMatchObject({ code: 'E_VALUE', argument: 'path' });
    const sourceError = new Error('the source failed');
    await expect(writeEngramTable(path, { layout, headDim: 256, format: 'fp8', rows: () => { throw sourceError; } })).rejects.toBe(sourceError);
    expect(existsSync(`${path}.partial`)).toBe(false);
    await expect(writeEngramTable(path, { layout: { ...layout, numEmbeddings: 999 }, headDim: 256, format: 'fp8', rows: [] }))
      .rejects.toMatchObject({ code: 'E_VALUE', argument: 'options.layout' });
    await expect(writeEngramTable(path, { layout, headDim: 256, format: 'fp8', rows: [], tokenMap: { map: Int32Array.of(0, 5, 1), size: 2 } }))
      .rejects.toMatchObject({ code: 'E_RANGE', argument: 'options.tokenMap' });
  });

  it('verifyTable detects a flipped data byte; open still serves (section checksums are not checked at open)', async () => {
    const path = join(dir, 'flip.engram');
    const file = await writeEngramTable(path, { layout, headDim: 256, format: 'fp8', rows: [packedRows(table, all)] });
    const fd = openSync(path, 'r+');
    const at = file.rowsSection.offset + 777 * 264 + 100;
    const b = Buffer.alloc(1);
    b[0] = readFileSync(path)[at]! ^ 0x10;
    writeSync(fd, b, 0, 1, at);
    closeSync(fd);
    const seen: number[] = [];
    const v = await verifyTable(path, { chunkBytes: 65536, onProgress: (done) => seen.push(done) });
    expect(v.ok).toBe(false);
    expect(v.sections[0]).toMatchObject({ section: 'rows', ok: false, expected: file.rowsSection.crc32c });
    expect(seen.at(-1)).toBe(264_000);
    expect(seen.length).toBe(Math.ceil(264_000 / 65536));
    expect(EngramTable.open(path, { io: 'pread' }).lookupRaw([777])[100]).toBe(b[0]);
  });

  it('a flipped header byte fails at open', async () => {
    const path = join(dir, 'header-flip.engram');
    await writeEngramTable(path, { layout, headDim: 256, format: 'fp8', rows: [packedRows(table, all)] });
    const bytes = readFileSync(path);
    bytes[80] = bytes[80]! ^ 0x01;
    writeFileSync(path, bytes);
    expect(() => EngramTable.open(path)).toThrow(/header checksum mismatch/);
  });

  it('convertTable: safetensors → own format gives the same rows; inspectTable describes both', async () => {
    const shard = join(dir, 'shard.safetensors');
    writeShard(shard, table, 1);
    const dst = join(dir, 'converted.engram');
    let last = 0;
    await convertTable(shard, dst, { layout, chunkRows: 333, onProgress: (done) => { last = done; } });
    expect(last).toBe(1000);
    const a = EngramTable.open(shard, { io: 'pread' });
    const b = EngramTable.open(dst, { io: ioModes[0] });
    // Buffer.equals: vitest's deep equality is slow on 264 KB arrays.
    expect(Buffer.from(b.lookupRaw(all)).equals(a.lookupRaw(all))).toBe(true);
    expect(Buffer.from(b.lookupRaw(all)).equals(packedRows(table, all))).toBe(true);
    a.close();
    b.close();
    await expect(convertTable(shard, join(dir, 'x.engram'))).rejects.toMatchObject({ code: 'E_VALUE', argument: 'options.config' });
    await expect(convertTable(shard, join(dir, 'x.engram'), { layout: fakeLayout(1, 999) })).rejects.toMatchObject({ argument: 'options.layout' });
    await expect(convertTable(shard, join(dir, 'x.engram'), { layout, layerId: 2 })).rejects.toMatchObject({ argument: 'options.layerId' });

    const st = inspectTable(shard);
    expect(st.kind).toBe('safetensors');
    expect(st.tensors.map((t) => t.name)).toEqual(['layers.1.attn.wq.weight', 'layers.1.engram.embed.weight', 'layers.1.engram.embed.scale']);
    expect(st.tables).toEqual([{ layerId: 1, rows: 1000, headDim: 256, format: 'fp8', rowBytes: 264, problem: undefined }]);
    const own = inspectTable(dst);
    expect(own.kind).toBe('engram');
    expect(own.tables).toEqual(st.tables);
    expect(own.sections).toEqual([{ name: 'rows', offset: TABLE_ALIGNMENT, length: 264_000, crc32c: expect.stringMatching(/^[0-9a-f]{8}$/), aligned: true }]);
    expect(own.layout!.multipliers).toEqual([...layout.multipliers].map(String));
  });

  it('a truncated own-format file and a wrong layerId are errors naming their argument', async () => {
    const path = join(dir, 'trunc.engram');
    await writeEngramTable(path, { layout, headDim: 256, format: 'fp8', rows: [packedRows(table, all)] });
    expect(() => EngramTable.open(path, { layerId: 14 })).toThrow(expect.objectContaining({ code: 'E_VALUE', argument: 'options.layerId' }) as Error);
    const fd = openSync(path, 'r+');
    ftruncateSync(fd, statSync(path).size - 1);
    closeSync(fd);
    expect(() => readTableHeader(path)).toThrow(expect.objectContaining({ code: 'E_BUFFER', argument: 'path' }) as Error);
    expect(() => EngramTable.open(path)).toThrow(FlashMLAError);
  });
});

describe('sparse tables', () => {
  it('a 40 GiB sparse own-format file opens and serves rows far apart with little memory', () => {
    // 165M rows × 264 bytes ≈ 40.6 GiB: header, then three real rows, everything else a hole.
    const rows = 165_000_000;
    const big = fakeLayout(14, rows, 8, 4);
    const path = join(dir, 'sparse.engram');
    const plan = planSections(rows, 264, undefined);
    const header = encodeTableHeader({
      format: 'fp8', headDim: 256, layout: big, config: undefined, tokenMap: undefined,
      rowsSection: { offset: plan.rowsOffset, length: rows * 264, crc32c: null },
    });
    const fd = openSync(path, 'w');
    writeSync(fd, header, 0, header.length, 0);
    ftruncateSync(fd, plan.fileBytes);
    const far = [5, 100_000_000, rows - 1];
    far.forEach((id, i) => writeSync(fd, packedRows(table, [i + 10]), 0, 264, plan.rowsOffset + id * 264));
    closeSync(fd);
    expect(statSync(path).size).toBeGreaterThan(40 * 2 ** 30);
    const script = fileURLToPath(new URL('./table-sparse-probe.ts', import.meta.url));
    for (const io of ioModes) {
      // A child process so its RSS measures only the open and the reads.
      const out = JSON.parse(execFileSync(process.execPath, [...sourceExecArgv(), script, path, io, far.join(',')], { encoding: 'utf8' })) as
        { raw: number[][]; zero: number[]; growthMiB: number; rows: number };
      expect(out.rows).toBe(rows);
      far.forEach((_, i) => expect(out.raw[i]).toEqual([...packedRows(table, [i + 10])]));
      expect(out.zero.every((x) => x === 0)).toBe(true);
      expect(out.growthMiB).toBeLessThan(64);
    }
  });
});
