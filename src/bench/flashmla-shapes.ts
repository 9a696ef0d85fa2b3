import { f32ToBf16 } from '../formats/bf16.js';
import { sparseCaseArgs, type ScopeData } from '../harness/cases.js';
import { Rng } from '../harness/random.js';
import { blockStride } from '../kvcache/layout.js';
import { quantizeKCache } from '../kvcache/quantize.js';
import type { HostTensor } from '../tensor.js';
import type { DecodeArgs } from '../types.js';

/** Inputs of one benchmark call, with FlashMLA's FLOP and byte counts for it. */
export interface BenchInputs {
  args: Omit<DecodeArgs, 'schedMeta'>;
  flops: number;
  bytes: number;
}

export interface BenchShape {
  /** Series: the FlashMLA benchmark the shape comes from. */
  group: string;
  name: string;
  /** Chart x value: the sequence length the series sweeps (dense), or null. */
  seqlen: number | null;
  build(): BenchInputs;
}

export type BenchTarget = 'gpu' | 'cpu';

const clamp1 = (x: number): number => (x < -1 ? -1 : x > 1 ? 1 : x);

/**
 * Fills `dst` by repeating a small random pool (randn/10 clamped, docs/flashmla-interface.md#dense-generator): benchmark timing does
 * not depend on the values, and drawing gigabytes of normals in JavaScript would take minutes.
 */
export function poolFill(dst: Uint16Array, rng: Rng, scale: number): void {
  const n = Math.min(dst.length, 1 << 16);
  for (let i = 0; i < n; i++) dst[i] = f32ToBf16(clamp1(rng.randn() * scale));
  for (let have = n; have < dst.length; have *= 2) dst.copyWithin(have, 0, Math.min(have, dst.length - have));
}

interface DenseBench {
  b: number;
  sQ: number;
  hQ: number;
  lengths: Int32Array;
  causal: boolean;
}

/** A dense bf16 case (h_k = 1, block 64) with FlashMLA's metrics (docs/flashmla-interface.md#dense-generator and docs/flashmla-interface.md#bench-flash-mla agree). */
function buildDense(p: DenseBench, seed: number): BenchInputs {
  const rng = new Rng(seed);
  const d = 576;
  const perSeq = Math.max(1, Math.ceil(Math.max(...p.lengths) / 64));
  const numBlocks = p.b * perSeq;
  const q = new Uint16Array(p.b * p.sQ * p.hQ * d);
  poolFill(q, rng, 0.1);
  const k = new Uint16Array(numBlocks * 64 * d);
  poolFill(k, rng, 0.1);
  const sumL = p.lengths.reduce((a, x) => a + x, 0);
  return {
    args: {
      q: { dtype: 'bf16', shape: [p.b, p.sQ, p.hQ, d], data: q },
      kCache: { dtype: 'bf16', shape: [numBlocks, 64, 1, d], data: k },
      blockTable: { dtype: 'int32', shape: [p.b, perSeq], data: rng.permutation(numBlocks) },
      cacheSeqlens: { dtype: 'int32', shape: [p.b], data: p.lengths },
      headDimV: 512,
      causal: p.causal,
    },
    // docs/flashmla-interface.md#bench-flash-mla: FLOPS = s_q·ΣL·h_q·(d+dv)·2; bytes = (ΣL·h_kv·d + b·s_q·h_q·(d+dv))·2.
    flops: p.sQ * sumL * p.hQ * (576 + 512) * 2,
    bytes: (sumL * 576 + p.b * p.sQ * p.hQ * (576 + 512)) * 2,
  };
}

interface SparseScopeBench {
  sK: number;
  topk: number;
  blockSize: number;
  withLength?: boolean;
}

interface SparseBench {
  b: number;
  sQ: number;
  hQ: 64 | 128;
  dQK: 576 | 512;
  main: SparseScopeBench;
  extra?: SparseScopeBench;
}

/**
 * One sparse KV scope. As in docs/flashmla-interface.md#sparse-generator, each query row picks `topk` distinct positions of
 * [0, s_k); unlike FlashMLA's generator only the tokens some index refers to are materialised (in
 * randomly permuted blocks), so the cache holds exactly the N_unique tokens the byte formula counts
 * instead of b·s_k mostly unread ones.
 */
