/**
 * Running a call's work items, for decode (index.ts) and sparse prefill (prefill.ts) alike: on the
 * native runner, on the calling thread alone, or on the calling thread and the worker pool; each
 * item's partial goes, in item order, to the caller's `absorb` (docs/reference-backend.md#native-runner).
 */
import { availableParallelism } from 'node:os';
import { check, FlashMLAError } from '../errors.js';
import type { Bound } from '../plan.js';
import { extentOf, isHostTensor, type HostTensor } from '../tensor.js';
import { liveLength } from '../validate/args.js';
import { backLimit, claimBack, closeClaims, frontClaims, MAX_WAVE_ITEMS, openClaims } from './claim.js';
import { ITEM, itemRows, planFlops, runItem, type ItemPlan } from './items.js';
import { kernelsFor, resolveTier, type Tier, type TileKernels } from './kernels.js';
import { partialIn, type Partial } from './partial.js';
import { pool } from './pool.js';
import { firstReport, nativeRunner, runItemsNative, runnerResults, throwIfNonFiniteQ } from './runner.js';
import { arena, stagePlan, type Staged } from './share.js';
import type { Job } from './worker.js';

/** Per-call options of the reference backend (decode and prefill alike). */
export interface ReferenceOptions {
  /** Threads (default: os.availableParallelism()). 1 = the calling thread only. */
  threads?: number;
  /** Tile-loop tier (default: $FLASHMLA_REFERENCE_TIER, else the fastest available). */
  tier?: Tier;
  /** Same as `tier`, given as the kernels object of that tier. */
  kernels?: TileKernels;
}

/**
 * Below this many FLOPs a call runs on the calling thread: posting a job to the pool and waking
 * workers costs ~0.1 ms, about 3 MFLOP of SIMD work.
 */
export const PARALLEL_MIN_FLOPS = 2e7;

/**
 * How long primed helpers of the native runner spin for the call's items (µs): waking a sleeping
 * thread takes ~0.1 ms on the development machine, preparing the items a few tens of µs.
 */
const PRIME_MICROS = 300;

/** Results of at most this many bytes per wave of items in flight to the pool or the runner. */
const WAVE_BYTES = 64 << 20;

/**
 * The most threads a call may use: twice the cores (at least 8). More only adds threads that wait
 * for a core, each holding its own stack and compiled code.
 */
export const MAX_THREADS = Math.max(8, 2 * availableParallelism());

/** `threads` checked: an integer in [1, MAX_THREADS], default the number of cores. */
export function resolveThreads(threads: unknown): number {
  if (threads === undefined) return availableParallelism();
  check(typeof threads === 'number' && Number.isSafeInteger(threads) && threads >= 1 && threads <= MAX_THREADS, 'E_VALUE', 'options.threads',
    () => `options.threads must be an integer from 1 to ${MAX_THREADS} (twice the cores, at least 8), got ${String(threads)}`);
  return threads;
}

type Runner = NonNullable<ReturnType<typeof nativeRunner>>;

/** How a call runs: its tier's kernels, the native runner (native tier), and how many threads its items get. */
export interface CallSetup {
  /** The tier the call runs on. */
  tier: Tier;
  /** That tier's tile kernels (the pool's and the calling thread's items). */
  kernels: TileKernels;
  /** The addon's runner on the native tier, else null (the worker pool). */
  runner: Runner | null;
  /** The call's threads, or 1 when it is too small to share (PARALLEL_MIN_FLOPS). */
  threads: number;
}

/**
 * Resolves a call's threads and tier; a call that will run on several native threads wakes the
 * runner's helpers now, so that waking them overlaps preparing the items.
 */
export function setupCall(plan: ItemPlan, opts: ReferenceOptions): CallSetup {
  const threads = resolveThreads(opts.threads);
  const tier = resolveTier(opts.tier ?? opts.kernels?.name);
  const kernels = kernelsFor(tier);
  const runner = tier === 'native' ? nativeRunner() : null;
  const parallel = threads > 1 && planFlops(plan) >= PARALLEL_MIN_FLOPS;
  if (runner && parallel) runner.prime(threads - 1, PRIME_MICROS);
  return { tier, kernels, runner, threads: parallel ? threads : 1 };
}

