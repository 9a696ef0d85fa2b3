// Child process of the sparse-table test: opens a table, reads a few rows, and prints them with the
// growth of its resident memory (run with tests/helpers/ts-worker.ts's loader hooks).
import { EngramTable } from '../../../src/engram/table.js';

const [path, io, list] = process.argv.slice(2) as [string, 'mmap' | 'pread', string];
const ids = list.split(',').map(Number);
const before = process.memoryUsage().rss;
const t = EngramTable.open(path, { io });
const raw = ids.map((id) => [...t.lookupRaw([id])]);
// Rows between the written ones are holes: they read as zeros.
const zero = [...t.lookupRaw([1, 50_000_000, t.rows - 2]), ...new Uint8Array(t.lookup([7, 123_456_789], { dtype: 'fp32' }).data.buffer)];
t.close();
const growthMiB = (process.memoryUsage().rss - before) / 2 ** 20;
process.stdout.write(JSON.stringify({ raw, zero, growthMiB, rows: t.rows }));
