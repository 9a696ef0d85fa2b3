// EngramStore: per-request histories, a step's rows of every layer, rollback/drop, and bad batches
// that leave every history as it was. Tables are own-format files written here (small V4.1-shaped layout).
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadAddon } from '../../../src/addon.js';
import type { EngramConfig } from '../../../src/engram/config.js';
import { NgramHasher } from '../../../src/engram/hash.js';
import { layout } from '../../../src/engram/layout.js';
import { EngramStore } from '../../../src/engram/store.js';
import { EngramTable } from '../../../src/engram/table.js';
import { writeEngramTable } from '../../../src/engram/table-writer.js';
import { zeros } from '../../../src/tensor.js';
import { rng, tempDir } from './table-fixtures.js';
import { expectError } from '../../helpers/errors.js';

const config: EngramConfig = {
  variant: 'v4.1', layerIds: [1, 4], maxNgramSize: 4, nHeads: 8, headDim: 256, vocabSizes: [700, 900, 1100],
  compressedVocabSize: 600, padTokenId: 2, numEmbeddings: undefined, seed: 0, hcMult: 4, hiddenSize: 256,
  rmsNormEps: 1e-6, tableDtype: 'fp8-e4m3-e8m0', convKernel: undefined, convDilation: undefined,
};
const PER_TOKEN = 2 * 3 * 8;
const loaded = loadAddon();
const ioModes: ('mmap' | 'pread')[] = loaded.ok && loaded.addon.EngramMapping !== undefined ? ['mmap', 'pread'] : ['pread'];

