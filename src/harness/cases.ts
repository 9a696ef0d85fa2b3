import { f32ToBf16 } from '../formats/bf16.js';
import { f32ToFp16 } from '../formats/fp16.js';
import { quantizeKCache } from '../kvcache/quantize.js';
import type { HostTensor } from '../tensor.js';
import type { HostDecodeArgs } from '../types.js';
import { Rng } from './random.js';

/** FlashMLA's unused block-table filler (docs/flashmla-interface.md#dense-generator). */
export const UNUSED_BLOCK_ID = 2147480000;

/** A dense case of FlashMLA's test generator. */
export interface DenseCaseParams {
  /** Batch size. */
  b: number;
  /** Query tokens per request. */
  sQ: number;
  /** Mean KV length. */
  sK: number;
  /** Query heads. */
  hQ: number;
  /** KV heads (h_q must be a multiple). */
  hK: number;
  /** Lengths drawn around sK per request (else all sK). */
  varlen: boolean;
  /** Causal mask (multi-token decode). */
  causal: boolean;
  /** ~50 % of requests get length 0 (docs/flashmla-interface.md#dense-generator corner cases). */
  zeroSeqlen?: boolean;
  /** q and cache dtype (default bf16). */
  dtype?: 'bf16' | 'fp16';
  /** q and the cache live in padded buffers (non-contiguous views, strides still TMA-friendly). */
  nonContiguous?: boolean;
}

/** One FP8 cache of a sparse case (main or extra) and its indices. */
export interface SparseScopeParams {
  /** Tokens per request in this cache. */
  sK: number;
  /** Indices per query token (a multiple of 64). */
  topk: number;
  /** Tokens per cache block. */
  blockSize: number;
  /** Lengths drawn per request (else all sK). */
  varlen?: boolean;
  /** Some requests get length 0. */
  zeroSeqlen?: boolean;
  /** Every index −1 (docs/flashmla-interface.md#sparse-generator "all indices invalid"). */
  allInvalid?: boolean;
  /** Pass a topk_length (resp. extra_topk_length) of randint(0, topk + 1) per request. */
  withLength?: boolean;
}

/** A sparse case of FlashMLA's test generator. */
export interface SparseCaseParams {
  /** Batch size. */
  b: number;
  /** Query tokens per request. */
  sQ: number;
  /** Query heads. */
  hQ: 64 | 128;
  /** 576 = V3.2 layout, 512 = MODEL1 layout. */
  dQK: 576 | 512;
  /** The main cache. */
  main: SparseScopeParams;
  /** An extra cache attended in the same softmax (MODEL1). */
  extra?: SparseScopeParams;
  /** A per-head attention sink. */
  sink?: boolean;
}

/** A generated decode case: arguments (without schedMeta) plus FlashMLA's FLOP/byte counts. */
export interface DecodeCase {
  /** Readable description of the shape. */
  name: string;
  /** Dense or sparse decode. */
  kind: 'dense' | 'sparse';
  /** The parameters it was generated from. */
  params: DenseCaseParams | SparseCaseParams;
  /** The call arguments, without a sched meta (add a fresh `getMlaMetadata()`). */
  args: Omit<HostDecodeArgs, 'schedMeta'>;
  /** docs/flashmla-interface.md#dense-generator / docs/flashmla-interface.md#sparse-generator formulas. */
  flops: number;
  /** Bytes the call reads and writes (for bandwidth figures). */
  bytes: number;
}

const clamp = (x: number, lo: number, hi: number): number => (x < lo ? lo : x > hi ? hi : x);
const roundUp = (x: number, m: number): number => Math.ceil(x / m) * m;

