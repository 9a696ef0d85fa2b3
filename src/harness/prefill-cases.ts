import { f32ToBf16 } from '../formats/bf16.js';
import type { HostSparseFwdArgs } from '../types.js';
import { Rng } from './random.js';

/** A sparse prefill case of FlashMLA's test generator (`tests/lib.py` `generate_testcase`). */
export interface PrefillCaseParams {
  /** Query tokens. */
  sQ: number;
  /** KV tokens. */
  sKv: number;
  /** Index positions per query token (a multiple of 64). */
  topk: number;
  /** Query heads. */
  hQ: 64 | 128;
  /** 576 = V3.2, 512 = MODEL1. */
  dQK: 576 | 512;
  /** A per-head sink, about a third of heads −Infinity and a third +Infinity. */
  sink?: boolean;
  /** A topkLength of randint(0, max(topk + 1, 64)) clamped to topk per query token. */
  withLength?: boolean;
  /**
   * A quarter of query tokens get only invalid indices (one invalid value for the whole call).
   * FlashMLA's generator picks ~2 % of tokens, too few to show up at CPU sizes.
   */
  allInvalid?: boolean;
  /** q, kv and indices in padded buffers (non-contiguous, strides still TMA-friendly). */
  nonContiguous?: boolean;
}

/** A generated prefill case: host arguments plus FlashMLA's FLOP and byte counts. */
export interface PrefillCase {
  /** Readable description of the shape. */
  name: string;
  /** Tells a prefill case from a decode case (DecodeCase['kind']). */
  kind: 'prefill';
  /** The parameters it was generated from. */
  params: PrefillCaseParams;
  /** The call arguments (smScale 0.5 as FlashMLA's test). */
  args: HostSparseFwdArgs;
  /** `count_flop_and_mem_vol`: 2·Σ used positions·h_q·(d_qk + d_v). */
  flops: number;
  /** Bytes read and written: valid kv rows, q, out. */
  bytes: number;
}

/**
 * The invalid index values FlashMLA's generator mixes in: −1 and values outside [0, s_kv) of
 * every kind (docs/flashmla-interface.md#sparse-prefill), s_kv itself included.
 */
export function invalidIndexCandidates(sKv: number): number[] {
  return [-2147483648, -123456, -1, sKv, 114514, 1919810, 2147480000, 2147483647];
}

const clamp = (x: number, lo: number, hi: number): number => (x < lo ? lo : x > hi ? hi : x);

export function prefillCaseName(p: PrefillCaseParams): string {
  return `prefill s_q=${p.sQ} s_kv=${p.sKv} topk=${p.topk} h_q=${p.hQ} d_qk=${p.dQK}` +
    `${p.sink ? ' sink' : ''}${p.withLength ? ' topk_length' : ''}${p.allInvalid ? ' all-invalid' : ''}${p.nonContiguous ? ' strided' : ''}`;
}

/**
 * FlashMLA's prefill generator: q, kv ~ N(0, 1)/10 plus one uniform offset in ±0.05 each, clamped
 * to ±10; each query token's indices are min(s_kv, topk) distinct tokens in random order, the
 * rest random invalid values; optional sink (N(0, 1), a third −∞, a third +∞) and topkLength.
 */
