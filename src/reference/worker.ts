/**
 * Worker-thread entry of the reference backend's pool (pool.ts). Each job names a tier, a shared
 * plan (share.ts) and a wave of work items; workers claim items with an atomic counter, so faster
 * threads take more, and write each item's partial into its slot of the shared results.
 */
import { parentPort } from 'node:worker_threads';
import type { DecodePlan } from '../plan.js';
import { kernelsFor, type Tier } from './kernels.js';
import { ITEM, runItem } from './items.js';
import { partialIn } from './partial.js';

export interface Job {
  tier: Tier;
  plan: DecodePlan;
  /** ITEM int32 per item (items.ts). */
  items: Int32Array;
  /** [next item to claim]. */
  counter: Int32Array;
  /** `slot` floats per item: its partial (partial.ts `partialIn`), rows = r1 − r0. */
  results: Float32Array;
  slot: number;
}

export type JobReply = { ok: true } | { ok: false; error: string };

function run(job: Job): void {
  const kernels = kernelsFor(job.tier);
  const { items, slot } = job;
  const n = items.length / ITEM;
  for (let j = Atomics.add(job.counter, 0, 1); j < n; j = Atomics.add(job.counter, 0, 1)) {
    const rows = items[ITEM * j + 5]! - items[ITEM * j + 4]!;
    runItem(job.plan, items, j, kernels, partialIn(job.results, j * slot, rows, job.plan.dV));
  }
}

parentPort?.on('message', (job: Job) => {
  let reply: JobReply;
  try {
    run(job);
    reply = { ok: true };
  } catch (e) {
    reply = { ok: false, error: e instanceof Error ? (e.stack ?? e.message) : String(e) };
  }
  parentPort!.postMessage(reply);
});
