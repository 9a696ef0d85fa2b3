#!/usr/bin/env node
// Wall time of the CPU Engram math at V4.1 size (docs/engram-math.md#performance): the gate for
// T = 64 tokens, M = 4 branches, d = 5120 (median of several calls), and one forwardV41 token
// (wkv 25600 × 6144 FP8). Numbers only; nothing is asserted. On a shared machine they are noisy.
//
//   npm run build            # compiles src/ to dist/ (tsc)
//   node scripts/bench-engram-math.mjs [gateCalls]
import { performance } from 'node:perf_hooks';

const { gate } = await import('../dist/engram/gate.js');
const { forwardV41 } = await import('../dist/engram/forward-v41.js');
const { Rng } = await import('../dist/harness/random.js');
const { f32ToBf16 } = await import('../dist/formats/bf16.js');

const calls = Number(process.argv[2] ?? 7);
const rng = new Rng(1);
const bf16 = (shape) => {
  const data = new Uint16Array(shape.reduce((a, b) => a * b, 1));
  for (let i = 0; i < data.length; i++) data[i] = f32ToBf16(rng.randn());
  return { dtype: 'bf16', shape, data };
};
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const [T, M, d] = [64, 4, 5120];
const args = { h: bf16([T, M, d]), key: bf16([T, M, d]), value: bf16([T, d]), qWeight: bf16([M, d]), kWeight: bf16([M, d]) };
gate(args); // warm-up
const times = [];
for (let i = 0; i < calls; i++) {
  const t0 = performance.now();
  gate(args);
  times.push(performance.now() - t0);
}
const ms = median(times);
console.log(`gate T=${T} M=${M} d=${d}: median ${ms.toFixed(1)} ms over ${calls} calls ` +
  `(${((T * M * d) / ms / 1e3).toFixed(1)} M elements/s; min ${Math.min(...times).toFixed(1)}, max ${Math.max(...times).toFixed(1)} ms)`);

const K = 6144;
const N = d * (M + 1);
const wkv = new Uint8Array(N * K);
let s = 1;
for (let i = 0; i < wkv.length; i++) {
  s ^= s << 13; s ^= s >>> 17; s ^= s << 5;
  const c = s & 0xff;
  wkv[i] = (c & 0x7f) === 0x7f ? c ^ 1 : c;
}
const v41 = {
  e: bf16([1, K]), h: bf16([1, M, d]), qWeight: args.qWeight, kWeight: args.kWeight,
  wkv: { dtype: 'uint8', shape: [N, K], data: wkv },
  wkvScale: { dtype: 'uint8', shape: [N / 32, K / 32], data: new Uint8Array((N / 32) * (K / 32)).fill(117) },
};
const t0 = performance.now();
forwardV41(v41);
const fwd = performance.now() - t0;
console.log(`forwardV41 T=1 (wkv ${N} x ${K}): ${fwd.toFixed(0)} ms (${((N * K) / fwd / 1e3).toFixed(1)} M multiply-adds/s)`);