/** Floats of one item's partial slot. */
export const slotFloats = (plan: ItemPlan): number => itemRows(plan) * (plan.dV + 2);

/** Items per wave of the runner: results of at most WAVE_BYTES. */
export const runnerWave = (n: number, slot: number): number => Math.max(1, Math.min(n, Math.floor(WAVE_BYTES / (4 * slot))));

/** The threads `count` items get: one for a single item. */
const threadsFor = (setup: CallSetup, count: number): number => (count === 1 ? 1 : setup.threads);

/**
 * While a call awaits its workers, the caller's code runs and may detach, transfer or shrink the
 * buffers of q and the caches (the int32 inputs are the call's own copies). Reading such a buffer
 * gives nothing or garbage, so the call ends with an error instead of computing on it.
 */
function expectIntact(plan: ItemPlan): void {
  const bound: readonly (readonly [string, Bound | null | undefined])[] = plan.kind === 'prefill' ? [['q', plan.q], ['kv', plan.kv]]
    : plan.kind === 'dense' ? [['q', plan.q], ['kCache', plan.kCache]]
    : [['q', plan.q], ['kCache', plan.main.cache], ['extraKCache', plan.extra?.cache], ['attnSink', plan.attnSink]];
  for (const [name, b] of bound) {
    if (b === null || b === undefined || !isHostTensor(b.tensor)) continue;
    check(liveLength(b.tensor.data) >= extentOf(b.view), 'E_BUFFER', name,
      `${name}'s buffer was detached, transferred or shrunk while the call was running`);
  }
}

/** The partial of item j in a buffer of equal slots. */
const slotOf = (items: Int32Array, j: number, slotIndex: number, buf: Float32Array, slot: number, dv: number): Partial =>
  partialIn(buf, slotIndex * slot, items[ITEM * j + 5]! - items[ITEM * j + 4]!, dv);

/** Staged items kept ready ahead of each worker's claims, so a worker never waits for the next. */
const STAGE_AHEAD = 2;

/** The shared state of a wave: claims, staging progress, finished items and their partials. */
type Wave = Pick<Job, 'counter' | 'ready' | 'done' | 'results' | 'slot'>;

/**
 * The calling thread's part of a wave that starts at item w0 of `items`: it keeps the workers'
 * next items staged (in front order, STAGE_AHEAD per worker ahead of their claims), between
 * stagings runs items from the back of the wave on the original plan, which needs no staging, and
 * after each item merges, in item order, the items finished so far (`mergeDone`).
 */
function runCallerShare(
  plan: ItemPlan, items: Int32Array, w0: number, { counter, ready, done, results, slot }: Wave,
  stage: Staged['stage'], kernels: TileKernels, workers: number, mergeDone: () => void,
): void {
  let staged = Atomics.load(ready, 0);
  for (;;) {
    if (stage && staged < Math.min(backLimit(counter), frontClaims(counter) + STAGE_AHEAD * workers)) {
      stage(items, w0 + staged);
      Atomics.store(ready, 0, ++staged);
      Atomics.notify(ready, 0);
      continue;
    }
    const j = claimBack(counter);
    if (j < 0) {
      // Everything is claimed; stage what workers claimed last, then leave.
      if (stage && staged < frontClaims(counter)) continue;
      return;
    }
    runItem(plan, items, w0 + j, kernels, slotOf(items, w0 + j, j, results, slot, plan.dV));
    done[j] = 1;
    mergeDone();
  }
}

/**
 * The runner's items in waves, partials merged here in item order (decode calls with an attention
 * sink, prefill calls); the runner reports a non-finite q, thrown once every wave is absorbed.
 */
function runOnRunner(runner: Runner, plan: ItemPlan, items: Int32Array, slot: number, setup: CallSetup, absorb: (j: number, p: Partial) => void): void {
  const n = items.length / ITEM;
  const wave = runnerWave(n, slot);
  const results = runnerResults(wave * slot);
  let badQ = -1;
  for (let w0 = 0; w0 < n; w0 += wave) {
    const count = Math.min(n - w0, wave);
    badQ = firstReport(badQ, runItemsNative(runner, plan, items.subarray(ITEM * w0), count, results, slot, threadsFor(setup, n)));
    for (let j = 0; j < count; j++) absorb(w0 + j, slotOf(items, w0 + j, j, results, slot, plan.dV));
  }
  throwIfNonFiniteQ(plan, badQ);
}