export function generatePrefillCase(p: PrefillCaseParams, seed: number): PrefillCase {
  const rng = new Rng(seed);
  const { sQ, sKv, topk, hQ, dQK } = p;
  const pad = p.nonContiguous ? 64 : 0;
  const normal = (n: number, width: number): Uint16Array => {
    const shift = (rng.next() - 0.5) / 10;
    const out = new Uint16Array(n * (width + pad));
    for (let r = 0; r < n; r++) {
      for (let x = 0; x < width; x++) out[r * (width + pad) + x] = f32ToBf16(clamp(rng.randn() / 10 + shift, -10, 10));
    }
    return out;
  };
  const q = normal(sQ * hQ, dQK);
  const kv = normal(sKv, dQK);
  const candidates = invalidIndexCandidates(sKv);
  const iRow = topk + (p.nonContiguous ? 64 : 0);
  const indices = new Int32Array(sQ * iRow);
  const allInvalidValue = candidates[rng.int(0, candidates.length)]!;
  let used = 0;
  let validRows = 0;
  for (let s = 0; s < sQ; s++) {
    const valid = Math.min(sKv, topk);
    const picked = rng.sample(sKv, valid);
    const row = indices.subarray(s * iRow, s * iRow + topk);
    for (let j = 0; j < topk; j++) row[j] = j < valid ? picked[j]! : candidates[rng.int(0, candidates.length)]!;
    if (p.allInvalid && rng.next() < 0.25) row.fill(allInvalidValue);
  }
  let sink: Float32Array | null = null;
  if (p.sink) {
    sink = new Float32Array(hQ);
    for (let h = 0; h < hQ; h++) {
      sink[h] = rng.randn();
      const m = rng.randn();
      if (m < -0.5) sink[h] = -Infinity;
      else if (m > 0.5) sink[h] = Infinity;
    }
  }
  let lengths: Int32Array | null = null;
  if (p.withLength) {
    lengths = new Int32Array(sQ);
    for (let s = 0; s < sQ; s++) lengths[s] = Math.min(rng.int(0, Math.max(topk + 1, 64)), topk);
  }
  for (let s = 0; s < sQ; s++) {
    const n = lengths ? lengths[s]! : topk;
    used += n;
    for (let j = 0; j < n; j++) {
      const t = indices[s * iRow + j]!;
      if (t >= 0 && t < sKv) validRows++;
    }
  }
  return {
    name: prefillCaseName(p),
    kind: 'prefill',
    params: p,
    args: {
      q: { dtype: 'bf16', shape: [sQ, hQ, dQK], strides: [hQ * (dQK + pad), dQK + pad, 1], data: q },
      kv: { dtype: 'bf16', shape: [sKv, 1, dQK], strides: [dQK + pad, dQK + pad, 1], data: kv },
      indices: { dtype: 'int32', shape: [sQ, 1, topk], strides: [iRow, iRow, 1], data: indices },
      smScale: 0.5,
      dV: 512,
      attnSink: sink ? { dtype: 'fp32', shape: [hQ], data: sink } : null,
      topkLength: lengths ? { dtype: 'int32', shape: [sQ], data: lengths } : null,
    },
    flops: 2 * used * hQ * (dQK + 512),
    bytes: validRows * dQK * 2 + sQ * hQ * (dQK + 512) * 2,
  };
}

/**
 * FlashMLA's prefill correctness grid (`tests/test_flash_mla_sparse_prefill.py`), cut to CPU size:
 * both d_qk and h_q; regular, irregular and out-of-bounds (s_kv < topk) shapes; s_q 1 and a few
 * dozen instead of 62/213; features (sink, topkLength) in every combination; all-invalid rows.
 */
export function prefillTestGrid(): PrefillCaseParams[] {
  const grid: PrefillCaseParams[] = [];
  for (const dQK of [512, 576] as const) {
    for (const hQ of [128, 64] as const) {
      for (const [sKv, topk] of [[128, 128], [592, 128], [1521, 256], [95, 128], [153, 256]] as const) {
        grid.push({ sQ: 1, sKv, topk, hQ, dQK });
        grid.push({ sQ: 5, sKv, topk, hQ, dQK, nonContiguous: true });
      }
      for (const [sKv, topk] of [[592, 128], [114, 384]] as const) {
        for (const sink of [false, true]) {
          for (const withLength of [false, true]) grid.push({ sQ: 6, sKv, topk, hQ, dQK, sink, withLength });
        }
      }
      grid.push({ sQ: 40, sKv: 256, topk: 256, hQ, dQK, sink: true, withLength: true, allInvalid: true });
      grid.push({ sQ: 3, sKv: 32, topk: 512, hQ, dQK, sink: true, withLength: true });
    }
  }
  return grid;
}
