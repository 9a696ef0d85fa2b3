// The three tile tiers of the reference backend (js, simd, relaxed) on the same generated cases,
// each against the float64 oracle with FlashMLA's tolerances (SPEC §7.1).
import { setFlagsFromString } from 'node:v8';
// Node 20 has relaxed SIMD only behind this V8 flag; it must be set before the module is compiled.
setFlagsFromString('--experimental-wasm-relaxed-simd');

import { describe, expect, test } from 'vitest';
import { generateDenseCase, generateSparseCase, type DecodeCase } from '../src/harness/cases.js';
import { checkIsAllclose, TOLERANCES } from '../src/harness/metrics.js';
import { oracleDecode } from '../src/harness/oracle.js';
import { referenceDecode, TIERS, tierAvailable, TIER_ENV } from '../src/reference/index.js';
import { getMlaMetadata } from '../src/sched-meta.js';
import type { DecodeResult } from '../src/types.js';
import type { HostTensor } from '../src/tensor.js';

const cases: DecodeCase[] = [
  generateDenseCase({ b: 2, sQ: 2, sK: 300, hQ: 6, hK: 2, varlen: true, causal: true }, 1),
  generateDenseCase({ b: 3, sQ: 1, sK: 140, hQ: 9, hK: 1, varlen: true, causal: false, zeroSeqlen: true }, 2),
  generateDenseCase({ b: 1, sQ: 3, sK: 200, hQ: 8, hK: 8, varlen: false, causal: true, dtype: 'fp16' }, 3),
  generateDenseCase({ b: 2, sQ: 2, sK: 130, hQ: 16, hK: 1, varlen: true, causal: true, nonContiguous: true }, 4),
  generateDenseCase({ b: 1, sQ: 3, sK: 150, hQ: 128, hK: 1, varlen: false, causal: true }, 8),
  generateSparseCase({ b: 2, sQ: 2, hQ: 64, dQK: 576, main: { sK: 700, topk: 256, blockSize: 61, varlen: true } }, 5),
  generateSparseCase({ b: 2, sQ: 1, hQ: 128, dQK: 512, main: { sK: 300, topk: 128, blockSize: 64, withLength: true },
    extra: { sK: 200, topk: 64, blockSize: 2, withLength: true }, sink: true }, 6),
  generateSparseCase({ b: 2, sQ: 1, hQ: 64, dQK: 512, main: { sK: 100, topk: 64, blockSize: 53, allInvalid: true }, sink: true }, 7),
];

const oracles = new Map<DecodeCase, DecodeResult<HostTensor>>();
function oracleOf(c: DecodeCase): DecodeResult<HostTensor> {
  let r = oracles.get(c);
  if (!r) oracles.set(c, (r = oracleDecode({ ...c.args, schedMeta: getMlaMetadata() })));
  return r;
}

test('every tier is available here (wasm built by the global setup, relaxed SIMD flag set)', () => {
  for (const tier of TIERS) expect(tierAvailable(tier), tier).toBe(true);
});

describe.each(TIERS)('tier %s', (tier) => {
  test.each(cases.map((c) => [c.name, c] as const))('%s matches the oracle', async (_, c) => {
    const r = await referenceDecode({ ...c.args, schedMeta: getMlaMetadata() }, { tier, threads: 1 });
    const o = oracleOf(c);
    const dense = c.kind === 'dense';
    const out = checkIsAllclose('out', r.out, o.out, dense ? TOLERANCES.denseOut : TOLERANCES.sparseOut);
    const lse = checkIsAllclose('lse', r.lse, o.lse, dense ? TOLERANCES.denseLse : TOLERANCES.sparseLse);
    expect(out.reason).toBe('');
    expect(lse.reason).toBe('');
    expect(out.pass && lse.pass).toBe(true);
  });
});

test(`${TIER_ENV} forces a tier; unknown names are E_VALUE`, async () => {
  const c = cases[0]!;
  const saved = process.env[TIER_ENV];
  try {
    process.env[TIER_ENV] = 'js';
    const viaEnv = await referenceDecode({ ...c.args, schedMeta: getMlaMetadata() }, { threads: 1 });
    const viaOption = await referenceDecode({ ...c.args, schedMeta: getMlaMetadata() }, { threads: 1, tier: 'js' });
    expect(viaEnv.out.data).toEqual(viaOption.out.data);
    expect(viaEnv.lse.data).toEqual(viaOption.lse.data);
    process.env[TIER_ENV] = 'avx';
    await expect(referenceDecode({ ...c.args, schedMeta: getMlaMetadata() }, { threads: 1 }))
      .rejects.toMatchObject({ code: 'E_VALUE', argument: TIER_ENV });
  } finally {
    if (saved === undefined) delete process.env[TIER_ENV];
    else process.env[TIER_ENV] = saved;
  }
  await expect(referenceDecode({ ...c.args, schedMeta: getMlaMetadata() }, { tier: 'sse' as never }))
    .rejects.toMatchObject({ code: 'E_VALUE', argument: 'options.tier' });
});
