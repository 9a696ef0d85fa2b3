// One soak phase (tests/stress/soak.test.ts runs it on the TypeScript sources, scripts/soak.mjs on
// dist/): many decode or sparse prefill calls in one process with device-resident and host tensors, device tensors
// freed by dispose() and by garbage collection, sched metas renewed, instances opened beside a
// long-lived one and dropped; memory, threads and the emulated device's memory sampled; growth is
// the mean of the last 10 % of samples minus the mean of the first 10 %.

/**
 * @typedef {{ call: number, rss: number, heapUsed: number, heapTotal: number, external: number, arrayBuffers: number, threads: number, deviceUsed: number }} SoakSample
 * @typedef {Record<'rss' | 'heapUsed' | 'external' | 'deviceUsed' | 'threads', number>} SoakBounds
 * @typedef {{ phase: 'noop' | 'compute' | 'reference' | 'prefill' | 'prefill-native', calls: number, elapsedMs: number, samples: SoakSample[], growth: Partial<SoakBounds>, bounds: SoakBounds, violations: string[], mismatches: string[] }} SoakResult
 */

import { readFileSync } from 'node:fs';

export const MiB = 2 ** 20;

/**
 * Growth bounds (bytes, or threads) per phase. RSS and heap: allocator and JIT noise of a few MiB
 * is normal, a leak of one output pair (~8 KiB host or device) per call would grow them by
 * hundreds of MiB over 100,000 calls. Device memory and threads must not grow at all: every
 * sample is taken with no tensor of the loop alive, after GC and after the frees ran.
 */
export const DEFAULT_BOUNDS = { rss: 48 * MiB, heapUsed: 16 * MiB, external: 16 * MiB, deviceUsed: 0, threads: 0 };

/**
 * The phase's cases. Decode: a dense one (sm90 only) and a MODEL1 sparse one with an extra cache
 * and a sink (tiny ones on the reference). Prefill: a V3.2 one with a sink and a MODEL1 one with
 * topk_length, strided, some indices invalid.
 */
function makeCases(lib, phase) {
  if (phase === 'prefill' || phase === 'prefill-native') {
    return [
      // topk 128: a multiple every architecture's kernel takes (sm90 loads indices in blocks of 128).
      lib.generatePrefillCase({ sQ: 1, sKv: 200, topk: 128, hQ: 64, dQK: 576, sink: true }, 301),
      lib.generatePrefillCase({ sQ: 1, sKv: 40, topk: 128, hQ: 64, dQK: 512, withLength: true, nonContiguous: true }, 302),
    ];
  }
  if (phase === 'reference') {
    return [
      lib.generateDenseCase({ b: 1, sQ: 1, sK: 20, hQ: 2, hK: 1, varlen: false, causal: false }, 201),
      lib.generateSparseCase({ b: 1, sQ: 1, hQ: 64, dQK: 576, main: { sK: 40, topk: 64, blockSize: 64 } }, 202),
    ];
  }
  return [
    lib.generateDenseCase({ b: 2, sQ: 1, sK: 64, hQ: 8, hK: 1, varlen: true, causal: false }, 101),
    lib.generateSparseCase({ b: 2, sQ: 1, hQ: 64, dQK: 512, main: { sK: 64, topk: 64, blockSize: 64, withLength: true }, extra: { sK: 40, topk: 64, blockSize: 64 }, sink: true }, 102),
  ];
}

/** The tensor argument names of a case's call. */
const tensorKeys = (lib, c) => (c.kind === 'prefill' ? lib.SPARSE_FWD_TENSOR_KEYS : lib.TENSOR_ARG_KEYS);

async function uploadArgs(lib, fm, c) {
  const out = { ...c.args };
  for (const f of tensorKeys(lib, c)) if (c.args[f]) out[f] = await fm.upload(c.args[f]);
  return out;
}

function disposeArgs(lib, c, args) {
  for (const f of tensorKeys(lib, c)) args[f]?.dispose?.();
}

