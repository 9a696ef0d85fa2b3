import { availableParallelism } from 'node:os';
import { extentOf, isHostTensor, type HostTensor, type Tensor } from '../tensor.js';
import { check, FlashMLAError } from '../errors.js';
import type { DecodePlan, SparsePlan } from '../plan.js';
import type { CallOptions, DecodeArgs, DecodeResult } from '../types.js';
import { liveLength, readDecodeArgs, readDecodeOptions } from '../validate/args.js';
import { validateDecode } from '../validate/index.js';
import { allocateOutputs, writeRows, type RowPlaces } from './finalize.js';
import { ITEM, itemRows, planFlops, runItem, sameGroup, workItems } from './items.js';
import { kernelsFor, resolveTier, type Tier, type TileKernels } from './kernels.js';
import { copyPartial, mergeInto, partialIn, type Partial } from './partial.js';
import { pool } from './pool.js';
import { forgetQ } from './qmemo.js';
import type { Job } from './worker.js';
import { backLimit, claimBack, closeClaims, frontClaims, MAX_WAVE_ITEMS, openClaims } from './claim.js';
import { arena, stagePlan, type Staged } from './share.js';
import { firstReport, nativeRunner, runFinishing, runItemsNative, runnerResults, throwIfNonFiniteQ } from './runner.js';

export { resolveTier, TIER_ENV, TIERS, tierAvailable, tierUnavailable, type Tier } from './kernels.js';

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

/** Results of at most this many bytes per wave of items in flight to the pool. */
const WAVE_BYTES = 64 << 20;

function requireHost(plan: DecodePlan): void {
  const tensors: [Tensor, string][] = [[plan.q.tensor, 'q']];
  if (plan.kind === 'dense') {
    tensors.push([plan.kCache.tensor, 'kCache'], [plan.blockTable.tensor, 'blockTable'], [plan.cacheSeqlens.tensor, 'cacheSeqlens']);
  } else {
    tensors.push([plan.main.cache.tensor, 'kCache'], [plan.main.indices.tensor, 'indices']);
    if (plan.main.topkLength) tensors.push([plan.main.topkLength.tensor, 'topkLength']);
    if (plan.attnSink) tensors.push([plan.attnSink.tensor, 'attnSink']);
    if (plan.extra) {
      tensors.push([plan.extra.cache.tensor, 'extraKCache'], [plan.extra.indices.tensor, 'extraIndicesInKvcache']);
      if (plan.extra.topkLength) tensors.push([plan.extra.topkLength.tensor, 'extraTopkLength']);
    }
  }
  for (const [t, name] of tensors) {
    if (!isHostTensor(t)) {
      throw new FlashMLAError('E_DEVICE', `${name} is a device tensor; the reference backend takes host tensors (download it first)`, name);
    }
  }
}

/**
 * The most threads a call may use: twice the cores (at least 8). More only adds threads that wait
 * for a core, each holding its own stack and compiled code.
 */
export const MAX_THREADS = Math.max(8, 2 * availableParallelism());

/**
 * While a call awaits its workers, the caller's code runs and may detach, transfer or shrink the
 * buffers of q and the caches (the int32 inputs are the call's own copies). Reading such a buffer
 * gives nothing or garbage, so the call ends with an error instead of computing on it.
 */
function expectIntact(plan: DecodePlan): void {
  const bound = plan.kind === 'dense' ? [['q', plan.q], ['kCache', plan.kCache]] as const
    : [['q', plan.q], ['kCache', plan.main.cache], ['extraKCache', plan.extra?.cache], ['attnSink', plan.attnSink]] as const;
  for (const [name, b] of bound) {
    if (b === null || b === undefined || !isHostTensor(b.tensor)) continue;
    check(liveLength(b.tensor.data) >= extentOf(b.view), 'E_BUFFER', name,
      `${name}'s buffer was detached, transferred or shrunk while the call was running`);
  }
}

/** `threads` checked: an integer in [1, MAX_THREADS], default the number of cores. */
export function resolveThreads(threads: unknown): number {
  if (threads === undefined) return availableParallelism();
  check(typeof threads === 'number' && Number.isSafeInteger(threads) && threads >= 1 && threads <= MAX_THREADS, 'E_VALUE', 'options.threads',
    () => `options.threads must be an integer from 1 to ${MAX_THREADS} (twice the cores, at least 8), got ${String(threads)}`);
  return threads;
}

function sinkValues(plan: SparsePlan): Float32Array | null {
  if (!plan.attnSink) return null;
  const t = plan.attnSink.tensor as HostTensor<'fp32'>;
  const v = plan.attnSink.view;
  return Float32Array.from({ length: plan.hQ }, (_, h) => t.data[v.offset + h * v.strides[0]!]!);
}

/**
 * Folds item partials, in item order, into the group they belong to and writes each group's rows
 * when its last item arrives (LSE merge as FlashMLA's combine, docs/flashmla-interface.md#split-kv).
 * The worker pool's calls and the runner's calls with an attention sink finish here; the runner's
 * own finishing (runner.ts `runFinishing`) is tested against it bit for bit.
 */