/** docs/flashmla-interface.md#dense-generator: lengths all s_k, or max(Normal(s_k, s_k/2), minLen); ~50 % zeros when asked. */
function seqlens(rng: Rng, b: number, sK: number, varlen: boolean, zero: boolean, minLen: number): Int32Array {
  const L = new Int32Array(b);
  for (let i = 0; i < b; i++) {
    L[i] = varlen ? Math.max(Math.floor(sK + (sK / 2) * rng.randn()), minLen) : sK;
    if (zero && rng.next() < 0.5) L[i] = 0;
  }
  return L;
}

function denseName(p: DenseCaseParams): string {
  return `dense ${p.dtype ?? 'bf16'} b=${p.b} s_q=${p.sQ} s_k=${p.sK} h_q=${p.hQ} h_k=${p.hK}` +
    `${p.varlen ? ' varlen' : ''}${p.causal ? ' causal' : ''}${p.zeroSeqlen ? ' zero-len' : ''}${p.nonContiguous ? ' strided' : ''}`;
}

/**
 * docs/flashmla-interface.md#dense-generator: q = randn/10 clamped to [−1, 1]; a randomly permuted paged cache of randn/10; every
 * slot past a request's length (and every unused block) NaN; unused table entries 2147480000.
 */
export function generateDenseCase(p: DenseCaseParams, seed: number): DecodeCase {
  const rng = new Rng(seed);
  const dtype = p.dtype ?? 'bf16';
  const enc = dtype === 'fp16' ? f32ToFp16 : f32ToBf16;
  const nan = dtype === 'fp16' ? 0x7e00 : 0x7fc0;
  const d = 576;
  const L = seqlens(rng, p.b, p.sK, p.varlen, p.zeroSeqlen ?? false, p.sQ);
  const maxPad = roundUp(Math.max(...L, 1), 256);
  const perSeq = maxPad / 64;
  const numBlocks = p.b * perSeq;
  const perm = rng.permutation(numBlocks);
  const table = new Int32Array(p.b * perSeq);
  for (let i = 0; i < table.length; i++) table[i] = perm[i]!;

  // Optional padding: +64 elements per row keeps strides multiples of 8 (TMA, docs/flashmla-interface.md#tma-alignment).
  const pad = p.nonContiguous ? 64 : 0;
  const qRow = d + pad;
  const q = new Uint16Array(p.b * p.sQ * p.hQ * qRow);
  for (let r = 0; r < p.b * p.sQ * p.hQ; r++) {
    for (let x = 0; x < d; x++) q[r * qRow + x] = enc(clamp(rng.randn() / 10, -1, 1));
  }
  const kRow = d + pad;
  const k = new Uint16Array(numBlocks * 64 * p.hK * kRow);
  for (let t = 0; t < numBlocks * 64 * p.hK; t++) {
    for (let x = 0; x < d; x++) k[t * kRow + x] = enc(clamp(rng.randn() / 10, -1, 1));
  }
  // NaN poisoning of everything past each request's length; unused table entries → 2147480000.
  for (let i = 0; i < p.b; i++) {
    const used = Math.ceil(L[i]! / 64);
    for (let j = 0; j < perSeq; j++) {
      const block = table[i * perSeq + j]!;
      const from = j < used ? Math.max(L[i]! - j * 64, 0) : 0;
      for (let row = from; row < 64; row++) {
        for (let h = 0; h < p.hK; h++) {
          const base = ((block * 64 + row) * p.hK + h) * kRow;
          k.fill(nan, base, base + d);
        }
      }
      if (j >= used) table[i * perSeq + j] = UNUSED_BLOCK_ID;
    }
  }
  const meanL = L.reduce((a, x) => a + x, 0) / p.b;
  return {
    name: denseName(p),
    kind: 'dense',
    params: p,
    args: {
      q: { dtype, shape: [p.b, p.sQ, p.hQ, d], strides: [p.sQ * p.hQ * qRow, p.hQ * qRow, qRow, 1], data: q },
      kCache: { dtype, shape: [numBlocks, 64, p.hK, d], strides: [64 * p.hK * kRow, p.hK * kRow, kRow, 1], data: k },
      blockTable: { dtype: 'int32', shape: [p.b, perSeq], data: table },
      cacheSeqlens: { dtype: 'int32', shape: [p.b], data: L },
      headDimV: 512,
      causal: p.causal,
    },
    // docs/flashmla-interface.md#dense-generator metrics.
    flops: p.b * p.hQ * p.sQ * (2 * 576 * meanL + 2 * meanL * 512),
    bytes: p.b * (p.sQ * p.hQ * 576 * 2 + meanL * p.hK * 576 * 2 + p.sQ * p.hQ * 512 * 2),
  };
}

