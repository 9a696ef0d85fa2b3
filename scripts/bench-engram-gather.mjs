#!/usr/bin/env node
// Random-row gathers out of a mapped Engram table (binding/engram_mapping.cc, docs/engram-native.md#numbers):
// gatherBaseline (one plain memcpy per row), gatherRaw, gather to float32 and to bf16, and gatherRawAsync with
// two gathers in flight, all over the same random ids and measured side by side in every repeat; plus a
// sequential pass over the whole mapping (ids 0, 1, 2, …) as the ceiling. The table is a synthetic packed
// V4.1-shaped file (264-byte rows) under os.tmpdir(), written once and reused; its pages are read once first
// so the gathers see a warm page cache. Numbers on a shared machine are noisy: compare the ratios.
//
//   npm run build            # compiles src/ to dist/ (tsc); the addon comes from build/Release
//   node scripts/bench-engram-gather.mjs [--gib 4] [--ids 2000000] [--repeats 5] [--batch 65536] [--file path] [--remove]
import { closeSync, existsSync, openSync, readFileSync, readSync, rmSync, statSync, writeSync } from 'node:fs';
import { randomFillSync } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';

const { values: opt } = parseArgs({
  options: {
    gib: { type: 'string', default: '4' },
    ids: { type: 'string', default: '2000000' },
    repeats: { type: 'string', default: '5' },
    batch: { type: 'string', default: '65536' },
    file: { type: 'string' },
    remove: { type: 'boolean', default: false },
  },
});
const GiB = 2 ** 30, HEAD_DIM = 256, RECORD = 264;
const tableBytes = Math.floor((Number(opt.gib) * GiB) / RECORD) * RECORD;
const rows = tableBytes / RECORD;
const nIds = Number(opt.ids), repeats = Number(opt.repeats), batch = Number(opt.batch);
if (!(rows >= 1 && rows < 2 ** 31 && nIds >= 1 && repeats >= 1 && batch >= 1)) throw new Error('bad --gib/--ids/--repeats/--batch');
const path = opt.file ?? join(tmpdir(), `flashmla-engram-bench-${tableBytes}.bin`);

const { loadAddon } = await import('../dist/addon.js');
const loaded = loadAddon();
if (!loaded.ok) throw new Error(loaded.reason);
if (!loaded.addon.EngramMapping) throw new Error(`the addon at ${loaded.path} has no EngramMapping: rebuild it (npx cmake-js compile)`);

// A chunk of whole rows: random weights, scales in 2^-27 … 2^22 (no NaN: the timing is the same, the
// values are a table's).
function chunk(rowsInChunk) {
  const bytes = randomFillSync(new Uint8Array(rowsInChunk * RECORD));
  for (let r = 0; r < rowsInChunk; r++) for (let g = 0; g < 8; g++) bytes[r * RECORD + HEAD_DIM + g] = 100 + (bytes[r * RECORD + HEAD_DIM + g] % 50);
  return bytes;
}

