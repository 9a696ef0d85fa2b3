/**
 * Writing the package's own table format (docs/engram-tables.md#own-format) from a stream of rows,
 * and converting a checkpoint shard's Engram table into it. Rows are streamed, so tables far larger
 * than memory can be written; the file appears under its name only once complete (it is written to
 * `<path>.partial`, synced, then renamed).
 */
import { closeSync, openSync } from 'node:fs';
import { open as openAsync, rename, rm } from 'node:fs/promises';
import { FlashMLAError } from '../errors.js';
import { checkConfig, type EngramConfig } from './config.js';
import { crc32c, crcHex } from './crc32c.js';
import type { EngramLayerLayout } from './layout.js';
import { readSafetensorsHeader } from './safetensors.js';
import { checkLayout, encodeTableHeader, planSections, readTableHeader, type EngramTableFile, type TableSection } from './table-format.js';
import { readFully } from './table-io.js';
import { checkRowGeometry, configDescribes, findCheckpointTable, layoutForTable, rowBytesOf, type EngramRowFormat } from './table-placement.js';
import type { TokenMap } from './types.js';

/**
 * Where the writer gets rows: an iterable or async iterable of byte chunks (packed rows back to back;
 * chunk boundaries need not fall on rows), or a function returning the packed bytes of `rowCount`
 * rows starting at `firstRow` (called in order, `chunkRows` rows at a time).
 */
export type EngramRowSource =
  | Iterable<Uint8Array>
  | AsyncIterable<Uint8Array>
  | ((firstRow: number, rowCount: number) => Uint8Array | Promise<Uint8Array>);

/** Options of {@link writeEngramTable}. */
export interface WriteEngramTableOptions {
  /** The layer's layout; its numEmbeddings is the number of rows to write. */
  readonly layout: EngramLayerLayout;
  /** Values per row (a multiple of 32 for fp8). */
  readonly headDim: number;
  /** Row encoding: 'fp8' (headDim e4m3 bytes then headDim/32 e8m0 bytes per row) or 'fp32' (little-endian). */
  readonly format: EngramRowFormat;
  /** The rows, packed (docs/engram-tables.md#rows-section). */
  readonly rows: EngramRowSource;
  /** Token map to store (raw id → canonical id); default: none. */
  readonly tokenMap?: TokenMap;
  /** Model configuration to store (its headDim, layerIds and maxNgramSize must agree with the table); default: none. */
  readonly config?: EngramConfig;
  /** Rows per call of a function source; default: 65536. */
  readonly chunkRows?: number;
  /** Called after each chunk with the rows written so far and in all; default: none. */
  readonly onProgress?: (rowsDone: number, rowsTotal: number) => void;
}

/** Checks a token map and returns the snapshot that is written (its fields read once). */
function checkTokenMap(tokenMap: TokenMap): TokenMap {
  const { map, size } = tokenMap === null || typeof tokenMap !== 'object' ? { map: undefined, size: undefined } : tokenMap;
  if (!(map instanceof Int32Array) || map.length === 0 || !Number.isSafeInteger(size) || size! < 1 || size! > map.length) {
    throw new FlashMLAError('E_VALUE', 'must be { map: Int32Array (non-empty), size: integer in [1, map.length] }', 'options.tokenMap');
  }
  const copy = map.slice();
  const i = copy.findIndex((v) => v < 0 || v >= size!);
  if (i >= 0) throw new FlashMLAError('E_RANGE', `map[${i}] = ${copy[i]} is outside [0, ${size})`, 'options.tokenMap');
  return { map: copy, size: size! };
}

function checkTableConfig(config: EngramConfig, layout: EngramLayerLayout, headDim: number, format: EngramRowFormat): EngramConfig {
  const checked = checkConfig(config, 'options.config');
  if (!configDescribes(checked, layout, headDim, format)) {
    throw new FlashMLAError('E_VALUE', `must describe this table: layerIds including ${layout.layerId}, headDim ${headDim}, ` +
      `maxNgramSize ${layout.multipliers.length}, tableDtype ${format === 'fp32' ? 'fp32' : 'fp8-e4m3-e8m0'}`, 'options.config');
  }
  return checked;
}

/** Largest single write: FileHandle.write takes at most 2^31 − 1 bytes per call. */
const MAX_WRITE = 1 << 30;

/**
 * A file system failure while writing (no such directory, no space, no permission) as a FlashMLAError
 * naming 'path'; other errors (a FlashMLAError, or one the row source threw) pass unchanged.
 */
