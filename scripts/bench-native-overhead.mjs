#!/usr/bin/env node
// Host-side time per decode call of the native path: device-resident inputs, the CPU emulator
// (tests/emulator) loaded as the FlashMLA build with its kernels in no-op mode, so what is timed is
// our host layer, the addon, the worker thread round trip and the emulated CUDA calls. Compared
// with the same call on the reference backend (which computes). Median over many calls.
//
//   npm run build            # compiles src/ to dist/ (tsc)
//   node scripts/bench-native-overhead.mjs [calls]
import { performance } from 'node:perf_hooks';

process.env.FLASHMLA_EMU_MODE = 'noop';
process.env.FLASHMLA_EMU_ARCH ??= 'sm90';

const { FlashMLA } = await import('../dist/flashmla.js');
const { generateDenseCase, generateSparseCase } = await import('../dist/harness/cases.js');
const { getMlaMetadata } = await import('../dist/sched-meta.js');
const { buildEmulator } = await import('../tests/emulator/build.mjs');

const calls = Number(process.argv[2] ?? 300);
const library = await buildEmulator();
const cuda = await FlashMLA.open({ backend: 'cuda', library });
const reference = await FlashMLA.open({ backend: 'reference' });

const stats = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const at = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))];
  return { median: at(0.5), p10: at(0.1), p90: at(0.9) };
};
const fmt = (x) => (x >= 1000 ? `${(x / 1000).toFixed(2)} ms` : `${x.toFixed(1)} µs`);

async function time(n, fn) {
  for (let i = 0; i < Math.min(10, n); i++) await fn(); // warm-up
  const t = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await fn();
    t.push((performance.now() - t0) * 1000);
  }
  return stats(t);
}

async function onDevice(args) {
  const out = { ...args };
  for (const k of ['q', 'kCache', 'blockTable', 'cacheSeqlens', 'indices', 'attnSink', 'extraKCache', 'extraIndicesInKvcache', 'topkLength', 'extraTopkLength']) {
    if (args[k]) out[k] = await cuda.upload(args[k]);
  }
  return out;
}

const cases = [
  generateDenseCase({ b: 4, sQ: 1, sK: 256, hQ: 16, hK: 1, varlen: false, causal: false }, 1),
  generateSparseCase({ b: 4, sQ: 1, hQ: 64, dQK: 576, main: { sK: 512, topk: 128, blockSize: 64 } }, 2),
  generateSparseCase({ b: 4, sQ: 2, hQ: 128, dQK: 512, main: { sK: 512, topk: 128, blockSize: 64 }, extra: { sK: 256, topk: 64, blockSize: 64 }, sink: true }, 3),
];

console.log(`native host overhead (emulator ${process.env.FLASHMLA_EMU_ARCH}, FLASHMLA_EMU_MODE=noop), ${calls} calls each; reference: ${Math.max(5, calls / 20) | 0} calls`);
console.log('case | native, device inputs (median [p10, p90]) | native, host inputs | reference | reference / native');
for (const c of cases) {
  const meta = getMlaMetadata(); // one per step, shared by all calls
  const dev = { ...(await onDevice(c.args)), schedMeta: meta };
  const native = await time(calls, async () => {
    const r = await cuda.flashMlaWithKvCache(dev);
    r.out.dispose();
    r.lse.dispose();
  });
  const hostMeta = getMlaMetadata();
  const host = await time(Math.max(20, calls / 5) | 0, () => cuda.flashMlaWithKvCache({ ...c.args, schedMeta: hostMeta }));
  const refMeta = getMlaMetadata();
  const ref = await time(Math.max(5, calls / 20) | 0, () => reference.flashMlaWithKvCache({ ...c.args, schedMeta: refMeta }));
  console.log(`${c.name} | ${fmt(native.median)} [${fmt(native.p10)}, ${fmt(native.p90)}] | ${fmt(host.median)} | ${fmt(ref.median)} | ${(ref.median / native.median).toFixed(0)}×`);
}
await cuda.dispose();
