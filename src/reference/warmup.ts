import { getMlaMetadata } from '../sched-meta.js';
import { zeros } from '../tensor.js';
import type { DecodeArgs } from '../types.js';
import { readDecodeOptions } from '../validate/args.js';
import { kernelsFor, resolveTier, type Tier } from './kernels.js';
import { referenceDecode, resolveThreads } from './index.js';
import { nativeRunner } from './runner.js';

/** Options of {@link warmup}. */
export interface WarmupOptions {
  /**
   * Threads to make ready, the calling one included: what later calls pass as `threads`.
   * Default: the available cores (`os.availableParallelism()`), as for a decode call.
   */
  threads?: number;
}

/** What {@link warmup} made ready. */
export interface WarmupReport {
  /** The tile-loop tier calls run on: `$FLASHMLA_REFERENCE_TIER`, else the fastest available. */
  readonly tier: Tier;
  /** Threads ready, the calling one included. */
  readonly threads: number;
  /** Milliseconds the warm-up took. */
  readonly ms: number;
}

/**
 * Two small decode calls (dense bf16 and sparse V3.2), each above the size at which calls use
 * more than the calling thread: zero inputs (finite, every logit 0), about 4·10⁷ FLOP each.
 */
function warmupCalls(): Omit<DecodeArgs, 'schedMeta'>[] {
  const pages = 16;
  const dense = {
    q: zeros('bf16', [1, 1, 16, 576]),
    kCache: zeros('bf16', [pages, 64, 1, 576]),
    blockTable: { dtype: 'int32', shape: [1, pages], data: Int32Array.from({ length: pages }, (_, i) => i) },
    cacheSeqlens: { dtype: 'int32', shape: [1], data: Int32Array.of(pages * 64) },
    headDimV: 512,
  } as const;
  const topk = 512;
  const sparse = {
    q: zeros('bf16', [1, 1, 64, 576]),
    kCache: zeros('uint8', [1, 64, 1, 656]),
    indices: { dtype: 'int32', shape: [1, 1, topk], data: Int32Array.from({ length: topk }, (_, i) => i % 64) },
    headDimV: 512,
    isFp8Kvcache: true,
    softmaxScale: 576 ** -0.5,
  } as const;
  return [dense, sparse];
}

/** Calls per shape on the JavaScript-driven tiers: V8 compiles a worker's hot loops after about ten. */
const JS_TIER_CALLS = 12;

/**
 * Readies the CPU reference backend before the first decode call, so that call runs at about the
 * steady speed (docs/reference-backend.md#cold-start): loads the addon or compiles the WebAssembly
 * tile module, starts the threads later calls use (the addon's helper threads on the native
 * tier, the worker pool on the others), and runs small decode calls through the public path so
 * the JavaScript of validation, merging and rounding (and, on the WebAssembly and TypeScript
 * tiers, the workers' item loops) is compiled. Safe to call again (cheap once done) and to skip:
 * calls never need it. Does nothing for the CUDA backend.
 *
 * @returns the tier and threads made ready and the time it took.
 * @throws FlashMLAError `E_VALUE` for a bad `options.threads` or `$FLASHMLA_REFERENCE_TIER`,
 *   `E_BACKEND` when the tier that variable forces cannot run here.
 */
export async function warmup(options?: WarmupOptions): Promise<WarmupReport> {
  const t0 = performance.now();
  const opts = readDecodeOptions<WarmupOptions>(options);
  const threads = resolveThreads(opts.threads);
  const tier = resolveTier();
  kernelsFor(tier);
  const runner = tier === 'native' ? nativeRunner() : null;
  if (runner) runner.startHelpers(threads - 1);
  // The runner's loops are compiled C++: two calls compile the JavaScript around them.
  const calls = runner ? 2 : JS_TIER_CALLS;
  for (const args of warmupCalls()) {
    for (let i = 0; i < calls; i++) {
      await referenceDecode({ ...args, schedMeta: getMlaMetadata() }, { backend: 'reference', threads });
    }
  }
  return { tier, threads, ms: performance.now() - t0 };
}
