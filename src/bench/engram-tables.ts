/**
 * Synthetic Engram tables for the benchmarks (src/bench/engram-*.ts): dense packed fp8 tables with
 * V4.1's structure, of a chosen size, written once and reused. Not sparse files of V4.1's real size:
 * through the addon's mapping (MADV_HUGEPAGE) the first read of a hole faults in a 2 MiB page that the
 * kernel zeroes (measured: 2 MiB of page cache and 1.3–1.6 ms per row), far from a resident table
 * (docs/cli.md#engram-bench).
 */
import { randomFillSync } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { checkConfig, type EngramConfig } from '../engram/config.js';
import { layout, type EngramLayerLayout } from '../engram/layout.js';
import { readTableHeader, type EngramTableFile } from '../engram/table-format.js';
import { writeEngramTable } from '../engram/table-writer.js';

/** Values per V4.1 row and bytes per packed V4.1 row (256 e4m3 + 8 e8m0). */
export const V41_HEAD_DIM = 256;
/** Bytes of one packed V4.1 row. */
export const V41_ROW_BYTES = 264;

/** DeepSeek-V4.1-Flash's Engram fields (config.json `text_config`; docs/engram-hashing.md#configuration). */
export function v41Config(): EngramConfig {
  return checkConfig({
    variant: 'v4.1', layerIds: [1, 14], maxNgramSize: 4, nHeads: 8, headDim: 256, vocabSizes: [16_000_000, 16_000_000, 16_000_000],
    compressedVocabSize: 99_092, padTokenId: 2, numEmbeddings: [384_006_168, 384_016_682], seed: 0, hcMult: 4, hiddenSize: 5120,
    rmsNormEps: undefined, tableDtype: 'fp8-e4m3-e8m0', convKernel: undefined, convDilation: undefined,
  });
}

/**
 * The config of the benchmark tables: V4.1's structure and hash (layers [1, 14], N 4, K 8, V′ 99,092,
 * multipliers from seed 0) with each prime search starting at `rowsPerLayer` / 24 instead of
 * 16,000,000, so each layer's rows fill a table of the chosen size.
 */
export function benchConfig(rowsPerLayer: number): EngramConfig {
  const v = Math.max(2, Math.floor(rowsPerLayer / 24));
  return checkConfig({ ...v41Config(), vocabSizes: [v, v, v], numEmbeddings: undefined });
}

/** Same layout (primes and multipliers) in both. */
function sameLayout(a: EngramLayerLayout, b: EngramLayerLayout): boolean {
  return a.primes.length === b.primes.length && a.primes.every((p, i) => p === b.primes[i]) && a.multipliers.every((m, i) => m === b.multipliers[i]);
}

/** Random e4m3 codes with scales 2^-27 … 2^22 (no NaN scale), `count` packed rows. */
function randomRows(count: number): Uint8Array {
  const out = randomFillSync(new Uint8Array(count * V41_ROW_BYTES));
  for (let r = 0; r < count; r++) for (let g = 0; g < 8; g++) out[r * V41_ROW_BYTES + V41_HEAD_DIM + g] = 100 + (out[r * V41_ROW_BYTES + V41_HEAD_DIM + g]! % 50);
  return out;
}

/**
 * The benchmark tables of the first `layers` layers of {@link benchConfig}, about `bytesPerLayer`
 * each, in `dir` (own format, packed 264-byte fp8 rows of random data): each is reused when a valid
 * file of that layout is there, else written (progress through `onProgress`).
 */
export async function benchTables(dir: string, bytesPerLayer: number, layers: 1 | 2, onProgress: (rowsDone: number, rowsTotal: number) => void):
Promise<{ config: EngramConfig; files: EngramTableFile[]; written: string[] }> {
  const config = benchConfig(Math.floor(bytesPerLayer / V41_ROW_BYTES));
  const files: EngramTableFile[] = [];
  const written: string[] = [];
  for (const l of layout(config).slice(0, layers)) {
    const path = join(dir, `flashmla-engram-bench-layer${l.layerId}-${l.numEmbeddings}-rows.engram`);
    try {
      const f = readTableHeader(path);
      if (sameLayout(f.layout, l) && f.format === 'fp8' && f.headDim === V41_HEAD_DIM) {
        files.push(f);
        continue;
      }
    } catch {
      // absent or not a valid table: write it
    }
    files.push(await writeEngramTable(path, { layout: l, headDim: V41_HEAD_DIM, format: 'fp8', rows: (_first, count) => randomRows(count), chunkRows: 1 << 16, onProgress }));
    written.push(path);
  }
  return { config, files, written };
}

/** Reads the whole file once, so its pages are in the page cache; returns the read(2) rate in bytes/s. */
export function warmPageCache(path: string, bytes: number): number {
  const fd = openSync(path, 'r');
  const buf = new Uint8Array(64 * 1024 * 1024);
  const t0 = performance.now();
  try {
    for (let at = 0; at < bytes;) {
      const n = readSync(fd, buf, 0, Math.min(buf.length, bytes - at), at);
      if (n === 0) break;
      at += n;
    }
  } finally {
    closeSync(fd);
  }
  return bytes / ((performance.now() - t0) / 1000);
}