if (!existsSync(path) || statSync(path).size !== tableBytes) {
  const t0 = performance.now();
  const fd = openSync(path, 'w');
  const rowsPerChunk = Math.floor((64 * 2 ** 20) / RECORD);
  const blocks = [chunk(rowsPerChunk), chunk(rowsPerChunk), chunk(rowsPerChunk)];
  for (let at = 0, k = 0; at < tableBytes; k++) {
    const b = blocks[k % blocks.length];
    const n = Math.min(b.length, tableBytes - at);
    writeSync(fd, b, 0, n, at);
    at += n;
  }
  closeSync(fd);
  console.log(`wrote ${path} (${(tableBytes / GiB).toFixed(2)} GiB) in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}

// Warm the page cache: read the whole file once (also the read(2) bandwidth).
{
  const fd = openSync(path, 'r');
  const buf = Buffer.allocUnsafe(64 * 2 ** 20);
  const t0 = performance.now();
  for (let at = 0; at < tableBytes;) at += readSync(fd, buf, 0, Math.min(buf.length, tableBytes - at), at);
  closeSync(fd);
  const s = (performance.now() - t0) / 1000;
  console.log(`page cache warm-up: read(2) of the whole file ${(tableBytes / s / 1e9).toFixed(2)} GB/s`);
}

const m = new loaded.addon.EngramMapping(path, {
  rows, headDim: HEAD_DIM, format: 'fp8', weightOffset: 0, weightStride: RECORD, scaleOffset: HEAD_DIM, scaleStride: RECORD,
});
const thp = (() => {
  try {
    return readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8').trim();
  } catch {
    return 'unknown';
  }
})();
console.log(`table: ${rows} rows × ${RECORD} B = ${(tableBytes / GiB).toFixed(2)} GiB, MADV_HUGEPAGE accepted: ${m.hugePages} (THP: ${thp})`);

// Uniform random row ids (an xorshift; the same ids for every method).
const ids = new Int32Array(nIds);
let x = 0x9e3779b9;
for (let i = 0; i < nIds; i++) {
  x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
  ids[i] = (x >>> 0) % rows;
}
const batches = [];
for (let at = 0; at < nIds; at += batch) batches.push(ids.subarray(at, Math.min(nIds, at + batch)));
const raw = new Uint8Array(batch * RECORD), raw2 = new Uint8Array(batch * RECORD);
const f32 = new Float32Array(batch * HEAD_DIM), bf16 = new Uint16Array(batch * HEAD_DIM);

// Sequential ids covering the whole table once, in batches of the same size.
const seqBatches = [];
for (let at = 0; at < rows; at += batch) seqBatches.push(Int32Array.from({ length: Math.min(batch, rows - at) }, (_, i) => at + i));

const methods = {
  baseline: () => { for (const b of batches) m.gatherBaseline(b, raw); },
  gatherRaw: () => { for (const b of batches) m.gatherRaw(b, raw); },
  'gather fp32': () => { for (const b of batches) m.gather(b, f32); },
  'gather bf16': () => { for (const b of batches) m.gather(b, bf16); },
  'gatherRawAsync ×2': async () => {
    for (const b of batches) {
      const h = b.length >> 1;
      await Promise.all([m.gatherRawAsync(b.subarray(0, h), raw), m.gatherRawAsync(b.subarray(h), raw2)]);
    }
  },
};
const times = Object.fromEntries(Object.keys(methods).map((k) => [k, []]));
const ratios = Object.fromEntries(Object.keys(methods).map((k) => [k, []]));
const sequential = [];
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

for (const fn of Object.values(methods)) await fn(); // warm-up: page tables of the touched pages, code paths
for (let r = 0; r < repeats; r++) {
  const t = {};
  for (const [name, fn] of Object.entries(methods)) {
    const t0 = performance.now();
    await fn();
    t[name] = (performance.now() - t0) / 1000;
    times[name].push(t[name]);
  }
  for (const name of Object.keys(methods)) ratios[name].push(t.baseline / t[name]);
  const t0 = performance.now();
  for (const b of seqBatches) m.gatherRaw(b, raw);
  sequential.push((performance.now() - t0) / 1000);
}
m.close();

console.log(`${nIds} random ids in batches of ${batch}, ${repeats} repeats (medians; a shared, noisy 2-core machine: other work changes absolute numbers)`);
console.log('method               | M rows/s | table GB/s | vs baseline (median of per-repeat ratios)');
for (const name of Object.keys(methods)) {
  const s = median(times[name]);
  console.log(`${name.padEnd(20)} | ${(nIds / s / 1e6).toFixed(2).padStart(8)} | ${((nIds * RECORD) / s / 1e9).toFixed(2).padStart(10)} | ${median(ratios[name]).toFixed(2)}x`);
}
const seq = median(sequential);
console.log(`${'sequential (ceiling)'.padEnd(20)} | ${(rows / seq / 1e6).toFixed(2).padStart(8)} | ${(tableBytes / seq / 1e9).toFixed(2).padStart(10)} | gatherRaw of ids 0…rows−1 over the whole mapping`);
if (opt.remove) rmSync(path, { force: true });
