// Tables checked against an EngramConfig: a DeepSeek-V4.1-sized sparse shard with the real layer-1
// layout, small demo-style fp32 tables, and the layout stored by convertTable.
import { closeSync, ftruncateSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { configFromHf, paperDemoConfig } from '../../../src/engram/config.js';
import { layout } from '../../../src/engram/layout.js';
import { EngramTable } from '../../../src/engram/table.js';
import { readTableHeader } from '../../../src/engram/table-format.js';
import { convertTable } from '../../../src/engram/table-writer.js';
import { packedRows, safetensorsBytes, syntheticTable, tempDir } from './table-fixtures.js';

const dir = tempDir();
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const v41 = configFromHf(readFileSync(new URL('../../fixtures/engram/v41-config.json', import.meta.url), 'utf8'));

/** A safetensors shard whose header describes `tensors` but whose data is a hole, except `writes`. */
function sparseShard(path: string, tensors: { name: string; dtype: string; shape: number[]; bytes: number }[], writes: [string, number, Uint8Array][]): void {
  const header: Record<string, unknown> = {};
  let at = 0;
  const begin = new Map<string, number>();
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [at, at + t.bytes] };
    begin.set(t.name, at);
    at += t.bytes;
  }
  const text = new TextEncoder().encode(JSON.stringify(header));
  const head = new Uint8Array(8 + text.length);
  new DataView(head.buffer).setBigUint64(0, BigInt(text.length), true);
  head.set(text, 8);
  const fd = openSync(path, 'w');
  writeSync(fd, head, 0, head.length, 0);
  ftruncateSync(fd, head.length + at);
  for (const [name, offset, bytes] of writes) writeSync(fd, bytes, 0, bytes.length, head.length + begin.get(name)! + offset);
  closeSync(fd);
}

describe('tables and configs', () => {
  it('a DeepSeek-V4.1-sized layer-1 shard (sparse, ~101 GB) opens against the real config and serves far rows', () => {
    const rows = 384_006_168;
    expect(layout(v41)[0]!.numEmbeddings).toBe(rows);
    const t = syntheticTable(2, 256, 1);
    const path = join(dir, 'v41-layer1.safetensors');
    const last = rows - 1;
    sparseShard(path, [
      { name: 'layers.1.engram.embed.weight', dtype: 'F8_E4M3', shape: [rows, 256], bytes: rows * 256 },
      { name: 'layers.1.engram.embed.scale', dtype: 'F8_E8M0', shape: [rows, 8], bytes: rows * 8 },
    ], [
      ['layers.1.engram.embed.weight', last * 256, t.weights.subarray(256)],
      ['layers.1.engram.embed.scale', last * 8, t.scales.subarray(8)],
    ]);
    const table = EngramTable.open(path, { config: v41, layerId: 1 });
    expect(table.rows).toBe(rows);
    expect([...table.layout!.multipliers]).toEqual([...layout(v41)[0]!.multipliers]);
    expect(table.lookupRaw([last])).toEqual(packedRows(t, [1]));
    table.close();
    // The same shard is not layer 14's (384,016,682 rows): asked as layer 14 it has no such tensor.
    expect(() => EngramTable.open(path, { config: v41, layerId: 14 })).toThrow(expect.objectContaining({ argument: 'options.layerId' }) as Error);
  });

  it('checks rows, headDim and row format against the config, and converts with the layout and config stored', async () => {
    const config = paperDemoConfig({ vocabSizes: [50, 80], compressedVocabSize: 100 });
    const [l1] = layout(config);
    const rows = l1!.numEmbeddings;
    const values = Float32Array.from({ length: rows * 64 }, (_, i) => (i % 97) / 8 - 6);
    const shard = join(dir, 'demo.safetensors');
    writeFileSync(shard, safetensorsBytes([{ name: 'layers.1.engram.embed.weight', dtype: 'F32', shape: [rows, 64], data: new Uint8Array(values.buffer) }]));
    const t = EngramTable.open(shard, { config, io: 'pread' });
    expect([...t.layout!.primes]).toEqual([...l1!.primes]);
    t.close();
    const wrong = (c: typeof config): void => {
      expect(() => EngramTable.open(shard, { config: c, io: 'pread' })).toThrow(expect.objectContaining({ code: 'E_VALUE', argument: 'options.config' }) as Error);
    };
    wrong({ ...config, vocabSizes: [50, 90] });
    wrong({ ...config, headDim: 32 });
    wrong({ ...config, tableDtype: 'fp8-e4m3-e8m0' });
    wrong({ ...config, layerIds: [2, 15] });

    const dst = join(dir, 'demo.engram');
    await convertTable(shard, dst, { config });
    const file = readTableHeader(dst);
    expect(file.config).toEqual(JSON.parse(JSON.stringify(config)));
    expect([...file.layout.multipliers]).toEqual([...l1!.multipliers]);
    const own = EngramTable.open(dst, { config });
    expect(own.lookup([rows - 1], { dtype: 'fp32' }).data).toEqual(values.subarray((rows - 1) * 64));
    own.close();
    expect(() => EngramTable.open(dst, { config: { ...config, seed: 1 } })).toThrow(/other primes or multipliers/);
  });
});
