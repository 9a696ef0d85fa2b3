import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { FlashMLAError } from '../errors.js';
import type { Job, JobReply } from './worker.js';

/**
 * Running from the TypeScript sources (vitest), the worker entry is worker.ts, which Node 20
 * cannot load by itself: the worker gets module hooks that resolve `./x.js` to `./x.ts` and
 * transpile .ts with the `typescript` package (a devDependency, present wherever sources are).
 * From dist/ the entry is worker.js and needs nothing.
 */
export function sourceExecArgv(): string[] {
  const ts = pathToFileURL(createRequire(import.meta.url).resolve('typescript')).href;
  const hooks = `
import ts from ${JSON.stringify(ts)};
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
export async function resolve(spec, ctx, next) {
  if (spec.startsWith('.') && spec.endsWith('.js') && ctx.parentURL?.endsWith('.ts')) {
    const url = new URL(spec.slice(0, -3) + '.ts', ctx.parentURL);
    if (existsSync(fileURLToPath(url))) return { url: url.href, shortCircuit: true };
  }
  return next(spec, ctx);
}
export async function load(url, ctx, next) {
  if (!url.endsWith('.ts')) return next(url, ctx);
  const { outputText } = ts.transpileModule(readFileSync(fileURLToPath(url), 'utf8'), {
    compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
  });
  return { format: 'module', source: outputText, shortCircuit: true };
}`;
  const register = `import { register } from 'node:module'; register(${JSON.stringify(`data:text/javascript,${encodeURIComponent(hooks)}`)});`;
  return ['--import', `data:text/javascript,${encodeURIComponent(register)}`];
}

function spawn(): Worker {
  const fromSource = import.meta.url.endsWith('.ts');
  const w = new Worker(new URL(fromSource ? './worker.ts' : './worker.js', import.meta.url), fromSource ? { execArgv: sourceExecArgv() } : {});
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

  /** Live worker threads (for tests and reports). */
  get size(): number {
    return this.workers.length;
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
