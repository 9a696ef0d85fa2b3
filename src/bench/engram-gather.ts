/**
 * Random-row gathers out of a warm, mapped Engram table (docs/cli.md#engram-bench): the addon's
 * plain C gather (`gatherBaseline`, one memcpy per row) as the baseline, and the package's
 * EngramTable `lookupRaw`, `lookup` to bf16 and to fp32 over the same ids, all measured side by side
 * in every repeat, so each method's ratio to the baseline is taken under the same machine load.
 * Ceilings: a sequential pass over the whole table and PCIe Gen5 x16.
 */
import { loadAddon } from '../addon.js';
import { placementOf, type EngramTableFile } from '../engram/table-format.js';
import { EngramTable } from '../engram/table.js';
import { FlashMLAError } from '../errors.js';
import { zeros } from '../tensor.js';
import { median } from './timing.js';
import { V41_HEAD_DIM, V41_ROW_BYTES, warmPageCache } from './engram-tables.js';

/** PCIe Gen5 x16 payload bandwidth per direction, bytes/s (63 GB/s). */
export const PCIE_GEN5_X16_BYTES_PER_S = 63e9;
/** Rows one V4.1 token reads: 2 layers × 3 orders × 8 heads. */
export const V41_ROWS_PER_TOKEN = 48;

/** One measured gather method. */
export interface GatherRow {
  /** 'baseline', 'lookupRaw', 'lookup bf16', 'lookup fp32', 'sequential', or 'PCIe Gen5 x16'. */
  readonly method: string;
  /** Median rows per second. */
  readonly rowsPerS: number;
  /** Median rows per second of process CPU time (all threads; less sensitive to other processes on the cores); null for ceilings. */
  readonly rowsPerCpuS: number | null;
  /** Median table bytes per second (rows × 264). */
  readonly bytesPerS: number;
  /** V4.1 tokens per second these rows serve (48 rows a token). */
  readonly tokensPerS: number;
  /** Median over repeats of (baseline time / this method's time) in the same repeat; null for ceilings. */
  readonly vsBaseline: number | null;
  /** What was measured. */
  readonly note: string;
}

/** Options of {@link benchGather}. */
export interface GatherBenchOptions {
  /** Random ids per repeat. */
  readonly ids: number;
  /** Timed repeats (after one untimed). */
  readonly repeats: number;
  /** Ids per call. */
  readonly batch: number;
}

/** Everything {@link benchGather} reports. */
export interface GatherBench {
  /** The table file. */
  readonly path: string;
  /** Its size in bytes. */
  readonly tableBytes: number;
  /** Its rows (random ids are drawn in [0, rows)). */
  readonly rows: number;
  /** read(2) of the whole file while warming the page cache, bytes/s. */
  readonly warmReadBytesPerS: number;
  /** Whether the kernel accepted MADV_HUGEPAGE for the baseline's mapping. */
  readonly hugePages: boolean;
  /** The addon's dequantisation kernels ('avx2-f16c' or 'portable'). */
  readonly kernels: string;
  /** One row per method, then the two ceilings. */
  readonly results: readonly GatherRow[];
}

/** Uniform random row ids in [0, rows) (xorshift32; the same ids for every method). */
function randomIds(n: number, rows: number): Int32Array {
  const ids = new Int32Array(n);
  let x = 0x9e3779b9;
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    ids[i] = (x >>> 0) % rows;
  }
  return ids;
}

