#!/usr/bin/env node
// 1- against 2-thread time of the CPU anchor shapes (src/bench/anchors.ts) on the reference backend,
// measured side by side: after warmup(), calls alternate between the thread counts (so load from
// other processes falls on both alike); per shape the median and the minimum of each and the
// speed-up of both. Plain (non-shared) input arrays, public API. Prints the load average before
// and after: on a shared machine the numbers are only as good as it was quiet.
//
//   npm run build
//   node scripts/bench-threads.mjs [--threads 1,2] [--rounds 40] [--dist DIR] [--shapes PREFIX,...] [--deciles]
//
// --threads 2 alone times 2-thread calls back to back (no 1-thread calls between them); two
// processes with --threads 1 at once show what the machine's two cores give together.
// --shapes: only the anchor shapes whose names start with one of the prefixes.
// --deciles: also each thread count's p0, p10, p25, p50, p75, p90 and p99 per shape.
// --block N: per round, each thread count makes one untimed call and then N timed ones back to back
//   (default 1: one timed call each, strictly alternating). With strict alternation every 2-thread
//   call follows a 1-thread call during which the helper thread slept, and on a virtual machine an
//   idle vCPU can take a while to run again; a block measures the steady state of a server that
//   keeps one thread count, and the first call of each block (after the switch) is shown apart.
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
const prefixes = opt('shapes', '').split(',').filter((x) => x !== '');
const deciles = argv.includes('--deciles');
const block = Number(opt('block', '1'));
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
const protocol = block > 1 ? `blocks of 1 untimed + ${block} timed calls per thread count` : 'alternating calls';
console.log(`${fileURLToPath(dist)}: reference backend, ${ready.tier} tier; ${rounds} rounds of ${protocol} after ${untimed} untimed rounds; load average before: ${load()}`);
const [a, b] = counts;
const ratios = b !== undefined;
const firstCols = block > 1 ? counts.map((t) => `${t}T first`) : [];
const rows = [['shape', ...counts.flatMap((t) => [`${t}T median`, `${t}T min`]), ...(ratios ? ['speed-up (median)', 'speed-up (min)'] : []), ...firstCols]];
const spreads = [];
const quantile = (xs, p) => [...xs].sort((x, y) => x - y)[Math.floor(p * (xs.length - 1))];
for (const shape of ANCHOR_SHAPES.filter((x) => prefixes.length === 0 || prefixes.some((p) => x.name.startsWith(p)))) {
  const args = anchorArgs(shape);
  const schedMeta = api.getMlaMetadata();
  const ms = new Map(counts.map((t) => [t, []]));
  const first = new Map(counts.map((t) => [t, []]));
  for (let r = 0; r < rounds + untimed; r++) {
    for (const t of r % 2 ? [...counts].reverse() : counts) {
      for (let k = 0; k < (block > 1 ? block + 1 : 1); k++) {
        const t0 = performance.now();
        await api.flashMlaWithKvCache({ ...args, schedMeta }, { backend: 'reference', threads: t });
        if (r >= untimed) (block > 1 && k === 0 ? first : ms).get(t).push(performance.now() - t0);
      }
    }
  }
  const cells = counts.flatMap((t) => [median(ms.get(t)).toFixed(2), Math.min(...ms.get(t)).toFixed(2)]);
  rows.push([shape.name, ...cells, ...(ratios
    ? [`${(median(ms.get(a)) / median(ms.get(b))).toFixed(2)}×`, `${(Math.min(...ms.get(a)) / Math.min(...ms.get(b))).toFixed(2)}×`] : []),
  ...(block > 1 ? counts.map((t) => median(first.get(t)).toFixed(2)) : [])]);
  for (const t of counts) {
    spreads.push(`${shape.name}, ${t}T: ${[0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99].map((p) => quantile(ms.get(t), p).toFixed(2)).join(' ')} ms`);
  }
}
const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
for (const r of rows) console.log(r.map((x, c) => (c === 0 ? x.padEnd(widths[c]) : x.padStart(widths[c]))).join('  '));
if (deciles) {
  console.log('p0 p10 p25 p50 p75 p90 p99:');
  for (const line of spreads) console.log(line);
}
console.log(`load average after: ${load()}`);
