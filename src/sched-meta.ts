import { FlashMLAError } from './errors.js';

/** Snapshot of the first call's configuration (docs/flashmla-interface.md#sched-meta `Config`, same fields and order). */
export interface SchedConfig {
  /** Batch size. */
  readonly b: number;
  /** Query tokens per request. */
  readonly sQ: number;
  /** Query heads. */
  readonly hQ: number;
  /** Tokens per KV-cache block. */
  readonly pageBlockSize: number;
  /** KV heads (1 for sparse). */
  readonly hK: number;
  /** The causal mask (after FlashMLA drops it for s_q = 1). */
  readonly causal: boolean;
  /** Whether the cache is FP8 (sparse decode). */
  readonly isFp8Kvcache: boolean;
  /** Sparse: indices per query token; null for dense. */
  readonly topk: number | null;
  /** Sparse with an extra cache: its block size; else null. */
  readonly extraPageBlockSize: number | null;
  /** Sparse with an extra cache: its indices per query token; else null. */
  readonly extraTopk: number | null;
  /**
   * Host-readable values the schedule is computed from (null where device-resident). Not part of
   * FlashMLA's Config: it does not compare them and silently reuses a stale schedule (docs/flashmla-interface.md#sched-meta-caching);
   * we refuse a changed value instead.
   */
  readonly schedule?: ScheduleValues;
}

/** The inputs of FlashMLA's tile scheduler (docs/flashmla-interface.md#tile-scheduler) that change between decoding steps. */
export interface ScheduleValues {
  readonly cacheSeqlens: Int32Array | null;
  readonly topkLength: Int32Array | null;
  readonly extraTopkLength: Int32Array | null;
}

const SCHEDULE_FIELDS: readonly (keyof ScheduleValues)[] = ['cacheSeqlens', 'topkLength', 'extraTopkLength'];

function firstDifference(a: Int32Array, b: Int32Array): number {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

const CONFIG_FIELDS: readonly (keyof SchedConfig)[] = [
  'b', 'sQ', 'hQ', 'pageBlockSize', 'hK', 'causal', 'isFp8Kvcache', 'topk', 'extraPageBlockSize', 'extraTopk',
];

/** A later call's configuration against the recorded one, field by field, then the host-readable schedule values. */
function expectSameConfig(have: SchedConfig, config: SchedConfig): void {
  for (const f of CONFIG_FIELDS) {
    if (have[f] !== config[f]) {
      throw new FlashMLAError('E_SCHED_META',
        `${f} = ${String(config[f])} is inconsistent with sched_meta (first used with ${f} = ${String(have[f])}); ` +
        'use a new getMlaMetadata() for a new configuration', 'schedMeta');
    }
  }
  for (const f of SCHEDULE_FIELDS) {
    const before = have.schedule?.[f];
    const now = config.schedule?.[f];
    if (!before || !now) continue;
    const i = firstDifference(before, now);
    if (i >= 0) {
      throw new FlashMLAError('E_SCHED_META',
        `${f}[${i}] = ${now[i]} differs from the ${before[i]} this sched_meta was scheduled for; a schedule is only ` +
        'valid for the lengths it was made with (one getMlaMetadata() per decoding step, shared by all layers)', 'schedMeta');
    }
  }
}

/**
 * Per-backend state kept on a sched meta between calls (the CUDA backend keeps its device-side
 * tile-scheduler metadata here, computed once and reused, docs/flashmla-interface.md#sched-meta-caching). Disposable.
 */
export interface SchedMetaSlot {
  dispose(): void;
}

/**
 * FlashMLA's `FlashMLASchedMeta` (docs/flashmla-interface.md#sched-meta): the first decode call records its configuration;
 * later calls must match it. Reuse is only valid while the shapes *and* the values of
 * cacheSeqlens / topkLength / extraTopkLength are unchanged (one per decoding step, shared by all
 * layers), as in FlashMLA.
 */
export class FlashMLASchedMeta {
  // Private: resetting them would skip the consistency check and silently reuse a stale device
  // schedule. (Private fields also stay writable for this class when a caller freezes the object.)
  #config: SchedConfig | null = null;
  // The last frozen config that matched: a prepared call binds its plan's config object on every
  // call, and the same frozen object (whose schedule arrays are validation's own copies) matches again.
  #matched: SchedConfig | null = null;
  readonly #slots = new Map<object, SchedMetaSlot>();

  /** Whether a decode call has recorded its configuration. */
  get haveInitialized(): boolean {
    return this.#config !== null;
  }

  /** The configuration of the first call (frozen), or null. */
  get config(): SchedConfig | null {
    return this.#config;
  }

  /** How many backends keep state on this sched meta. @internal */
  get slotCount(): number {
    return this.#slots.size;
  }

  /** The state `owner` keeps here, if any. @internal */
  slot(owner: object): SchedMetaSlot | undefined {
    return this.#slots.get(owner);
  }

  /** Keeps `owner`'s state (disposed with the sched meta). @internal */
  setSlot(owner: object, slot: SchedMetaSlot): void {
    this.#slots.set(owner, slot);
  }

  /** First call records `config`; later calls must match it field by field (docs/flashmla-interface.md#sched-meta-caching). */
  bind(config: SchedConfig): void {
    if (config === this.#matched) return;
    if (this.#config === null) this.#config = Object.freeze({ ...config });
    else expectSameConfig(this.#config, config);
    if (Object.isFrozen(config)) this.#matched = config;
  }

  /** Frees backend state (device buffers). The object can be used again afterwards. */
  dispose(): void {
    for (const s of this.#slots.values()) s.dispose();
    this.#slots.clear();
  }
}

/** FlashMLA's `get_mla_metadata()`: a fresh, lazily initialised sched meta (docs/flashmla-interface.md#sched-meta). */
export function getMlaMetadata(): FlashMLASchedMeta {
  return new FlashMLASchedMeta();
}
