#!/usr/bin/env node
// Host-side time per decode call of the native path (docs/cuda-path.md#per-call-cost): device-resident
// inputs, one sched meta shared by 61 calls (a decoding step of a 61-layer model), the CPU emulator
// (tests/emulator) loaded as the FlashMLA build with its kernels in no-op mode, so what is timed is
// the public API, our host layer, the addon and the emulated CUDA calls. Per case: the call with new
// outputs (disposed right away) and with preallocated outputs (median, p10, p90 of single calls, and
// CPU time per call over the whole run), then a breakdown measured piece by piece. The same call with
// host inputs and on the reference backend (which computes) are printed for scale.
//
//   npm run build            # compiles src/ to dist/ (tsc)
//   node scripts/bench-native-overhead.mjs [steps]     # steps of 61 calls per case (default 200)
import { performance } from 'node:perf_hooks';

process.env.FLASHMLA_EMU_MODE = 'noop';
process.env.FLASHMLA_EMU_ARCH ??= 'sm90';

const { FlashMLA } = await import('../dist/flashmla.js');
const { openCudaSession } = await import('../dist/cuda/session.js');
const { generateDenseCase, generateSparseCase } = await import('../dist/harness/cases.js');
const { getMlaMetadata } = await import('../dist/sched-meta.js');
const { readDecodeArgs, readDecodeOptions, TENSOR_ARG_KEYS } = await import('../dist/validate/args.js');
const { validateDecode } = await import('../dist/validate/index.js');
const { planLaunch, requestFields, operandsOf } = await import('../dist/cuda/host-layer.js');
const { MAILBOX } = await import('../dist/addon.js');
const { buildEmulator } = await import('../tests/emulator/build.mjs');

const LAYERS = 61;
const steps = Number(process.argv[2] ?? 200);
const library = await buildEmulator();
const fm = await FlashMLA.open({ backend: 'cuda', library });
const reference = await FlashMLA.open({ backend: 'reference' });

const stats = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const at = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))];
  return { median: at(0.5), p10: at(0.1), p90: at(0.9) };
};
const fmt = (x) => (x >= 1000 ? `${(x / 1000).toFixed(2)} ms` : `${x.toFixed(1)} µs`);
const fmtStats = (s) => `${fmt(s.median)} [${fmt(s.p10)}, ${fmt(s.p90)}]`;

/** Appends to `into` the single-call wall times (µs) of `n` steps of 61 calls, each step with a fresh sched meta. */
async function timeSteps(n, call, into = []) {
  for (let i = 0; i < 3; i++) for (let l = 0; l < LAYERS; l++) await call(getMlaMetadata()); // warm-up
  for (let s = 0; s < n; s++) {
    const meta = getMlaMetadata();
    for (let l = 0; l < LAYERS; l++) {
      const t0 = performance.now();
      await call(meta);
      into.push((performance.now() - t0) * 1000);
    }
  }
  return into;
}

/** µs per run of `fn`: the median over batches of 100 runs (robust to other processes taking the CPU). */
async function perRun(batches, fn) {
  for (let i = 0; i < 200; i++) await fn();
  const t = [];
  for (let b = 0; b < batches; b++) {
    const t0 = performance.now();
    for (let i = 0; i < 100; i++) await fn();
    t.push(((performance.now() - t0) * 1000) / 100);
  }
  return stats(t).median;
}

async function onDevice(args) {
  const out = { ...args };
  for (const k of TENSOR_ARG_KEYS) if (args[k]) out[k] = await fm.upload(args[k]);
  return out;
}

const cases = [
  generateDenseCase({ b: 4, sQ: 1, sK: 256, hQ: 16, hK: 1, varlen: false, causal: false }, 1),
  generateSparseCase({ b: 4, sQ: 1, hQ: 64, dQK: 576, main: { sK: 512, topk: 128, blockSize: 64 } }, 2),
  generateSparseCase({ b: 4, sQ: 2, hQ: 128, dQK: 512, main: { sK: 512, topk: 128, blockSize: 64 }, extra: { sK: 256, topk: 64, blockSize: 64 }, sink: true }, 3),
];

// The native launch alone: a session's prepared request issued directly (what the public call adds
// on top of it is validation-cache lookup, sched-meta binding, output tensors and Promises).
const opened = await openCudaSession({ library });
if (!opened.ok) throw new Error(opened.reason);
const session = opened.session;
const ids = new Map((await import('../dist/addon.js')).loadAddon().addon.launchers.map((l) => [l.key, l.id]));