/** One call of the case's kind: decode with its sched meta, sparse prefill without one. Outputs by name. */
async function callCase(fm, c, args, meta) {
  if (c.kind !== 'prefill') return fm.flashMlaWithKvCache({ ...args, schedMeta: meta });
  return fm.flashMlaSparseFwd(args);
}

const sameBits = (a, b) => a.dtype === b.dtype && a.shape.join() === b.shape.join() &&
  Buffer.compare(Buffer.from(a.data.buffer, a.data.byteOffset, a.data.byteLength), Buffer.from(b.data.buffer, b.data.byteOffset, b.data.byteLength)) === 0;

const threadCount = () => {
  try {
    return Number(/^Threads:\s+(\d+)/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? NaN);
  } catch {
    return NaN;
  }
};

const settle = () => new Promise((r) => setTimeout(r, 10));

/**
 * The emulated device's memory in use, from cudaMemGetInfo. Nothing public reports free device
 * memory (FlashMLA.info() gives the total only), so this starts a throwaway engine of the addon,
 * whose start() reads cudaMemGetInfo, and disposes it.
 */
async function deviceUsed(lib, library) {
  const addon = lib.loadAddon();
  if (!addon.ok) throw new Error(addon.reason);
  const located = await lib.locateFlashMla(library);
  if (!located.ok) throw new Error(located.reason);
  const opened = lib.openLibrary(addon.addon, located.library);
  if (!opened.ok) throw new Error(opened.reason);
  const engine = new addon.addon.Engine(opened.library.native, 0);
  try {
    const s = await engine.start();
    return s.totalMemory - s.freeMemory;
  } finally {
    await engine.dispose();
  }
}

function growth(samples) {
  const k = Math.max(1, Math.floor(samples.length / 10));
  const mean = (xs, key) => xs.reduce((s, x) => s + x[key], 0) / xs.length;
  const first = samples.slice(0, k);
  const last = samples.slice(-k);
  const out = {};
  for (const key of ['rss', 'heapUsed', 'external', 'deviceUsed', 'threads']) {
    if (samples.every((s) => Number.isFinite(s[key]))) out[key] = Math.round(mean(last, key) - mean(first, key));
  }
  return out;
}

/**
 * One soak phase. `lib`: the package modules (from dist/ or src/) plus buildEmulator; `gc`: a
 * full collection (global.gc under --expose-gc). Returns calls, samples, growth, violations of
 * `bounds`, and result mismatches.
 */
/**
 * @param {Record<string, any>} lib the package's modules (sources or dist) and buildEmulator
 * @param {{ phase: SoakResult['phase'], calls: number, samples?: number, bounds?: SoakBounds, dropMetas?: boolean, gc: () => void, onSample?: (s: SoakSample) => void }} options
 *   dropMetas (default true): drop every other sched meta without dispose()
 * @returns {Promise<SoakResult>}
 */