function fileError(e: unknown, path: string): unknown {
  const sys = e as NodeJS.ErrnoException;
  return e instanceof Error && typeof sys.syscall === 'string'
    ? new FlashMLAError('E_VALUE', `cannot write ${path}: ${e.message}`, 'path')
    : e;
}

/** Yields the chunks of any row source. */
async function* chunksOf(source: EngramRowSource, rows: number, chunkRows: number): AsyncGenerator<Uint8Array> {
  if (typeof source === 'function') {
    for (let first = 0; first < rows; first += chunkRows) yield await source(first, Math.min(chunkRows, rows - first));
  } else {
    yield* source;
  }
}

/**
 * Writes an own-format table to `path` from streamed rows and returns its checked header. The row
 * bytes must total exactly layout.numEmbeddings × rowBytes (E_BUFFER naming 'options.rows'
 * otherwise); every chunk must be a Uint8Array. Section checksums (CRC-32C) are computed while
 * writing. On any failure the partial file is removed and nothing exists at `path` that was not
 * there before.
 */
export async function writeEngramTable(path: string, options: WriteEngramTableOptions): Promise<EngramTableFile> {
  if (typeof path !== 'string' || path.length === 0) throw new FlashMLAError('E_VALUE', 'must be a non-empty file path', 'path');
  if (options === null || typeof options !== 'object') throw new FlashMLAError('E_VALUE', 'must be an options object', 'options');
  const { layout, headDim, format, rows: source, onProgress } = options;
  checkLayout(layout, 'options.layout');
  if (format !== 'fp8' && format !== 'fp32') throw new FlashMLAError('E_VALUE', `must be 'fp8' or 'fp32', got ${String(format)}`, 'options.format');
  checkRowGeometry(layout.numEmbeddings, headDim, format, 'options.headDim');
  const tokenMap = options.tokenMap === undefined ? undefined : checkTokenMap(options.tokenMap);
  const config = options.config === undefined ? undefined : checkTableConfig(options.config, layout, headDim, format);
  const chunkRows = options.chunkRows ?? 65536;
  if (!Number.isSafeInteger(chunkRows) || chunkRows < 1) throw new FlashMLAError('E_VALUE', `must be a positive integer, got ${String(chunkRows)}`, 'options.chunkRows');
  const isIterable = source !== null && typeof source === 'object' && (Symbol.iterator in source || Symbol.asyncIterator in source);
  if (typeof source !== 'function' && !isIterable) {
    throw new FlashMLAError('E_VALUE', 'must be an iterable or async iterable of Uint8Array chunks, or a function (firstRow, rowCount) => Uint8Array', 'options.rows');
  }
  if (onProgress !== undefined && typeof onProgress !== 'function') throw new FlashMLAError('E_VALUE', 'must be a function', 'options.onProgress');

  const rows = layout.numEmbeddings;
  const rowBytes = rowBytesOf(format, headDim);
  const total = rows * rowBytes;
  const plan = planSections(rows, rowBytes, tokenMap?.map.length);
  const partial = `${path}.partial`;
  const handle = await openAsync(partial, 'w').catch((e: Error) => { throw fileError(e, partial); });
  let closed = false;
  try {
    let tokenSection: (TableSection & { entries: number; size: number }) | undefined;
    if (tokenMap !== undefined) {
      const bytes = new Uint8Array(4 * tokenMap.map.length);
      const dv = new DataView(bytes.buffer);
      tokenMap.map.forEach((v, i) => dv.setInt32(4 * i, v, true));
      await handle.write(bytes, 0, bytes.length, plan.tokenMapOffset);
      tokenSection = { offset: plan.tokenMapOffset!, length: bytes.length, crc32c: crcHex(crc32c(bytes)), entries: tokenMap.map.length, size: tokenMap.size };
    }
    let written = 0;
    let crc = 0;
    for await (const chunk of chunksOf(source, rows, chunkRows)) {
      if (!(chunk instanceof Uint8Array)) throw new FlashMLAError('E_VALUE', `chunks must be Uint8Arrays, got ${typeof chunk}`, 'options.rows');
      if (written + chunk.length > total) {
        throw new FlashMLAError('E_BUFFER', `the source gave more than the ${total} bytes of ${rows} rows × ${rowBytes} bytes`, 'options.rows');
      }
      for (let at = 0; at < chunk.length;) {
        const { bytesWritten } = await handle.write(chunk, at, Math.min(chunk.length - at, MAX_WRITE), plan.rowsOffset + written + at);
        at += bytesWritten;
      }
      crc = crc32c(chunk, crc);
      written += chunk.length;
      onProgress?.(Math.floor(written / rowBytes), rows);
    }
    if (written !== total) {
      throw new FlashMLAError('E_BUFFER', `the source gave ${written} bytes; ${rows} rows × ${rowBytes} bytes need ${total}`, 'options.rows');
    }
    await handle.truncate(plan.fileBytes);
    const header = encodeTableHeader({
      format, headDim, layout, config, tokenMap: tokenSection,
      rowsSection: { offset: plan.rowsOffset, length: total, crc32c: crcHex(crc) },
    });
    await handle.write(header, 0, header.length, 0);
    await handle.sync();
    closed = true;
    await handle.close();
    await rename(partial, path);
  } catch (e) {
    if (!closed) await handle.close();
    await rm(partial, { force: true });
    throw fileError(e, partial);
  }
  return readTableHeader(path);
}

