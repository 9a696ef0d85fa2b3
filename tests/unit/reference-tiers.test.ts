// The four tile tiers of the reference backend (native, relaxed, simd, js) on the same generated
// cases, each against the float64 oracle with FlashMLA's tolerances (docs/flashmla-interface.md#tolerances); then the native
// tier's kernels (both instruction sets) against the TypeScript ones tile by tile.
import { setFlagsFromString } from 'node:v8';
// Node 20 has relaxed SIMD only behind this V8 flag; it must be set before the module is compiled.
setFlagsFromString('--experimental-wasm-relaxed-simd');

import { describe, expect, test } from 'vitest';
import { FlashMLAError } from '../../src/errors.js';
import { generateDenseCase, generateSparseCase, type DecodeCase } from '../../src/harness/cases.js';
import { checkIsAllclose, TOLERANCES } from '../../src/harness/metrics.js';
import { oracleDecode } from '../../src/harness/oracle.js';
import { f32ToBf16 } from '../../src/formats/bf16.js';
import { Rng } from '../../src/harness/random.js';
import { MODEL1, V32 } from '../../src/kvcache/layout.js';
import { referenceDecode, resolveTier, TIERS, tierUnavailable, TIER_ENV } from '../../src/reference/index.js';
import { JsWorkspace } from '../../src/reference/tile-js.js';
import { NativeWorkspace, nativeTileApi, type CpuTileApi, type NativeIsa } from '../../src/reference/tile-native.js';
import type { Workspace } from '../../src/reference/workspace.js';
import { getMlaMetadata } from '../../src/sched-meta.js';
import type { DecodeResult } from '../../src/types.js';
import type { HostTensor } from '../../src/tensor.js';

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

