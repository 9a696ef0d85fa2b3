import { Worker } from 'node:worker_threads';
import { FlashMLAError } from '../errors.js';
import type { Job, JobReply } from './worker.js';

/**
 * The worker's entry: worker.js beside this module. Run from the TypeScript sources (the test
 * suite), workers run the compiled dist/reference/worker.js, which the test setup keeps current;
 * Node cannot run .ts files by itself.
 */
const WORKER_ENTRY = new URL(import.meta.url.endsWith('.ts') ? '../../dist/reference/worker.js' : './worker.js', import.meta.url);

function spawn(): Worker {
  const w = new Worker(WORKER_ENTRY);
  // Idle workers never keep the process alive; a job refs them while it runs.
  w.unref();
  return w;
}

/** Workers idle this long are stopped (a later call starts them again). */
const IDLE_RETIRE_MS = 30_000;

/**
 * Persistent worker threads (started on first need, stopped after IDLE_RETIRE_MS without work).
 * Calls take the pool one at a time (`exclusive`): a second call waits for the first, which also
 * keeps the staging arena (share.ts) to one user.
 */
class Pool {
  private readonly workers: Worker[] = [];
  private tail: Promise<unknown> = Promise.resolve();
  private busy = 0;
  private idleTimer: NodeJS.Timeout | undefined;

  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.tail.then(fn);
    this.tail = next.catch(() => undefined);
    return next;
  }

  /** Runs `job` on `threads` workers; call inside `exclusive`. */
  async run(job: Job, threads: number): Promise<void> {
    clearTimeout(this.idleTimer);
    this.busy++;
    try {
      while (this.workers.length < threads) this.workers.push(spawn());
      await Promise.all(this.workers.slice(0, threads).map((w) => this.runOn(w, job)));
    } finally {
      if (--this.busy === 0) this.scheduleRetire();
    }
  }

  /** Stops every worker once the pool has been idle for IDLE_RETIRE_MS (the timer keeps nothing alive). */
  private scheduleRetire(): void {
    this.idleTimer = setTimeout(() => {
      if (this.busy > 0) return;
      for (const w of this.workers.splice(0)) void w.terminate();
    }, IDLE_RETIRE_MS);
    this.idleTimer.unref();
  }

  private forget(w: Worker): void {
    const i = this.workers.indexOf(w);
    if (i >= 0) this.workers.splice(i, 1);
  }

  private runOn(w: Worker, job: Job): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const done = (): void => {
        w.off('message', onMessage);
        w.off('error', onError);
        w.off('exit', onExit);
        w.unref();
      };
      const onMessage = (reply: JobReply): void => {
        done();
        if (reply.ok) resolve();
        else reject(new FlashMLAError('E_INTERNAL', `reference worker failed: ${reply.error}`));
      };
      const onError = (e: Error): void => {
        done();
        // A worker that died is replaced on the next call.
        this.forget(w);
        reject(new FlashMLAError('E_INTERNAL', `reference worker died: ${e.message}`));
      };
      const onExit = (code: number): void => {
        done();
        this.forget(w);
        reject(new FlashMLAError('E_INTERNAL', `reference worker exited (status ${code}) during a call`));
      };
      w.on('message', onMessage);
      w.on('error', onError);
      w.on('exit', onExit);
      w.ref();
      try {
        w.postMessage(job);
      } catch (e) {
        done();
        reject(new FlashMLAError('E_INTERNAL', `posting work to a reference worker failed: ${(e as Error).message}`));
      }
    });
  }
}

export const pool = new Pool();
