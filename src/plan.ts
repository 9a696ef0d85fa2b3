import type { Tensor, View } from './tensor.js';
import type { KvLayout } from './types.js';
import type { SchedConfig } from './sched-meta.js';

/** A tensor argument after validation: the object the caller passed and its normalised view. */
export interface Bound {
  readonly tensor: Tensor;
  readonly view: View;
}

/**
 * A validated dense decode (docs/flashmla-interface.md#dense-host-layer): everything a backend needs, already checked against
 * FlashMLA's host and launcher rules and our range rules. Produced by `validateDecode`.
 */
export interface DensePlan {
  readonly kind: 'dense';
  /** What the call records in / checks against its FlashMLASchedMeta (docs/flashmla-interface.md#sched-meta-caching). */
  readonly config: SchedConfig;
  readonly dtype: 'bf16' | 'fp16';
  readonly b: number;
  readonly sQ: number;
  readonly hQ: number;
  readonly hK: number;
  /** Always 576 (docs/flashmla-interface.md#dense-host-layer: the launcher exits for 512). */
  readonly dQK: number;
  readonly dV: number;
  readonly numBlocks: number;
  /** Always 64 for dense. */
  readonly pageBlockSize: number;
  readonly maxBlocksPerSeq: number;
  /** After the host's `s_q == 1 ⇒ causal = false` override (docs/flashmla-interface.md#dense-host-layer step 7). */
  readonly causal: boolean;
  readonly softmaxScale: number;
  readonly q: Bound;
  readonly kCache: Bound;
  readonly blockTable: Bound;
  readonly cacheSeqlens: Bound;
  /** Host copy of cacheSeqlens when it was host-readable (or downloaded for validation). */
  readonly seqlens: Int32Array | null;
}

/** One FP8 cache and the indices that point into it (main or extra, docs/flashmla-interface.md#sparse-semantics). */
export interface SparseScope {
  readonly cache: Bound;
  readonly numBlocks: number;
  readonly pageBlockSize: number;
  /** Bytes from one block to the next (`stride(0)`), e.g. ceil(B·584/576)·576 for MODEL1. */
  readonly blockStride: number;
  readonly indices: Bound;
  /** indices.shape[2]. */
  readonly topk: number;
  readonly topkLength: Bound | null;
  /** Host copy of topkLength when host-readable. */
  readonly lengths: Int32Array | null;
}

/** A validated sparse FP8 decode (docs/flashmla-interface.md#sparse-host-layer). */
export interface SparsePlan {
  readonly kind: 'sparse';
  readonly config: SchedConfig;
  readonly layout: KvLayout;
  readonly b: number;
  readonly sQ: number;
  readonly hQ: number;
  /** 576 (V3.2) or 512 (MODEL1). */
  readonly dQK: number;
  readonly dV: number;
  /** 656 (V3.2) or 584 (MODEL1). */
  readonly bytesPerToken: number;
  readonly softmaxScale: number;
  readonly q: Bound;
  readonly main: SparseScope;
  readonly extra: SparseScope | null;
  readonly attnSink: Bound | null;
}

export type DecodePlan = DensePlan | SparsePlan;

/**
 * A validated sparse prefill (docs/flashmla-interface.md#sparse-prefill): `flash_mla_sparse_fwd`'s
 * host checks, the launcher checks that hold on every architecture, and our range rules.
 * Produced by `validateSparseFwd`.
 */
export interface PrefillPlan {
  readonly kind: 'prefill';
  readonly sQ: number;
  readonly sKv: number;
  /** 64 or 128. */
  readonly hQ: number;
  /** Always 1. */
  readonly hKv: number;
  /** 576 (V3.2) or 512 (MODEL1). */
  readonly dQK: number;
  /** Always 512. */
  readonly dV: number;
  /** indices.shape[2]: a positive multiple of 64. */
  readonly topk: number;
  readonly smScale: number;
  readonly q: Bound;
  readonly kv: Bound;
  /** Host int32 indices are the call's own copy (validate/common.ts bind). */
  readonly indices: Bound;
  readonly attnSink: Bound | null;
  readonly topkLength: Bound | null;
  /** Host copy of topkLength (each in [0, topk]) when host-readable or downloaded. */
  readonly lengths: Int32Array | null;
}
