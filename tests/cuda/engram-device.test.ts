// EngramStore.prefetch({ device }): a step's rows copied to a device tensor of a CUDA instance, on
// the CPU emulator of tests/emulator; the rows on the "device" equal the host rows.
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { EngramConfig } from '../../src/engram/config.js';
import { layout } from '../../src/engram/layout.js';
import { EngramStore } from '../../src/engram/store.js';
import { EngramTable } from '../../src/engram/table.js';
import { writeEngramTable } from '../../src/engram/table-writer.js';
import { FlashMLA } from '../../src/flashmla.js';
import { useEmulatedInstance } from '../helpers/emulator.js';
import { rng, tempDir } from '../unit/engram/table-fixtures.js';

const config: EngramConfig = {
  variant: 'v4.1', layerIds: [2, 5], maxNgramSize: 3, nHeads: 4, headDim: 64, vocabSizes: [300, 400],
  compressedVocabSize: 200, padTokenId: 2, numEmbeddings: undefined, seed: 0, hcMult: 4, hiddenSize: 64,
  rmsNormEps: 1e-6, tableDtype: 'fp8-e4m3-e8m0', convKernel: undefined, convDilation: undefined,
};
const dir = tempDir();
const emu = useEmulatedInstance();
let tables: EngramTable[];

beforeAll(async () => {
  tables = [];
  for (const l of layout(config)) {
    const r = rng(l.layerId);
    const path = join(dir, `layer${l.layerId}.engram`);
    await writeEngramTable(path, {
      layout: l, headDim: 64, format: 'fp8',
      rows: (_first, count) => Uint8Array.from({ length: count * 66 }, (_, k) => (k % 66 < 64 ? Math.floor(r() * 256) & 0xf7 : 120 + Math.floor(r() * 10))),
    });
    tables.push(EngramTable.open(path));
  }
});

afterAll(() => {
  tables.forEach((t) => t.close());
  rmSync(dir, { recursive: true, force: true });
});

describe('EngramStore rows on a CUDA instance', () => {
  it.each(['bf16', 'fp32', 'raw'] as const)('the device tensor holds the host rows (%s)', async (format) => {
    const store = EngramStore.open({ config, tables });
    await store.prefetch([{ id: 1, tokens: [5, 6, 7] }], { device: emu.fm, format });
    const step = await store.prefetch([{ id: 1, tokens: [8] }, { id: 2, tokens: [9, 10] }], { device: emu.fm, format });
    expect(step.device).toBeDefined();
    expect(step.device!.shape).toEqual(step.rows.shape);
    expect(step.device!.dtype).toBe(step.rows.dtype);
    const back = await emu.fm.download(step.device!);
    expect(back.data).toEqual(step.rows.data);
    step.device!.dispose();
    store.close();
  });

  it('refuses an instance that is not on the CUDA backend, before the tokens join any history', async () => {
    const ref = await FlashMLA.open({ backend: 'reference' });
    const store = EngramStore.open({ config, tables });
    await expect(store.prefetch([{ id: 1, tokens: [5] }], { device: ref })).rejects.toMatchObject({ code: 'E_BACKEND', argument: 'options.device' });
    expect(store.requests).toBe(0);
    await ref.dispose();
  });
});