test('every tier is available here (wasm built by the global setup, relaxed SIMD flag set, addon built, x86-64 with AVX2)', () => {
  for (const tier of TIERS) expect(tierUnavailable(tier), tier).toBeNull();
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

/** Runs `fn` with $FLASHMLA_REFERENCE_TIER unset. */
async function withoutTierEnv<T>(fn: () => Promise<T>): Promise<T> {
  const saved = process.env[TIER_ENV];
  delete process.env[TIER_ENV];
  try {
    return await fn();
  } finally {
    if (saved !== undefined) process.env[TIER_ENV] = saved;
  }
}

describe('native tier', () => {
  test('is what auto picks: the same bits as asking for it, on the calling thread and on 2 workers', async () => {
    const c = generateDenseCase({ b: 1, sQ: 2, sK: 1100, hQ: 128, hK: 1, varlen: false, causal: true }, 21);
    await withoutTierEnv(async () => {
      expect(resolveTier()).toBe('native');
      for (const threads of [1, 2]) {
        const auto = await referenceDecode({ ...c.args, schedMeta: getMlaMetadata() }, { threads });
        const native = await referenceDecode({ ...c.args, schedMeta: getMlaMetadata() }, { threads: 1, tier: 'native' });
        expect(Buffer.from(auto.out.data.buffer).equals(Buffer.from(native.out.data.buffer)), `out, ${threads} threads`).toBe(true);
        expect(Buffer.from(auto.lse.data.buffer).equals(Buffer.from(native.lse.data.buffer)), `lse, ${threads} threads`).toBe(true);
      }
    });
  });

  const api = nativeTileApi() as CpuTileApi;
  const isas: NativeIsa[] = api.isa === 'avx512' ? ['avx512', 'avx2'] : ['avx2'];
  const bf16Of = (rng: Rng): number => f32ToBf16(rng.randn());

  /**
   * Random FP8 token bytes: e4m3 codes without NaN (0x7f, 0xff), power-of-two scales that keep
   * values near those of the bf16 pages (so softmax weights spread), bf16 RoPE (docs/flashmla-interface.md#kv-caches).
   */
  function fp8Cache(rng: Rng, layout: 'v32' | 'model1', tokens: number): Uint8Array {
    const bytes = new Uint8Array(tokens * 1024 + 8);
    const view = new DataView(bytes.buffer);
    for (let i = 0; i < bytes.length; i++) bytes[i] = rng.int(0, 256) & 0xfe;
    for (let u = 0; u < tokens; u++) {
      if (layout === 'v32') {
        const at = u * V32.bytesPerToken;
        for (let j = 0; j < V32.numTiles; j++) view.setFloat32(at + V32.scalesAt + 4 * j, 2 ** rng.int(-9, -5), true);
        for (let d = 0; d < V32.dRope; d++) view.setUint16(at + V32.ropeAt + 2 * d, bf16Of(rng), true);
      } else {
        for (let d = 0; d < MODEL1.dRope; d++) view.setUint16(u * MODEL1.recordBytes + MODEL1.ropeAt + 2 * d, bf16Of(rng), true);
        for (let j = 0; j < MODEL1.numTiles; j++) bytes[tokens * MODEL1.recordBytes + u * MODEL1.scaleRecordBytes + j] = rng.int(118, 122);
      }
    }
    return bytes;
  }

  /**
   * The same tiles through a native workspace and a TypeScript one: rows not a multiple of the
   * vector width, one row that never sees a key, causal-like visibility, partial tiles, a bf16
   * page with gaps between rows, and FP8 tiles gathered from two caches at once.
   */
  function runTiles(ws: Workspace, layout: 'v32' | 'model1', seed: number): void {
    const rng = new Rng(seed);
    const { rows, dim } = ws;
    // Row 0's query is zero (all its logits are 0).
    for (let i = dim; i < rows * dim; i++) ws.q32[i] = bf16Of(rng) << 16;
    ws.reset();
    const scaleLog2 = Math.LOG2E / Math.sqrt(dim);
    const ld = dim + 64;
    const page = Uint16Array.from({ length: 64 * ld }, () => bf16Of(rng));
    const caches = [fp8Cache(rng, layout, 40), fp8Cache(rng, layout, 40)];
    for (const [kind, tokens] of [['bf16', 64], ['fp8', 64], ['bf16', 37], ['fp8', 29]] as const) {
      if (kind === 'bf16') ws.loadBf16(page, 5, ld, tokens);
      for (let u = 0; kind === 'fp8' && u < tokens; u++) {
        const cache = caches[u < 20 ? 0 : 1]!;
        const t = rng.int(0, 40);
        if (layout === 'v32') ws.tokenV32(cache, t * V32.bytesPerToken, u);
        else ws.tokenModel1(cache, 0, 40, t, u);
      }
      if (kind === 'fp8') ws.endTokens(layout, tokens);
      for (let r = 0; r < rows; r++) ws.vis[r] = r === 1 ? 0 : Math.min(tokens, 3 * r + 1);
      ws.step(tokens, scaleLog2);
    }
  }

  describe.each(isas)('%s kernels', (isa) => {
    test.each([[21, 'v32'], [16, 'model1'], [128, 'v32']] as const)('%i rows, %s: the TypeScript tier\'s m, l and o', (rows, layout) => {
      const dim = layout === 'v32' ? V32.dQK : MODEL1.dQK;
      const native = new NativeWorkspace(api, rows, dim, 512, isa);
      const js = new JsWorkspace(rows, dim, 512);
      expect(native.isa).toBe(isa);
      runTiles(native, layout, 31);
      runTiles(js, layout, 31);
      // Row 1 saw no key: FlashMLA's lonely-row state, exactly.
      expect([native.m[1], native.l[1]]).toEqual([-Infinity, 0]);
      expect(native.o.subarray(512, 1024).every((x) => x === 0)).toBe(true);
      let worst = 0;
      for (let r = 0; r < rows; r++) {
        if (r === 1) continue;
        // Summation order differs (16- or 8-lane against scalar): compare the normalised rows.
        const lse = (ws: Workspace): number => ws.m[r]! + Math.log2(ws.l[r]!);
        expect(Math.abs(lse(native) - lse(js))).toBeLessThan(1e-5 * (1 + Math.abs(lse(js))));
        for (let x = r * 512; x < (r + 1) * 512; x++) {
          worst = Math.max(worst, Math.abs(native.o[x]! / native.l[r]! - js.o[x]! / js.l[r]!));
        }
      }
      expect(worst).toBeLessThan(3e-5);
    });
  });

  test('the addon checks every source range: a tile or token past the end of its array is a FlashMLAError', () => {
    const ws = new NativeWorkspace(api, 4, V32.dQK, 512);
    expect(() => ws.loadBf16(new Uint16Array(2 * V32.dQK - 1), 0, V32.dQK, 2)).toThrow(FlashMLAError);
    expect(() => ws.loadBf16(new Uint16Array(2 * V32.dQK), -1, V32.dQK, 1)).toThrow(FlashMLAError);
    const bytes = new Uint8Array(V32.bytesPerToken);
    ws.tokenV32(bytes, 1, 0);
    expect(() => ws.endTokens('v32', 1)).toThrow(FlashMLAError);
    ws.tokenV32(bytes, 0, 0);
    expect(() => ws.endTokens('model1', 1)).toThrow(FlashMLAError);
    ws.tokenV32(bytes, 0, 0);
    expect(() => ws.endTokens('v32', 1)).not.toThrow();
    expect(() => new api.Tile(4, 100, 64)).toThrow(FlashMLAError);
  });

  test('the range checks do not wrap: counts and strides near 2^63 are a RangeError, not a read past the array', () => {
    // Each of these once passed its check through a wrapped int64 product or sum (found under ASan).
    const tile = new api.Tile(1, 16, 16);
    expect(() => tile.bf16(new Uint16Array(64), 0, 2 ** 62, 3)).toThrow(FlashMLAError);
    expect(() => api.gather!(new Uint8Array(128), new Uint8Array(128), new Float64Array(24), 2 ** 62)).toThrow(FlashMLAError);
    const f = (n: number) => new Float32Array(n);
    expect(() => api.merge!(f(4), f(4), f(32), f(4), f(4), f(32), 4, 2 ** 62)).toThrow(FlashMLAError);
    expect(() => api.bf16Rows!(f(1), new Float64Array(4), new Uint16Array(1), new Float64Array(4).fill(-1), 4, 2 ** 62)).toThrow(FlashMLAError);
    // The boundary itself still passes.
    expect(() => tile.bf16(new Uint16Array(2 * 5 + 16), 0, 5, 3)).not.toThrow();
    expect(() => api.gather!(new Uint8Array(8), new Uint8Array(8), new Float64Array([0, 0, 8]), 1)).not.toThrow();
  });
});