/** One generated FP8 scope: cache, indices, optional lengths, and its counts for docs/flashmla-interface.md#sparse-generator's metrics. */
export interface ScopeData {
  cache: HostTensor<'uint8'>;
  indices: HostTensor<'int32'>;
  lengths: HostTensor<'int32'> | null;
  attended: number;
  unique: number;
}

/** docs/flashmla-interface.md#sparse-generator for one KV scope: paged cache, distinct random indices, NaN for unreferenced tokens, quantised. */
function sparseScope(rng: Rng, b: number, sQ: number, d: number, sp: SparseScopeParams): ScopeData {
  const B = sp.blockSize;
  const L = seqlens(rng, b, sp.sK, sp.varlen ?? false, sp.zeroSeqlen ?? false, 1);
  const maxPad = roundUp(Math.max(...L, 1), 4 * B);
  const perSeq = maxPad / B;
  const numBlocks = b * perSeq;
  const perm = rng.permutation(numBlocks);
  const lengths = sp.withLength ? Int32Array.from({ length: b }, () => rng.int(0, sp.topk + 1)) : null;
  const idx = new Int32Array(b * sQ * sp.topk).fill(-1);
  const referenced = new Uint8Array(numBlocks * B);
  const uniq = new Set<number>();
  for (let i = 0; i < b; i++) {
    const used = lengths ? lengths[i]! : sp.topk;
    for (let s = 0; s < sQ; s++) {
      const base = (i * sQ + s) * sp.topk;
      if (!sp.allInvalid) {
        const picks = rng.sample(L[i]!, Math.min(L[i]!, sp.topk));
        for (let t = 0; t < picks.length; t++) {
          const pos = picks[t]!;
          idx[base + t] = perm[i * perSeq + Math.floor(pos / B)]! * B + (pos % B);
        }
      }
      for (let t = 0; t < sp.topk; t++) {
        const v = idx[base + t]!;
        if (t < used) { uniq.add(v); if (v !== -1) referenced[v] = 1; }
      }
    }
  }
  // bf16 cache of randn/10 clamped, NaN where no valid in-length index points (docs/flashmla-interface.md#sparse-generator).
  const kv = new Uint16Array(numBlocks * B * d);
  for (let t = 0; t < numBlocks * B; t++) {
    for (let x = 0; x < d; x++) kv[t * d + x] = referenced[t] ? f32ToBf16(clamp(rng.randn() / 10, -1, 1)) : 0x7fc0;
  }
  const cache = quantizeKCache({ dtype: 'bf16', shape: [numBlocks, B, 1, d], data: kv }, d === 576 ? 'v32' : 'model1');
  return {
    cache,
    indices: { dtype: 'int32', shape: [b, sQ, sp.topk], data: idx },
    lengths: lengths ? { dtype: 'int32', shape: [b], data: lengths } : null,
    attended: lengths ? Array.from(lengths).reduce((a, x) => a + x, 0) * sQ : b * sQ * sp.topk,
    unique: uniq.size,
  };
}