function buildScope(rng: Rng, b: number, sQ: number, d: 576 | 512, sp: SparseScopeBench): ScopeData {
  const idx = new Int32Array(b * sQ * sp.topk).fill(-1);
  const lengths = sp.withLength ? Int32Array.from({ length: b }, () => rng.int(0, sp.topk + 1)) : null;
  let slots = 0;
  let unique = 0;
  let attended = 0;
  for (let i = 0; i < b; i++) {
    const slotOf = new Map<number, number>();
    const used = lengths ? lengths[i]! : sp.topk;
    const seenInLength = new Set<number>();
    for (let s = 0; s < sQ; s++) {
      const picks = rng.sample(sp.sK, Math.min(sp.sK, sp.topk));
      const base = (i * sQ + s) * sp.topk;
      for (let t = 0; t < picks.length; t++) {
        let slot = slotOf.get(picks[t]!);
        if (slot === undefined) { slot = slots++; slotOf.set(picks[t]!, slot); }
        idx[base + t] = slot;
        if (t < used) seenInLength.add(slot);
      }
      if (picks.length < used) seenInLength.add(-1);
    }
    unique += seenInLength.size;
    attended += used * sQ;
  }
  const B = sp.blockSize;
  const numBlocks = Math.max(1, Math.ceil(slots / B));
  const perm = rng.permutation(numBlocks);
  for (let j = 0; j < idx.length; j++) {
    const v = idx[j]!;
    if (v !== -1) idx[j] = perm[Math.floor(v / B)]! * B + (v % B);
  }
  // A quantised pool of whole blocks (docs/flashmla-interface.md#quantization), repeated over the cache block by block.
  const poolBlocks = Math.max(1, Math.min(numBlocks, Math.ceil(1024 / B)));
  const bf = new Uint16Array(poolBlocks * B * d);
  poolFill(bf, rng, 0.1);
  const layout = d === 576 ? 'v32' : 'model1';
  const pool = quantizeKCache({ dtype: 'bf16', shape: [poolBlocks, B, 1, d], data: bf }, layout);
  const stride = blockStride(layout, B);
  const bytes = new Uint8Array(numBlocks * stride);
  bytes.set(pool.data);
  for (let have = poolBlocks * stride; have < bytes.length; have *= 2) bytes.copyWithin(have, 0, Math.min(have, bytes.length - have));
  return {
    cache: { dtype: 'uint8', shape: [numBlocks, B, 1, pool.shape[3]!], strides: pool.strides, data: bytes },
    indices: { dtype: 'int32', shape: [b, sQ, sp.topk], data: idx },
    lengths: lengths ? { dtype: 'int32', shape: [b], data: lengths } : null,
    attended,
    unique,
  };
}

/** A sparse FP8 case with a finite sink per head and FlashMLA's metrics (docs/flashmla-interface.md#sparse-generator). */
function buildSparse(p: SparseBench, seed: number): BenchInputs {
  const rng = new Rng(seed);
  const d = p.dQK;
  const q = new Uint16Array(p.b * p.sQ * p.hQ * d);
  poolFill(q, rng, 1);
  const main = buildScope(rng, p.b, p.sQ, d, p.main);
  const extra = p.extra ? buildScope(rng, p.b, p.sQ, d, p.extra) : null;
  const sink: HostTensor<'fp32'> = { dtype: 'fp32', shape: [p.hQ], data: Float32Array.from({ length: p.hQ }, () => rng.randn()) };
  return sparseCaseArgs({ dtype: 'bf16', shape: [p.b, p.sQ, p.hQ, d], data: q }, sink, main, extra);
}

/** docs/flashmla-interface.md#dense-generator: max(Normal(s_k, s_k/2), s_q) per request. */
function varlen(b: number, sK: number, sQ: number, seed: number): Int32Array {
  const rng = new Rng(seed);
  return Int32Array.from({ length: b }, () => Math.max(Math.floor(sK + (sK / 2) * rng.randn()), sQ));
}

const scopeName = (s: SparseScopeBench): string => `topk=${s.topk} B=${s.blockSize}${s.withLength ? ' +len' : ''}`;

