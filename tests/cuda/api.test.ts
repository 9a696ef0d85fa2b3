// The public flashMlaWithKvCache, as users call it, on each backend choice, checked against the
// float64 oracle: a backend returning NaN or garbage fails here. (Own file: the process-wide CUDA
// instance is made from FLASHMLA_LIBRARY at the first call.)
import { beforeAll, describe, expect, it } from 'vitest';
import { flashMlaWithKvCache, getMlaMetadata } from '../../src/index.js';
import { generateDenseCase, generateSparseCase, oracleDecode } from '../../src/testing.js';
import type { DecodeArgs, DecodeResult, HostTensor } from '../../src/index.js';
import { buildEmulator } from '../emulator/build.mjs';
import { expectClose } from '../helpers/decode.js';

beforeAll(async () => {
  process.env.FLASHMLA_LIBRARY = await buildEmulator();
  process.env.FLASHMLA_EMU_ARCH = 'sm90';
});

const cases = [
  generateDenseCase({ b: 2, sQ: 2, sK: 300, hQ: 16, hK: 1, varlen: true, causal: true, dtype: 'bf16' }, 41),
  generateSparseCase({ b: 2, sQ: 1, hQ: 64, dQK: 512, main: { sK: 500, topk: 128, blockSize: 64, withLength: true }, extra: { sK: 200, topk: 64, blockSize: 32 }, sink: true }, 42),
  generateSparseCase({ b: 1, sQ: 2, hQ: 128, dQK: 576, main: { sK: 700, topk: 256, blockSize: 64 } }, 43),
];
const withMeta = (a: Omit<DecodeArgs, 'schedMeta'>): DecodeArgs => ({ ...a, schedMeta: getMlaMetadata() });

describe.each(['reference', 'auto', 'cuda'] as const)('flashMlaWithKvCache, backend %s', (backend) => {
  it.each(cases.map((c) => [c.name, c] as const))('%s matches the float64 oracle', async (_, c) => {
    const got = (await flashMlaWithKvCache(withMeta(c.args), { backend })) as DecodeResult<HostTensor>;
    expect(got.out.data.length).toBe(c.args.q.shape[0]! * c.args.q.shape[1]! * c.args.q.shape[2]! * 512);
    expectClose(c.kind, got, oracleDecode(withMeta(c.args)));
  });
});