function sparseName(p: SparseCaseParams): string {
  const scope = (s: SparseScopeParams): string =>
    `s_k=${s.sK} topk=${s.topk} B=${s.blockSize}${s.varlen ? ' varlen' : ''}${s.zeroSeqlen ? ' zero-len' : ''}` +
    `${s.allInvalid ? ' all-invalid' : ''}${s.withLength ? ' +len' : ''}`;
  return `sparse ${p.dQK === 576 ? 'V3.2' : 'MODEL1'} b=${p.b} s_q=${p.sQ} h_q=${p.hQ} [${scope(p.main)}]` +
    `${p.extra ? ` extra[${scope(p.extra)}]` : ''}${p.sink ? ' sink' : ''}`;
}

/**
 * docs/flashmla-interface.md#sparse-generator: q randn clamped to [−1, 1] in a padded (non-contiguous) buffer; sinks randn with
 * ±inf entries; per scope a quantised paged FP8 cache and indices; sm_scale = d_qk^−0.55.
 */
export function generateSparseCase(p: SparseCaseParams, seed: number): DecodeCase {
  const rng = new Rng(seed);
  const d = p.dQK;
  // non_contiguousify: last dim +128, other dims +1, then sliced back.
  const [B1, S1, H1, D1] = [p.b + 1, p.sQ + 1, p.hQ + 1, d + 128];
  const q = new Uint16Array(B1 * S1 * H1 * D1);
  for (let i = 0; i < p.b; i++) for (let s = 0; s < p.sQ; s++) for (let h = 0; h < p.hQ; h++) {
    const base = ((i * S1 + s) * H1 + h) * D1;
    for (let x = 0; x < d; x++) q[base + x] = f32ToBf16(clamp(rng.randn(), -1, 1));
  }
  let sink: HostTensor<'fp32'> | null = null;
  if (p.sink) {
    const v = new Float32Array(p.hQ);
    for (let h = 0; h < p.hQ; h++) {
      v[h] = rng.randn();
      const u = rng.randn();
      if (u > 0.5) v[h] = Infinity;
      else if (u < -0.5) v[h] = -Infinity;
    }
    sink = { dtype: 'fp32', shape: [p.hQ], data: v };
  }
  const main = sparseScope(rng, p.b, p.sQ, d, p.main);
  const extra = p.extra ? sparseScope(rng, p.b, p.sQ, d, p.extra) : null;
  const qt: HostTensor<'bf16'> = { dtype: 'bf16', shape: [p.b, p.sQ, p.hQ, d], strides: [S1 * H1 * D1, H1 * D1, D1, 1], data: q };
  return { name: sparseName(p), kind: 'sparse', params: p, ...sparseCaseArgs(qt, sink, main, extra) };
}

/**
 * Sparse decode arguments from generated parts (sm_scale = d_qk^−0.55 as FlashMLA's tests) and
 * docs/flashmla-interface.md#sparse-generator's metrics: FLOPs = 2·h_q·N_att·(d_qk + d_v); bytes = 2·b·s_q·h_q·(d_qk + d_v) + N_unique·token bytes.
 */
export function sparseCaseArgs(
  q: HostTensor<'bf16'>, sink: HostTensor<'fp32'> | null, main: ScopeData, extra: ScopeData | null,
): { args: Omit<HostDecodeArgs, 'schedMeta'>; flops: number; bytes: number } {
  const [b, sQ, hQ, d] = q.shape as [number, number, number, number];
  const attended = main.attended + (extra?.attended ?? 0);
  const tokenBytes = d === 576 ? 656 : 576;
  return {
    args: {
      q,
      kCache: main.cache,
      indices: main.indices,
      topkLength: main.lengths,
      attnSink: sink,
      extraKCache: extra?.cache ?? null,
      extraIndicesInKvcache: extra?.indices ?? null,
      extraTopkLength: extra?.lengths ?? null,
      headDimV: 512,
      isFp8Kvcache: true,
      softmaxScale: d ** -0.55,
    },
    flops: 2 * hQ * attended * (d + 512),
    bytes: 2 * b * sQ * hQ * (d + 512) + (main.unique + (extra?.unique ?? 0)) * tokenBytes,
  };
}
