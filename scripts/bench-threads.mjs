#!/usr/bin/env node
// 1- against 2-thread time of the CPU anchor shapes (src/bench/anchors.ts) on the reference backend,
// measured side by side: after warmup(), calls alternate between the thread counts (so load from
// other processes falls on both alike); per shape the median and the minimum of each and the
// speed-up of both. Plain (non-shared) input arrays, public API. Prints the load average before
// and after: on a shared machine the numbers are only as good as it was quiet.
//
//   npm run build
//   node scripts/bench-threads.mjs [--threads 1,2] [--rounds 40] [--dist DIR]
//
// --dist: the compiled package to measure (default: this checkout's dist/), e.g. the dist/ of an
// older commit's build for a before/after; one without warmup() gets 12 untimed calls per shape
// instead (what its own bench did).
import { loadavg } from 'node:os';
import { resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';

const argv = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : fallback;
};
const counts = opt('threads', '1,2').split(',').map(Number);
const rounds = Number(opt('rounds', '40'));
const dist = pathToFileURL(`${resolve(opt('dist', fileURLToPath(new URL('../dist', import.meta.url))))}/`);
const api = await import(new URL('index.js', dist).href);
const { ANCHOR_SHAPES, anchorArgs } = await import(new URL('bench/anchors.js', dist).href);
const untimed = api.warmup ? 3 : 12;

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const load = () => loadavg().map((x) => x.toFixed(1)).join(' ');

const ready = api.warmup ? await api.warmup({ threads: Math.max(...counts) }) : { tier: 'default (no warmup() in this build)' };
console.log(`${fileURLToPath(dist)}: reference backend, ${ready.tier} tier; ${rounds} rounds of alternating calls after ${untimed} untimed each; load average before: ${load()}`);
const [a, b] = counts;
const rows = [['shape', ...counts.flatMap((t) => [`${t}T median`, `${t}T min`]), 'speed-up (median)', 'speed-up (min)']];
for (const shape of ANCHOR_SHAPES) {
  const args = anchorArgs(shape);
  const schedMeta = api.getMlaMetadata();
  const ms = new Map(counts.map((t) => [t, []]));
  for (let r = 0; r < rounds + untimed; r++) {
    for (const t of r % 2 ? [...counts].reverse() : counts) {
      const t0 = performance.now();
      await api.flashMlaWithKvCache({ ...args, schedMeta }, { backend: 'reference', threads: t });
      if (r >= untimed) ms.get(t).push(performance.now() - t0);
    }
  }
  const cells = counts.flatMap((t) => [median(ms.get(t)).toFixed(2), Math.min(...ms.get(t)).toFixed(2)]);
  rows.push([shape.name, ...cells, `${(median(ms.get(a)) / median(ms.get(b))).toFixed(2)}×`, `${(Math.min(...ms.get(a)) / Math.min(...ms.get(b))).toFixed(2)}×`]);
}
const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
for (const r of rows) console.log(r.map((x, c) => (c === 0 ? x.padEnd(widths[c]) : x.padStart(widths[c]))).join('  '));
console.log(`load average after: ${load()}`);
