#!/usr/bin/env node
// First call against steady state, in fresh processes: for each CPU anchor shape
// (src/bench/anchors.ts), `--runs` new `node` processes each build the shape's inputs, optionally
// call `warmup()`, then time their first decode call and `--calls` more on the reference backend
// (public API, plain non-shared input arrays). Prints, per shape, the medians over the processes
// of the warm-up time, the first call, the steady median (the last half of the calls) and
// first / steady.
//
//   npm run build
//   node scripts/bench-cold-start.mjs [--threads 2] [--runs 3] [--calls 24] [--no-warmup] [--dist DIR]
//
// --dist: the compiled package to measure (default: this checkout's dist/), e.g. an older commit's
// build for a before/after (one without warmup() needs --no-warmup).
import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { performance } from 'node:perf_hooks';

const argv = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : fallback;
};
const dist = pathToFileURL(`${resolve(opt('dist', fileURLToPath(new URL('../dist', import.meta.url))))}/`);
const threads = Number(opt('threads', '2'));
const calls = Number(opt('calls', '24'));

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

if (argv.includes('--child')) {
  // One fresh process, one shape: the measurement itself.
  const shapeIndex = Number(opt('child', '0'));
  const api = await import(new URL('index.js', dist).href);
  const { ANCHOR_SHAPES, anchorArgs } = await import(new URL('bench/anchors.js', dist).href);
  const args = anchorArgs(ANCHOR_SHAPES[shapeIndex]);
  let warmupMs = null;
  if (!argv.includes('--no-warmup')) {
    const t0 = performance.now();
    await api.warmup({ threads });
    warmupMs = performance.now() - t0;
  }
  const samples = [];
  const schedMeta = api.getMlaMetadata();
  for (let i = 0; i <= calls; i++) {
    const t0 = performance.now();
    await api.flashMlaWithKvCache({ ...args, schedMeta }, { backend: 'reference', threads });
    samples.push(performance.now() - t0);
  }
  process.stdout.write(`${JSON.stringify({ warmupMs, firstMs: samples[0], steadyMs: median(samples.slice(1 + (calls >> 1))) })}\n`);
} else {
  const runs = Number(opt('runs', '3'));
  const { ANCHOR_SHAPES } = await import(new URL('bench/anchors.js', dist).href);
  const self = fileURLToPath(import.meta.url);
  const extra = ['--dist', fileURLToPath(dist), ...(argv.includes('--no-warmup') ? ['--no-warmup'] : [])];
  console.log(`load average: ${(await import('node:os')).loadavg().map((x) => x.toFixed(1)).join(' ')}`);
  console.log(`${fileURLToPath(dist)}: fresh processes per shape: ${runs}; reference backend, ${threads} thread(s), ${calls} calls after the first; ` +
    `${argv.includes('--no-warmup') ? 'no warmup() call' : 'warmup() called before the first call (its time printed apart)'}; medians over the processes`);
  const rows = [['shape', 'warmup() ms', 'first call ms', 'steady ms', 'first / steady']];
  for (let s = 0; s < ANCHOR_SHAPES.length; s++) {
    const got = [];
    for (let r = 0; r < runs; r++) {
      const p = spawnSync(process.execPath, [self, '--child', String(s), '--threads', String(threads), '--calls', String(calls), ...extra], { encoding: 'utf8' });
      if (p.status !== 0) throw new Error(`child for ${ANCHOR_SHAPES[s].name} failed (status ${p.status}):\n${p.stderr}`);
      got.push(JSON.parse(p.stdout.trim().split('\n').pop()));
    }
    const first = median(got.map((g) => g.firstMs));
    const steady = median(got.map((g) => g.steadyMs));
    const warm = got[0].warmupMs === null ? '–' : median(got.map((g) => g.warmupMs)).toFixed(1);
    rows.push([ANCHOR_SHAPES[s].name, warm, first.toFixed(2), steady.toFixed(2), `${(first / steady).toFixed(2)}×`]);
    console.error(`${ANCHOR_SHAPES[s].name}: first ${got.map((g) => g.firstMs.toFixed(1)).join(', ')} ms; steady ${got.map((g) => g.steadyMs.toFixed(2)).join(', ')} ms`);
  }
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  for (const r of rows) console.log(r.map((x, c) => (c === 0 ? x.padEnd(widths[c]) : x.padStart(widths[c]))).join('  '));
}