export async function soakPhase(lib, { phase, calls, samples: sampleCount = 100, bounds = DEFAULT_BOUNDS, dropMetas = true, gc, onSample }) {
  if (typeof gc !== 'function') throw new Error('soak needs a gc function (run node with --expose-gc)');
  const native = phase !== 'reference' && phase !== 'prefill';
  const library = native ? await lib.buildEmulator() : undefined;
  if (native) {
    process.env.FLASHMLA_EMU_ARCH = 'sm90';
    process.env.FLASHMLA_EMU_MODE = phase === 'noop' ? 'noop' : 'compute';
  }
  const cases = makeCases(lib, phase);
  const open = () => lib.FlashMLA.open(native ? { backend: 'cuda', library } : { backend: 'reference' });
  // The long-lived instance (a server's); short-lived ones come and go beside it (churn below).
  const fm = await open();
  const resident = native ? await Promise.all(cases.map((c) => uploadArgs(lib, fm, c))) : null;
  // Work queued on an instance's worker runs in order: awaiting a download of this tensor waits
  // for every free queued before it (by dispose() or a finalizer).
  const flush = native ? await fm.allocate('uint8', [16]) : null;
  const firsts = new Array(cases.length).fill(null);
  const mismatches = [];
  const checkBits = phase !== 'noop';
  let meta = cases.map(() => lib.getMlaMetadata());
  const warmup = Math.min(2000, Math.floor(calls / 20));
  const every = Math.max(1, Math.floor((calls - warmup) / sampleCount));
  const samples = [];
  const start = performance.now();

  const download = async (t) => (lib.isHostTensor(t) ? t : fm.download(t));

  // One call and its tensors, in its own async frame: a suspended async function keeps stale
  // register values alive, so locals of the loop itself would hold the last dropped tensors.
  const step = async (i) => {
    const ci = i % cases.length;
    const onDevice = native && i % 2 === 0;
    const res = await callCase(fm, cases[ci], onDevice ? resident[ci] : cases[ci].args, meta[ci]);
    const names = Object.keys(res);
    if (checkBits && i % 7 === 0) {
      const got = {};
      for (const k of names) got[k] = await download(res[k]);
      if (firsts[ci] === null) firsts[ci] = got;
      else if (names.some((k) => !sameBits(got[k], firsts[ci][k]))) mismatches.push(`call ${i} (${cases[ci].name}${onDevice ? ', device inputs' : ''})`);
    }
    // Device outputs: disposed explicitly half the time, otherwise left to GC.
    if (onDevice && i % 4 === 0) for (const k of names) res[k].dispose();
    if (native && i % 10 === 5) {
      const t = await fm.allocate('fp32', [1 + (i % 4096)]);
      if (i % 20 === 5) t.dispose();
    }
  };

  // Every 1,000 calls a short-lived instance is opened, used (device-resident and host calls, an
  // allocation) and then disposed explicitly, or dropped un-disposed for GC with its tensors and
  // sched metas. In its own async frame, so that nothing of it stays reachable from the loop.
  const churn = async (dispose) => {
    const x = await open();
    const inputs = await Promise.all(cases.map((c) => uploadArgs(lib, x, c)));
    const metas = cases.map(() => lib.getMlaMetadata());
    for (let k = 0; k < cases.length; k++) {
      await callCase(x, cases[k], inputs[k], metas[k]);
      await callCase(x, cases[k], cases[k].args, metas[k]);
    }
    await x.allocate('fp32', [1024]);
    if (dispose) {
      metas.forEach((m) => m.dispose());
      inputs.forEach((a, k) => disposeArgs(lib, cases[k], a));
      await x.dispose();
    }
  };

  for (let i = 0; i < calls; i++) {
    // A new sched meta each "decoding step" of 50 calls; the old one is disposed, or (with
    // dropMetas) dropped every other step.
    if (i % 50 === 0) {
      if (!dropMetas || (i / 50) % 2 === 0) meta.forEach((m) => m.dispose());
      meta = cases.map(() => lib.getMlaMetadata());
    }
    await step(i);
    if (i >= warmup && (i - warmup) % every === every - 1) {
      for (let k = 0; k < 3; k++) {
        gc();
        await settle();
      }
      if (native) {
        await fm.download(flush);
        // The pool keeps freed blocks for reuse: its high-water mark follows GC timing. Dropping the
        // cache leaves only memory in use, which is what must stay flat.
        await fm.emptyCache();
      }
      const s = { call: i + 1, ...process.memoryUsage(), threads: threadCount(), deviceUsed: native ? await deviceUsed(lib, library) : 0 };
      samples.push(s);
      onSample?.(s);
    }
    if (native && i % 1000 === 999) await churn((i + 1) % 2000 === 0);
  }
  const elapsedMs = performance.now() - start;
  resident?.forEach((a, k) => disposeArgs(lib, cases[k], a));
  flush?.dispose();
  meta.forEach((m) => m.dispose());
  await fm.dispose();
  const g = growth(samples);
  const violations = Object.entries(bounds).filter(([k, b]) => g[k] !== undefined && g[k] > b).map(([k, b]) => `${k} grew by ${g[k]} (bound ${b})`);
  return { phase, calls, elapsedMs, samples, growth: g, bounds, violations, mismatches };
}