export function merger(plan: DecodePlan, items: Int32Array, res: DecodeResult<HostTensor>): (j: number, p: Partial) => void {
  const rows = itemRows(plan);
  const accBuffer = new Float32Array(rows * (plan.dV + 2));
  let acc = partialIn(accBuffer, 0, 0, plan.dV);
  const n = items.length / ITEM;
  const sinks = plan.kind === 'sparse' ? sinkValues(plan) : null;
  const hpk = plan.kind === 'dense' ? plan.hQ / plan.hK : 1;
  const places: RowPlaces = { i: 0, s: new Int32Array(rows), h: new Int32Array(rows), sink: sinks };
  const factors = new Float64Array(rows);
  const bases = new Float64Array(rows);
  const field = (j: number, f: number): number => items[ITEM * j + f]!;
  return (j, p) => {
    if (j === 0 || !sameGroup(items, j, j - 1)) {
      acc = partialIn(accBuffer, 0, p.rows, plan.dV);
      copyPartial(acc, p);
    } else {
      mergeInto(acc, p);
    }
    if (j + 1 < n && sameGroup(items, j, j + 1)) return;
    const g = field(j, 1), r0 = field(j, 4);
    places.i = field(j, 0);
    for (let r = 0; r < acc.rows; r++) {
      const row = r0 + r;
      // Dense rows are (s, head of KV head g) (docs/flashmla-interface.md#dense-host-layer); sparse rows are the heads of token g.
      places.s[r] = plan.kind === 'dense' ? Math.floor(row / hpk) : g;
      places.h[r] = plan.kind === 'dense' ? g * hpk + (row % hpk) : row;
    }
    writeRows(res, plan, acc, places, factors, bases);
  };
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
  plan: DecodePlan, items: Int32Array, w0: number, { counter, ready, done, results, slot }: Wave,
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
 * The native tier: waves of items through the addon's runner (runner.ts), which returns when a
 * wave is done. Without an attention sink the runner's threads also merge each group's partials
 * and write its rows (runner.ts `runFinishing`); with one (whose out scaling needs the LSE) the
 * partials merge here in item order as the pool's do. Either way the runner reports a non-finite
 * q, which referenceDecode leaves to it (docs/reference-backend.md#native-runner).
 */
function runOnRunner(
  runner: NonNullable<ReturnType<typeof nativeRunner>>, plan: DecodePlan, items: Int32Array,
  res: DecodeResult<HostTensor>, slot: number, threads: number,
): void {
  const n = items.length / ITEM;
  const wave = Math.max(1, Math.min(n, Math.floor(WAVE_BYTES / (4 * slot))));
  if (!(plan.kind === 'sparse' && plan.attnSink)) {
    runFinishing(runner, plan, items, res, slot, threads, wave);
    return;
  }
  const absorb = merger(plan, items, res);
  const results = runnerResults(wave * slot);
  let badQ = -1;
  for (let w0 = 0; w0 < n; w0 += wave) {
    const count = Math.min(n - w0, wave);
    badQ = firstReport(badQ, runItemsNative(runner, plan, items.subarray(ITEM * w0), count, results, slot, threads));
    for (let j = 0; j < count; j++) absorb(w0 + j, slotOf(items, w0 + j, j, results, slot, plan.dV));
  }
  throwIfNonFiniteQ(plan, badQ);
}

/** Runs a validated plan on the CPU with FlashMLA's semantics (docs/flashmla-interface.md#reference-semantics). */
export async function runReference(plan: DecodePlan, opts: ReferenceOptions = {}): Promise<DecodeResult<HostTensor>> {
  try {
    return await runPlan(plan, opts);
  } finally {
    forgetQ();
  }
}

async function runPlan(plan: DecodePlan, opts: ReferenceOptions): Promise<DecodeResult<HostTensor>> {
  requireHost(plan);
  const threads = resolveThreads(opts.threads);
  const tier = resolveTier(opts.tier ?? opts.kernels?.name);
  const kernels = kernelsFor(tier);
  const runner = tier === 'native' ? nativeRunner() : null;
  const parallel = threads > 1 && planFlops(plan) >= PARALLEL_MIN_FLOPS;
  // The helpers wake up while this call's items and outputs are prepared (docs/reference-backend.md#native-runner).
  if (runner && parallel) runner.prime(threads - 1, PRIME_MICROS);
  const res = allocateOutputs(plan);
  const items = workItems(plan);
  const n = items.length / ITEM;
  const slot = itemRows(plan) * (plan.dV + 2);

  const serial = !parallel || n === 1;
  if (runner) {
    runOnRunner(runner, plan, items, res, slot, serial ? 1 : threads);
    return res;
  }
  const absorb = merger(plan, items, res);
  if (serial) {
    const scratch = new Float32Array(slot);
    for (let j = 0; j < n; j++) {
      const p = slotOf(items, j, 0, scratch, slot, plan.dV);
      runItem(plan, items, j, kernels, p);
      absorb(j, p);
    }
    return res;
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
  return res;
}

/** `flashMlaWithKvCache` on the reference backend: validate, bind the sched meta, run. */
export async function referenceDecode(callerArgs: DecodeArgs, callerOptions?: CallOptions & ReferenceOptions): Promise<DecodeResult<HostTensor>> {
  const args = readDecodeArgs(callerArgs);
  const options = readDecodeOptions(callerOptions);
  const threads = resolveThreads(options.threads);
  const tier = resolveTier(options.tier ?? options.kernels?.name);
  // The native runner checks q's values as its threads load q (docs/reference-backend.md#native-runner).
  const plan = validateDecode(args, { finiteQ: tier !== 'native' || nativeRunner() === null });
  args.schedMeta.bind(plan.config);
  return runReference(plan, { threads, tier, kernels: options.kernels });
}