/** Options of {@link convertTable}. */
export interface ConvertTableOptions {
  /** The Engram layer (block index) to convert; default: the shard's only Engram layer. */
  readonly layerId?: number;
  /** Model configuration: gives the layout (primes, offsets, multipliers), is checked against the shard and stored; default: none. */
  readonly config?: EngramConfig;
  /** The layer's layout when no config is given; default: computed from `config`. */
  readonly layout?: EngramLayerLayout;
  /** Token map to store; default: none. */
  readonly tokenMap?: TokenMap;
  /** Rows read and written per step; default: 65536. */
  readonly chunkRows?: number;
  /** Called after each chunk with the rows written so far and in all; default: none. */
  readonly onProgress?: (rowsDone: number, rowsTotal: number) => void;
}

/**
 * Streams layer `layerId`'s Engram table from the safetensors shard `srcPath` into an own-format
 * file at `dstPath` (split weight/scale tensors become packed 264-byte records for V4.1). The own
 * format stores the layout, so `config` or `layout` is required (E_VALUE naming 'options.config');
 * the shard's rows and headDim must match it. Returns the written file's header.
 */
export async function convertTable(srcPath: string, dstPath: string, options: ConvertTableOptions = {}): Promise<EngramTableFile> {
  if (options === null || typeof options !== 'object') throw new FlashMLAError('E_VALUE', 'must be an options object', 'options');
  // Each option is read once: what is checked is what is used.
  const { layerId, config, layout: given, tokenMap, chunkRows, onProgress } = options;
  const header = readSafetensorsHeader(srcPath, 'srcPath');
  const found = findCheckpointTable(header, layerId, 'srcPath');
  const p = found.placement;
  let layout: EngramLayerLayout;
  if (given !== undefined) {
    checkLayout(given, 'options.layout');
    layout = given;
    if (layout.layerId !== found.layerId || layout.numEmbeddings !== p.rows) {
      throw new FlashMLAError('E_VALUE',
        `is layer ${layout.layerId} with ${layout.numEmbeddings} rows; the shard's table is layer ${found.layerId} with ${p.rows}`, 'options.layout');
    }
  } else if (config !== undefined) {
    layout = layoutForTable(config, found.layerId, p, 'options.config');
  } else {
    throw new FlashMLAError('E_VALUE', 'convertTable needs options.config or options.layout: the own format stores the layout', 'options.config');
  }
  const rowBytes = rowBytesOf(p.format, p.headDim);
  const scaleBytes = p.format === 'fp8' ? p.scaleStride : 0;
  const fd = openSync(srcPath, 'r');
  try {
    const rows = (first: number, count: number): Uint8Array => {
      const out = new Uint8Array(count * rowBytes);
      if (p.format === 'fp32') {
        readFully(fd, out, p.weightOffset + first * p.weightStride, srcPath);
        return out;
      }
      // Split tensors (weights, then scales) become packed records: weights then scales per row.
      const w = new Uint8Array(count * p.headDim);
      const s = new Uint8Array(count * scaleBytes);
      readFully(fd, w, p.weightOffset + first * p.weightStride, srcPath);
      readFully(fd, s, p.scaleOffset + first * p.scaleStride, srcPath);
      for (let r = 0; r < count; r++) {
        out.set(w.subarray(r * p.headDim, (r + 1) * p.headDim), r * rowBytes);
        out.set(s.subarray(r * scaleBytes, (r + 1) * scaleBytes), r * rowBytes + p.headDim);
      }
      return out;
    };
    return await writeEngramTable(dstPath, {
      layout, headDim: p.headDim, format: p.format, rows,
      config, tokenMap, chunkRows, onProgress,
    });
  } finally {
    closeSync(fd);
  }
}