const dir = tempDir();
const paths = config.layerIds.map((l) => join(dir, `layer${l}.engram`));
beforeAll(async () => {
  for (const [i, l] of layout(config).entries()) {
    const r = rng(100 + i);
    // Scale bytes kept in 110…140 so every row dequantises to finite values.
    await writeEngramTable(paths[i]!, {
      layout: l, headDim: 256, format: 'fp8',
      rows: (_first, count) => Uint8Array.from({ length: count * 264 }, (_, k) => (k % 264 < 256 ? Math.floor(r() * 256) & 0xf7 : 110 + Math.floor(r() * 30))),
    });
  }
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const random = rng(5);
const tokens = (n: number) => Array.from({ length: n }, () => Math.floor(random() * 600));

describe.each(ioModes)('EngramStore (%s tables)', (io) => {
  let tables: EngramTable[] = [];
  beforeAll(() => { tables = paths.map((p) => EngramTable.open(p, { io })).reverse(); });
  afterAll(() => tables.forEach((t) => t.close()));

  it('serves each request the rows of hashing its whole sequence at once, across steps, rollback and drop', async () => {
    const store = EngramStore.open({ config, tables, threads: 3 });
    const whole = new NgramHasher(config);
    const seqA = tokens(7);
    const seqB = tokens(3);
    const prefill = await store.prefetch([{ id: 'a', tokens: seqA }, { id: 7, tokens: seqB }], { format: 'fp32' });
    expect(prefill.requests).toEqual([{ id: 'a', start: 0, count: 7 }, { id: 7, start: 7, count: 3 }]);
    expect(prefill.rowIds.shape).toEqual([10, 2, 24]);
    expect(prefill.rows.shape).toEqual([10, 2, 24, 256]);
    expect(prefill.rowIds.data.subarray(0, 7 * PER_TOKEN)).toEqual(whole.hash(seqA));
    expect(prefill.rowIds.data.subarray(7 * PER_TOKEN)).toEqual(whole.hash(seqB));

    // Decode: one token each, then a rejected draft of 2 tokens for 'a'.
    const nextA = tokens(3);
    const nextB = tokens(1);
    await store.prefetch([{ id: 7, tokens: nextB }, { id: 'a', tokens: nextA }]);
    store.rollback('a', 2);
    const afterA = tokens(1);
    const step = await store.prefetch([{ id: 'a', tokens: afterA }], { format: 'bf16' });
    const full = whole.hash([...seqA, nextA[0]!, ...afterA]);
    expect(step.rowIds.data).toEqual(full.subarray(full.length - PER_TOKEN));
    expect(store.requests).toBe(2);
    expect(store.drop(7)).toBe(true);
    expect(store.drop(7)).toBe(false);
    const fresh = await store.prefetch([{ id: 7, tokens: nextB }]);
    expect(fresh.rowIds.data).toEqual(whole.hash(nextB));
    store.close();
  });

  it('lays rows out [token, layer, column, value] as each layer\'s table returns them (bf16, fp32, raw)', async () => {
    const store = EngramStore.open({ config, tables, threads: 2 });
    const seq = tokens(5);
    const byLayer = config.layerIds.map((l) => tables.find((t) => t.layerId === l)!);
    for (const format of ['bf16', 'fp32', 'raw'] as const) {
      store.drop('r');
      const step = await store.prefetch([{ id: 'r', tokens: seq }], { format });
      const width = format === 'raw' ? 264 : 256;
      for (let t = 0; t < 5; t++) {
        for (let l = 0; l < 2; l++) {
          const ids = step.rowIds.data.subarray((t * 2 + l) * 24, (t * 2 + l + 1) * 24);
          const want = format === 'raw' ? byLayer[l]!.lookupRaw(ids) : byLayer[l]!.lookup(ids, { dtype: format }).data;
          expect(step.rows.data.subarray((t * 2 + l) * 24 * width, (t * 2 + l + 1) * 24 * width)).toEqual(want);
        }
      }
      expect(step.rows.dtype).toBe(format === 'raw' ? 'uint8' : format);
      expect(step.device).toBeUndefined();
    }
    store.close();
  });

  it('options.out: rows land in a given SharedArrayBuffer tensor, checked against the step before any history changes', async () => {
    const store = EngramStore.open({ config, tables });
    const seq = tokens(3);
    const out = zeros('bf16', [3, 2, 24, 256], { shared: true });
    const step = await store.prefetch([{ id: 'o', tokens: seq }], { out });
    expect(step.rows).toBe(out);
    store.drop('o');
    expect((await store.prefetch([{ id: 'o', tokens: seq }])).rows.data).toEqual(out.data);
    store.drop('o');
    const bad: [unknown, string][] = [
      [zeros('bf16', [3, 2, 24, 256]), 'E_VALUE'],
      [zeros('fp32', [3, 2, 24, 256], { shared: true }), 'E_DTYPE'],
      [zeros('bf16', [4, 2, 24, 256], { shared: true }), 'E_SHAPE'],
      [{ ...zeros('bf16', [3, 2, 24, 256], { shared: true }), strides: [1, 3, 6, 144] }, 'E_STRIDE'],
    ];
    for (const [o, code] of bad) {
      await expect(store.prefetch([{ id: 'o', tokens: seq }], { out: o as never })).rejects.toMatchObject({ code, argument: 'options.out' });
    }
    expect(store.requests).toBe(0);
    store.close();
  });

  it('a bad request names itself and leaves every history as it was', async () => {
    const store = EngramStore.open({ config, tables });
    const whole = new NgramHasher(config);
    const seq = tokens(4);
    await store.prefetch([{ id: 'x', tokens: seq.slice(0, 2) }]);
    await expect(store.prefetch([{ id: 'x', tokens: seq.slice(2) }, { id: 'y', tokens: [1, 600] }]))
      .rejects.toMatchObject({ code: 'E_RANGE', argument: 'batch[1].tokens[1]' });
    await expect(store.prefetch([{ id: 'x', tokens: [1] }, { id: 'x', tokens: [2] }]))
      .rejects.toMatchObject({ code: 'E_VALUE', argument: 'batch[1].id' });
    await expect(store.prefetch([{ id: 'z', tokens: [1, 2], mask: [true] }]))
      .rejects.toMatchObject({ argument: 'batch[0].mask' });
    expect(store.requests).toBe(1);
    const step = await store.prefetch([{ id: 'x', tokens: seq.slice(2) }]);
    expect(step.rowIds.data).toEqual(whole.hash(seq).subarray(2 * PER_TOKEN));
    expectError(() => store.rollback('x', 5), 'E_RANGE', 'n');
    expectError(() => store.rollback('nobody', 1), 'E_VALUE', 'id');
    await expect(store.prefetch([{ id: 'x', tokens: [1] }], { format: 'fp16' as never })).rejects.toMatchObject({ argument: 'options.format' });
    store.close();
    await expect(store.prefetch([{ id: 'x', tokens: [1] }])).rejects.toMatchObject({ code: 'E_DISPOSED' });
  });

  it('refuses tables that do not serve exactly the config\'s layers', () => {
    expectError(() => EngramStore.open({ config, tables: tables.slice(0, 1) }), 'E_VALUE', 'options.tables');
    expectError(() => EngramStore.open({ config, tables: [...tables, tables[0]!] }), 'E_VALUE', 'options.tables');
    expectError(() => EngramStore.open({ config: { ...config, layerIds: [1, 4, 9] }, tables }), 'E_VALUE', 'options.tables');
    expectError(() => EngramStore.open({ config: { ...config, headDim: 128 }, tables }), 'E_SHAPE', 'options.tables');
    expectError(() => EngramStore.open({ config, tables, threads: 0 }), 'E_VALUE', 'options.threads');
    expectError(() => EngramStore.open({ config: { ...config, nHeads: 0 }, tables }), 'E_VALUE', 'config.nHeads');
  });
});