/** Measures the gathers on `file` (an own-format fp8 table with 264-byte rows). */
export async function benchGather(file: EngramTableFile, o: GatherBenchOptions): Promise<GatherBench> {
  const loaded = loadAddon();
  if (!loaded.ok || loaded.addon.EngramMapping === undefined) {
    throw new FlashMLAError('E_BACKEND', `the gather benchmark needs the addon's EngramMapping: ${loaded.ok ? `${loaded.path} has none (rebuild it)` : loaded.reason}`);
  }
  const warmReadBytesPerS = warmPageCache(file.path, file.fileBytes);
  // The baseline maps the file on its own (EngramTable keeps its mapping private); both share the
  // page cache, warm, so both ask for huge pages (what a resident table should use).
  const mapping = new loaded.addon.EngramMapping(file.path, placementOf(file), { hugePages: true });
  const table = EngramTable.open(file.path, { io: 'mmap', hugePages: true });
  try {
    const batches: Int32Array[] = [];
    const ids = randomIds(o.ids, file.rows);
    for (let at = 0; at < ids.length; at += o.batch) batches.push(ids.subarray(at, Math.min(ids.length, at + o.batch)));
    const raw = new Uint8Array(o.batch * V41_ROW_BYTES);
    const raw2 = new Uint8Array(o.batch * V41_ROW_BYTES);
    const bf16 = zeros('bf16', [o.batch, V41_HEAD_DIM]);
    const f32 = zeros('fp32', [o.batch, V41_HEAD_DIM]);
    // lookup writes n rows into a tensor of exactly n rows: views of the preallocated ones per batch size.
    const view = <T extends typeof bf16 | typeof f32>(t: T, n: number): T => ({ ...t, shape: [n, V41_HEAD_DIM], data: t.data.subarray(0, n * V41_HEAD_DIM) }) as T;
    const methods: [string, string, () => void | Promise<void>][] = [
      ['baseline', 'addon gatherBaseline: one memcpy per row (its own mapping of the file)', () => { for (const b of batches) mapping.gatherBaseline(b, raw); }],
      ['lookupRaw', 'EngramTable.lookupRaw: ids checked in JS, packed 264-byte records', () => { for (const b of batches) table.lookupRaw(b, { out: raw }); }],
      ['lookup bf16', 'EngramTable.lookup to bf16 (exact fp8 dequantisation, RNE)', () => { for (const b of batches) table.lookup(b, { out: view(bf16, b.length) }); }],
      ['lookup fp32', 'EngramTable.lookup to fp32 (exact fp8 dequantisation)', () => { for (const b of batches) table.lookup(b, { out: view(f32, b.length) }); }],
      ['lookupRawAsync ×2', 'EngramTable.lookupRawAsync, each call\'s ids in two halves in flight on the thread pool', async () => {
        for (const b of batches) {
          const h = b.length >> 1;
          await Promise.all([table.lookupRawAsync(b.subarray(0, h), { out: raw }), table.lookupRawAsync(b.subarray(h), { out: raw2 })]);
        }
      }],
    ];
    const seqBatches: Int32Array[] = [];
    for (let at = 0; at < file.rows; at += o.batch) seqBatches.push(Int32Array.from({ length: Math.min(o.batch, file.rows - at) }, (_, i) => at + i));
    const times = methods.map(() => [] as number[]);
    const cpu = methods.map(() => [] as number[]);
    const ratios = methods.map(() => [] as number[]);
    const sequential: number[] = [];
    for (const [, , fn] of methods) await fn(); // untimed: page tables of both mappings, code paths
    for (let r = 0; r < o.repeats; r++) {
      // Each repeat starts with another method, so none is always first after the sequential pass.
      const t = new Array<number>(methods.length);
      for (let k = 0; k < methods.length; k++) {
        const i = (k + r) % methods.length;
        const c0 = process.cpuUsage();
        const t0 = performance.now();
        await methods[i]![2]();
        t[i] = (performance.now() - t0) / 1000;
        const c = process.cpuUsage(c0);
        cpu[i]!.push((c.user + c.system) / 1e6);
      }
      t.forEach((s, i) => { times[i]!.push(s); ratios[i]!.push(t[0]! / s); });
      const t0 = performance.now();
      for (const b of seqBatches) mapping.gatherRaw(b, raw);
      sequential.push((performance.now() - t0) / 1000);
    }
    const row = (method: string, note: string, rowsPerS: number, rowsPerCpuS: number | null, vsBaseline: number | null): GatherRow =>
      ({ method, note, rowsPerS, rowsPerCpuS, bytesPerS: rowsPerS * V41_ROW_BYTES, tokensPerS: rowsPerS / V41_ROWS_PER_TOKEN, vsBaseline });
    const results = methods.map(([name, note], i) => row(name, note, o.ids / median(times[i]!), o.ids / Math.max(median(cpu[i]!), 1e-6), median(ratios[i]!)));
    results.push(row('sequential', 'gatherRaw of ids 0, 1, 2, … over the whole warm mapping (ceiling of this machine)', file.rows / median(sequential), null, null));
    results.push(row('PCIe Gen5 x16', '63 GB/s per direction (ceiling of the host → GPU copy)', PCIE_GEN5_X16_BYTES_PER_S / V41_ROW_BYTES, null, null));
    return {
      path: file.path, tableBytes: file.fileBytes, rows: file.rows, warmReadBytesPerS, hugePages: mapping.hugePages,
      kernels: loaded.addon.EngramMapping.kernels, results,
    };
  } finally {
    mapping.close();
    table.close();
  }
}
