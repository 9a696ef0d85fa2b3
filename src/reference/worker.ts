/**
 * Worker-thread entry of the reference backend's pool (pool.ts). Each job names a tier, a shared
 * plan (share.ts) and a wave of work items; workers claim items from the front of the wave
 * (claim.ts), so faster threads take more, wait until the calling thread has staged the item, and
 * write its partial into its slot of the shared results.
 */
import { parentPort } from 'node:worker_threads';
import { claimFront } from './claim.js';
import { kernelsFor, type Tier } from './kernels.js';
import { ITEM, runItem, type ItemPlan } from './items.js';
import { partialIn } from './partial.js';
import { forgetQ } from './qmemo.js';

export interface Job {
  tier: Tier;
  plan: ItemPlan;
  /** ITEM int32 per item (items.ts). */
  items: Int32Array;
  /** Both ends of the unclaimed items (claim.ts). */
  counter: Int32Array;
  /** [items staged so far, from the front]: item j may run once this exceeds j. */
  ready: Int32Array;
  /** `slot` floats per item: its partial (partial.ts `partialIn`), rows = r1 − r0. */
  results: Float32Array;
  slot: number;
  /** Per item, 1 once its partial is in `results` (the calling thread merges finished items early). */
  done: Int32Array;
}

export type JobReply = { ok: true } | { ok: false; error: string };

function run(job: Job): void {
  const kernels = kernelsFor(job.tier);
  const { items, slot } = job;
  for (let j = claimFront(job.counter); j >= 0; j = claimFront(job.counter)) {
    for (let r = Atomics.load(job.ready, 0); r <= j; r = Atomics.load(job.ready, 0)) Atomics.wait(job.ready, 0, r);
    const rows = items[ITEM * j + 5]! - items[ITEM * j + 4]!;
    runItem(job.plan, items, j, kernels, partialIn(job.results, j * slot, rows, job.plan.dV));
    Atomics.store(job.done, j, 1);
  }
}

parentPort?.on('message', (job: Job) => {
  let reply: JobReply;
  try {
    run(job);
    reply = { ok: true };
  } catch (e) {
    reply = { ok: false, error: e instanceof Error ? (e.stack ?? e.message) : String(e) };
  } finally {
    forgetQ();
  }
  parentPort!.postMessage(reply);
});
