#!/usr/bin/env node
// Engram table throughput on this machine: writing an own-format table, verifying its checksums,
// and row lookups (raw, bf16, fp32; sync and async) through the addon's mapping and the JS pread
// fallback, for batches of 24 rows per token (V4.1: (N − 1)·K = 24 rows per token per layer).
// Random ids over a table that fits the page cache after the write: this measures the gather and
// dequantisation paths, not the disk. Noisy on a shared machine; medians of several repetitions.
//
//   npm run build            # compiles src/ to dist/ (tsc)
//   node scripts/bench-engram-tables.mjs [rows=1000000] [dir=os.tmpdir()]
import { randomFillSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';

const { EngramTable } = await import('../dist/engram/table.js');
const { convertTable, writeEngramTable } = await import('../dist/engram/table-writer.js');
const { verifyTable } = await import('../dist/engram/table-format.js');
const { loadAddon } = await import('../dist/addon.js');

const rows = Number(process.argv[2] ?? 1_000_000);
const dir = mkdtempSync(join(process.argv[3] ?? tmpdir(), 'engram-bench-'));
const path = join(dir, 'bench.engram');
const heads = 8;
const cols = 3 * heads;
const primes = new Int32Array(cols).fill(Math.floor(rows / cols));
primes[cols - 1] = rows - primes[0] * (cols - 1);
const offsets = new Int32Array(cols);
for (let i = 1; i < cols; i++) offsets[i] = offsets[i - 1] + primes[i - 1];
const layout = { layerId: 1, primes, offsets, numEmbeddings: rows, multipliers: BigInt64Array.from([3n, 5n, 7n, 9n]) };

let seed = 12345;
const next = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
const chunkRows = 65536;
// Random bytes: every e4m3 code and every scale (NaNs included); the gathers do not branch on values.
const rowsSource = (first, count) => randomFillSync(new Uint8Array(count * 264));

const mb = (bytes, ms) => `${((bytes / 2 ** 20) / (ms / 1000)).toFixed(0)} MiB/s`;
let t0 = performance.now();
await writeEngramTable(path, { layout, headDim: 256, format: 'fp8', rows: rowsSource, chunkRows });
const writeMs = performance.now() - t0;
console.log(`writeEngramTable ${rows} rows (${(rows * 264 / 2 ** 20).toFixed(0)} MiB, random rows generated on the way): ${writeMs.toFixed(0)} ms, ${mb(rows * 264, writeMs)}`);
t0 = performance.now();
const v = await verifyTable(path);
const verifyMs = performance.now() - t0;
console.log(`verifyTable (CRC-32C of the rows): ${verifyMs.toFixed(0)} ms, ${mb(rows * 264, verifyMs)}, ok=${v.ok}`);

// convertTable from a V4.1-style shard (split weight and scale tensors) of the same size.
const shard = join(dir, 'bench.safetensors');
{
  const header = JSON.stringify({
    'layers.1.engram.embed.weight': { dtype: 'F8_E4M3', shape: [rows, 256], data_offsets: [0, rows * 256] },
    'layers.1.engram.embed.scale': { dtype: 'F8_E8M0', shape: [rows, 8], data_offsets: [rows * 256, rows * 264] },
  });
  const bytes = new Uint8Array(8 + header.length + rows * 264);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(header.length), true);
  bytes.set(new TextEncoder().encode(header), 8);
  randomFillSync(bytes, 8 + header.length);
  writeFileSync(shard, bytes);
}
t0 = performance.now();
await convertTable(shard, join(dir, 'converted.engram'), { layout });
const convertMs = performance.now() - t0;
console.log(`convertTable safetensors → .engram: ${convertMs.toFixed(0)} ms, ${mb(rows * 264, convertMs)}`);

const loaded = loadAddon();
const modes = loaded.ok && loaded.addon.EngramMapping !== undefined ? ['mmap', 'pread'] : ['pread'];
const median = (xs) => xs.sort((a, b) => a - b)[xs.length >> 1];
for (const tokens of [1, 16, 256]) {
  const n = 24 * tokens;
  const batches = Array.from({ length: 9 }, () => Int32Array.from({ length: n }, () => (next() * rows) | 0));
  for (const io of modes) {
    const t = EngramTable.open(path, { io });
    const raw = new Uint8Array(n * 264);
    const bf = { dtype: 'bf16', shape: [n, 256], data: new Uint16Array(n * 256) };
    const f32 = { dtype: 'fp32', shape: [n, 256], data: new Float32Array(n * 256) };
    const cases = {
      lookupRaw: () => t.lookupRaw(batches[0], { out: raw }),
      'lookup bf16': () => t.lookup(batches[0], { out: bf }),
      'lookup fp32': () => t.lookup(batches[0], { out: f32 }),
      'lookupRawAsync': () => t.lookupRawAsync(batches[0], { out: raw }),
      'lookupAsync bf16': () => t.lookupAsync(batches[0], { out: bf }),
    };
    const line = [];
    for (const [name, f] of Object.entries(cases)) {
      await f(); // warm
      const times = [];
      for (const ids of batches) {
        const s = performance.now();
        await (name.includes('Async') ? (name === 'lookupRawAsync' ? t.lookupRawAsync(ids, { out: raw }) : t.lookupAsync(ids, { out: bf }))
          : name === 'lookupRaw' ? t.lookupRaw(ids, { out: raw }) : t.lookup(ids, { out: name.endsWith('bf16') ? bf : f32 }));
        times.push(performance.now() - s);
      }
      const ms = median(times);
      line.push(`${name} ${(ms * 1000 / n).toFixed(3)} µs/row`);
    }
    console.log(`${io.padEnd(5)} ${String(tokens).padStart(3)} tokens (${n} rows): ${line.join(', ')}`);
    t.close();
  }
}
rmSync(dir, { recursive: true, force: true });