function sparseShape(group: string, p: SparseBench, seed: number): BenchShape {
  const name = `${p.dQK === 576 ? 'V3.2' : 'MODEL1'} b=${p.b} s_q=${p.sQ} h_q=${p.hQ} s_k=${p.main.sK} ${scopeName(p.main)}` +
    (p.extra ? ` extra[${scopeName(p.extra)}]` : '');
  return { group, name, seqlen: null, build: () => buildSparse(p, seed) };
}

/** MODEL1 configurations of docs/flashmla-interface.md#sparse-generator (main topk 128 in blocks of 256 plus an extra scope). */
const MODEL1_CONFIGS = [
  { hQ: 64, extra: { sK: 8192, topk: 512, blockSize: 64 } },
  { hQ: 128, extra: { sK: 8192, topk: 1024, blockSize: 2, withLength: true } },
] as const;

/**
 * FlashMLA's benchmark shapes: the docs/flashmla-interface.md#bench-flash-mla dense sweep, the docs/flashmla-interface.md#dense-generator dense and docs/flashmla-interface.md#sparse-generator sparse performance
 * cases. On the GPU at FlashMLA's sizes, except that the docs/flashmla-interface.md#bench-flash-mla sweep stops at 16384 and the docs/flashmla-interface.md#dense-generator
 * cases at s_k 8192 (a larger bf16 cache exceeds Node 20's 4 GiB typed-array limit) and the batch
 * lists are thinned to fit the GPU check's time budget. On the CPU, every batch is cut to 2 (1 for
 * the peak cases: 148 → 1), so the whole set runs in well under a minute.
 */
export function flashmlaShapes(target: BenchTarget): { shapes: BenchShape[]; note: string } {
  const gpu = target === 'gpu';
  const shapes: BenchShape[] = [];
  const bigB = gpu ? 128 : 2;
  for (const seqlen of [1024, 2048, 4096, 8192, 16384]) {
    // docs/flashmla-interface.md#bench-flash-mla: cache_seqlens[i] = seqlen + 2i, s_q 1, h_q 128, causal.
    const lengths = Int32Array.from({ length: bigB }, (_, i) => seqlen + 2 * i);
    shapes.push({
      group: 'dense sweep', name: `dense b=${bigB} s_q=1 h_q=128 seqlen=${seqlen}+2i causal`, seqlen,
      build: () => buildDense({ b: bigB, sQ: 1, hQ: 128, lengths, causal: true }, seqlen),
    });
  }
  for (const sK of [4096, 8192]) {
    shapes.push({
      group: 'dense test cases', name: `dense b=${bigB} s_q=2 h_q=128 s_k=${sK} varlen causal`, seqlen: sK,
      build: () => buildDense({ b: bigB, sQ: 2, hQ: 128, lengths: varlen(bigB, sK, 2, sK), causal: true }, sK + 1),
    });
  }
  for (const b of gpu ? [2, 64, 74, 128] : [2]) {
    shapes.push(sparseShape('V3.2 test cases', { b, sQ: 2, hQ: 128, dQK: 576, main: { sK: 32768, topk: 2048, blockSize: 64 } }, 100 + b));
  }
  for (const cfg of MODEL1_CONFIGS) {
    for (const b of gpu ? [2, 74, 148] : [2]) {
      shapes.push(sparseShape('MODEL1 test cases', { b, sQ: 2, hQ: cfg.hQ, dQK: 512, main: { sK: 32768, topk: 128, blockSize: 256 }, extra: cfg.extra }, 200 + b));
    }
  }
  for (const [hQ, dQK] of [[128, 576], [64, 512]] as const) {
    const b = gpu ? 148 : 1;
    shapes.push(sparseShape('sparse peak', { b, sQ: 2, hQ, dQK, main: { sK: 32768, topk: 16384, blockSize: 64 } }, 300 + hQ));
  }
  const note = gpu
    ? 'FlashMLA benchmark shapes; dense sweep up to 16384 and dense test cases up to s_k 8192 (Node 20 4 GiB buffer limit); sparse caches hold only referenced tokens'
    : 'FlashMLA benchmark shapes scaled for a CPU: every batch cut to 2 (peak cases b=148 → 1), other dimensions as FlashMLA; sparse caches hold only referenced tokens';
  return { shapes, note };
}