console.log(`native host time per decode call (emulator ${process.env.FLASHMLA_EMU_ARCH}, FLASHMLA_EMU_MODE=noop), ${steps} steps × ${LAYERS} calls, one sched meta per step`);
console.log('case | new outputs: median [p10, p90] | preallocated outputs: median [p10, p90]');
// The cases take turns, ROUNDS times, so that a burst of load from elsewhere on the machine lands on
// all of them alike rather than on whichever case ran at the time.
const ROUNDS = 10;
const runs = [];
for (const c of cases) {
  const dev = await onDevice(c.args);
  const first = await fm.flashMlaWithKvCache({ ...dev, schedMeta: getMlaMetadata() });
  runs.push({ c, dev, given: { out: first.out, lse: first.lse }, fresh: [], pre: [] });
}
for (let round = 0; round < ROUNDS; round++) {
  for (const r of runs) {
    const n = Math.ceil(steps / ROUNDS);
    await timeSteps(n, async (schedMeta) => {
      const out = await fm.flashMlaWithKvCache({ ...r.dev, schedMeta });
      out.out.dispose();
      out.lse.dispose();
    }, r.fresh);
    await timeSteps(n, (schedMeta) => fm.flashMlaWithKvCache({ ...r.dev, schedMeta }, r.given), r.pre);
  }
}
for (const r of runs) console.log(`${r.c.name} | ${fmtStats(stats(r.fresh))} | ${fmtStats(stats(r.pre))}`);

const breakdowns = [];
const replays = [];
for (const { c, dev, given, pre: preTimes } of runs) {
  const pre = stats(preTimes);
  // One step of 61 calls captured as a CUDA graph (docs/cuda-path.md#graphs), replayed.
  const stepMeta = getMlaMetadata();
  const graph = await fm.captureGraph(async () => {
    for (let l = 0; l < LAYERS; l++) await fm.flashMlaWithKvCache({ ...dev, schedMeta: stepMeta }, given);
  });
  const replay = stats(await timeSteps(Math.max(1, Math.ceil(steps / 5)), () => graph.replay()));
  graph.dispose();
  replays.push({ name: c.name, replay, call: pre });

  // Breakdown, each piece on its own.
  const meta = getMlaMetadata();
  const args = { ...dev, schedMeta: meta };
  const read = await perRun(200, () => { readDecodeArgs({ ...args }); readDecodeOptions(given); });
  const plan = await perRun(20, () => {
    const p = validateDecode(readDecodeArgs({ ...args }));
    planLaunch(p, session.facts, () => null, (b) => b.tensor.base);
  });
  const p = validateDecode(readDecodeArgs(args));
  const launch = planLaunch(p, session.facts, () => null, (b) => b.tensor.base);
  const operands = Object.fromEntries(Object.entries(operandsOf(p)).map(([k, b]) => [k, b === null ? null : b.tensor.base]));
  const prepared = session.engine.prepare({ ...requestFields(p, launch, (k) => ids.get(k)), slot: 0, operands, hostOut: undefined, hostLse: undefined });
  const mb = new BigUint64Array(MAILBOX.size);
  session.engine.setMailbox(mb); // the session's own calls are not used from here on
  mb[MAILBOX.slot] = BigInt(session.engine.newSchedSlot());
  mb[MAILBOX.outAddress] = given.out.base;
  mb[MAILBOX.lseAddress] = given.lse.base;
  const native = await perRun(200, () => { session.engine.launch(prepared); });
  const promise = await perRun(200, async () => { await (async () => (async () => ({}))())(); });
  const total = await perRun(200, () => fm.flashMlaWithKvCache({ ...args }, given));
  breakdowns.push({ name: c.name, read, plan, native, promise, total });
  dev.q.dispose?.();
}
console.log(`\ngraph replay of one step (${LAYERS} calls captured with captureGraph, preallocated outputs): median [p10, p90] of single replays, and against one call`);
for (const r of replays) console.log(`${r.name} | ${fmtStats(r.replay)} | ${(r.replay.median / r.call.median).toFixed(2)}× one call (${fmt(r.call.median)})`);
console.log('\nbreakdown (µs per call, median over batches of 100 calls, preallocated outputs; each piece timed alone):');
console.log('case | read args + options | native launch (addon + emulated CUDA) | Promises (3 async frames) | rest: cache lookup, sched-meta bind, outputs | whole call | a cache miss would add: validate + plan');
for (const b of breakdowns) {
  const rest = b.total - b.read - b.native - b.promise;
  console.log(`${b.name} | ${fmt(b.read)} | ${fmt(b.native)} | ${fmt(b.promise)} | ${fmt(Math.max(rest, 0))} | ${fmt(b.total)} | ${fmt(b.plan)}`);
}

// For scale: host inputs (uploads and downloads on the worker thread), and the reference backend.
console.log('\nfor scale (median of single calls): host inputs on the native path | reference backend (computes)');
for (const c of cases) {
  const host = stats(await timeSteps(1, (schedMeta) => fm.flashMlaWithKvCache({ ...c.args, schedMeta })));
  const refMeta = getMlaMetadata();
  const ref = [];
  for (let i = 0; i < 6; i++) {
    const t0 = performance.now();
    await reference.flashMlaWithKvCache({ ...c.args, schedMeta: refMeta });
    ref.push((performance.now() - t0) * 1000);
  }
  console.log(`${c.name} | ${fmt(host.median)} | ${fmt(stats(ref.slice(1)).median)}`);
}
await session.dispose();
await fm.dispose();