/**
 * Runs every item of a validated plan and hands each partial, in item order, to `absorb`: on the
 * native runner (synchronous, caller's buffers read in place), on the calling thread alone, or on
 * the calling thread and `threads − 1` pool workers (staged shared inputs, share.ts), checking
 * after each wait that the caller's buffers are still there. Which thread runs an item never
 * changes its partial, so results are bitwise identical for any thread count.
 */
export async function runItems(plan: ItemPlan, items: Int32Array, setup: CallSetup, absorb: (j: number, p: Partial) => void): Promise<void> {
  const n = items.length / ITEM;
  const slot = slotFloats(plan);
  const { runner, kernels, tier } = setup;
  if (runner) {
    runOnRunner(runner, plan, items, slot, setup, absorb);
    return;
  }
  const threads = threadsFor(setup, n);
  if (threads === 1) {
    const scratch = new Float32Array(slot);
    for (let j = 0; j < n; j++) {
      const p = slotOf(items, j, 0, scratch, slot, plan.dV);
      runItem(plan, items, j, kernels, p);
      absorb(j, p);
    }
    return;
  }

  await pool.exclusive(async () => {
    expectIntact(plan);
    arena.reset();
    const staged = stagePlan(plan);
    const wave = Math.min(n, MAX_WAVE_ITEMS, Math.max(threads, Math.floor(WAVE_BYTES / (4 * slot))));
    const results = arena.take<Float32Array>(Float32Array, wave * slot);
    const waveItems = arena.take<Int32Array>(Int32Array, ITEM * wave);
    const counter = arena.take<Int32Array>(Int32Array, 1);
    const ready = arena.take<Int32Array>(Int32Array, 1);
    const done = arena.take<Int32Array>(Int32Array, wave);
    for (let w0 = 0; w0 < n; w0 += wave) {
      const count = Math.min(n, w0 + wave) - w0;
      waveItems.set(items.subarray(ITEM * w0, ITEM * (w0 + count)));
      openClaims(counter, count);
      Atomics.store(ready, 0, staged.stage ? 0 : count);
      done.fill(0);
      let merged = 0;
      const mergeDone = (): void => {
        for (; merged < count && Atomics.load(done, merged) === 1; merged++) absorb(w0 + merged, slotOf(items, w0 + merged, merged, results, slot, plan.dV));
      };
      // The calling thread is one of the `threads`: it stages the workers' items and runs its own.
      const helpers = Math.min(threads - 1, count - 1);
      const workers = pool.run({ tier, plan: staged.plan, items: waveItems.subarray(0, ITEM * count), counter, results, slot, ready, done }, helpers);
      try {
        runCallerShare(plan, items, w0, { counter, ready, done, results, slot }, staged.stage, kernels, helpers, mergeDone);
      } catch (e) {
        closeClaims(counter);
        Atomics.store(ready, 0, count);
        Atomics.notify(ready, 0);
        await workers.catch(() => undefined);
        throw e;
      }
      await workers;
      expectIntact(plan);
      mergeDone();
    }
  });
}

/** The reference computes on host memory: a device tensor among a call's inputs is refused, by name. */
export function expectHostInputs(inputs: readonly (readonly [string, Bound | null | undefined])[]): void {
  for (const [name, b] of inputs) {
    if (b && !isHostTensor(b.tensor)) {
      throw new FlashMLAError('E_DEVICE', `${name} is a device tensor; the reference backend takes host tensors (download it first)`, name);
    }
  }
}

/** attnSink per head, read once (before any wait), or null without a sink. */
export function sinkValues(attnSink: Bound | null, hQ: number): Float32Array | null {
  if (!attnSink) return null;
  const t = attnSink.tensor as HostTensor<'fp32'>;
  const v = attnSink.view;
  return Float32Array.from({ length: hQ }, (_, h) => t.data[v.offset + h * v.strides[0]!]!);
}
