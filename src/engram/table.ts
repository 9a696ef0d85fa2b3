/**
 * EngramTable: one Engram layer's embedding table, opened in place from a checkpoint shard
 * (safetensors) or from the package's own format, read row by row (docs/engram-tables.md).
 */
import { constants } from 'node:buffer';
import { closeSync, openSync } from 'node:fs';
import { loadAddon, type NativeAddon, type NativeEngramMapping } from '../addon.js';
import { FlashMLAError } from '../errors.js';
import { isContiguous, tensor, viewOf, zeros, type HostTensor } from '../tensor.js';
import type { EngramConfig } from './config.js';
import type { EngramLayerLayout } from './layout.js';
import { readSafetensorsHeader } from './safetensors.js';
import { hasTableMagic, placementOf, readTableHeader, readTableTokenMap } from './table-format.js';
import { readFully } from './table-io.js';
import {
  findCheckpointTable, layoutForTable, rowBytesOf, type EngramRowFormat, type RowReader, type TablePlacement,
} from './table-placement.js';
import { PreadRowReader } from './table-pread.js';
import type { TokenMap } from './types.js';

/** How rows are read: 'mmap' (the addon maps the file), 'pread' (JS positional reads), 'auto' (mmap when the addon offers it). */
export type EngramTableIo = 'auto' | 'mmap' | 'pread';

/** Options of {@link EngramTable.open}. */
export interface EngramTableOpenOptions {
  /**
   * The model configuration: the table's rows and headDim are checked against layer `layerId`'s
   * layout (and, for an own-format file, its stored primes and multipliers); default: no check.
   */
  readonly config?: EngramConfig;
  /** The Engram layer (block index) to open; default: the file's only Engram layer. */
  readonly layerId?: number;
  /** How rows are read; default: 'auto'. */
  readonly io?: EngramTableIo;
  /**
   * Asks the kernel for transparent huge pages on the mapping (io 'mmap'). They speed up random
   * rows of a table that is already in memory (page cache, /dev/shm), but the first touch of a row
   * then reads 2 MiB of the file: leave them off for tables read cold from disk
   * (docs/engram-native.md#mapping). Default: false.
   */
  readonly hugePages?: boolean;
}

/** Options of {@link EngramTable.lookup}. */
export interface EngramLookupOptions {
  /** Output dtype; default: options.out's dtype, else 'bf16'. */
  readonly dtype?: 'bf16' | 'fp32';
  /** Where to write the rows: a contiguous host tensor [n, headDim] of the dtype; default: a new tensor. */
  readonly out?: HostTensor<'bf16' | 'fp32'>;
}

/** Options of {@link EngramTable.lookupRaw}. */
export interface EngramLookupRawOptions {
  /** Where to write the records: at least n·rowBytes bytes (the first n·rowBytes are written); default: a new array. */
  readonly out?: Uint8Array;
}

/** Which file kind a table was opened from. */
export type EngramTableKind = 'safetensors' | 'engram';

/** The mapping the addon exports, when this build has it. */
function nativeMapping(): { ctor: NonNullable<NativeAddon['EngramMapping']> } | { reason: string } {
  const loaded = loadAddon();
  if (!loaded.ok) return { reason: loaded.reason };
  const ctor = loaded.addon.EngramMapping;
  return ctor === undefined ? { reason: `the native addon ${loaded.path} has no EngramMapping (rebuild it)` } : { ctor };
}

/**
 * One Engram layer's table. Open with {@link EngramTable.open}; read rows with {@link EngramTable.lookup}
 * (dequantised) or {@link EngramTable.lookupRaw} (packed records); release with {@link EngramTable.close}.
 */
export class EngramTable {
  /** The file the table was opened from. */
  readonly path: string;
  /** The file kind: a safetensors checkpoint shard or the package's own format. */
  readonly kind: EngramTableKind;
  /** Rows in the table (valid row ids are 0 … rows − 1). */
  readonly rows: number;
  /** Values per row (256 for V4.1). */
  readonly headDim: number;
  /** Bytes of one packed record as {@link EngramTable.lookupRaw} returns it (264 for V4.1 fp8). */
  readonly rowBytes: number;
  /** Row encoding in the file: 'fp8' (e4m3 values + e8m0 scale per 32) or 'fp32'. */
  readonly format: EngramRowFormat;
  /** How rows are read: 'mmap' (addon) or 'pread' (JavaScript). */
  readonly io: 'mmap' | 'pread';
  /** The Engram layer (block index) the table belongs to. */
  readonly layerId: number;
  /** The layer's layout: stored in an own-format file, or computed from options.config; undefined for a shard opened without config. */
  readonly layout: EngramLayerLayout | undefined;
  /** The token map an own-format file stores, if any. */
  readonly tokenMap: TokenMap | undefined;
  /** Byte offsets of the rows in the file. */
  readonly placement: TablePlacement;
  #reader: RowReader | undefined;

  private constructor(fields: {
    path: string; kind: EngramTableKind; layerId: number; layout: EngramLayerLayout | undefined;
    tokenMap: TokenMap | undefined; placement: TablePlacement; reader: RowReader; io: 'mmap' | 'pread';
  }) {
    this.path = fields.path;
    this.kind = fields.kind;
    this.layerId = fields.layerId;
    this.layout = fields.layout;
    this.tokenMap = fields.tokenMap;
    this.placement = fields.placement;
    this.rows = fields.placement.rows;
    this.headDim = fields.placement.headDim;
    this.format = fields.placement.format;
    this.rowBytes = rowBytesOf(this.format, this.headDim);
    this.io = fields.io;
    this.#reader = fields.reader;
  }

  /**
   * Opens the table at `path`: an own-format file (recognised by its magic) or a safetensors shard
   * holding `layers.{L}.engram.embed.weight`/`.scale`. Synchronous: it reads only the header (the
   * token map of an own-format file) and maps or opens the file; no row is read. Every problem is a
   * FlashMLAError naming the argument: a malformed or truncated file ('path'), a missing layer
   * ('options.layerId'), a table that does not match the config ('options.config'), io 'mmap' without
   * an addon that has EngramMapping (E_BACKEND, 'options.io').
   */
  static open(path: string, options: EngramTableOpenOptions = {}): EngramTable {
    if (typeof path !== 'string' || path.length === 0) throw new FlashMLAError('E_VALUE', 'must be a non-empty file path', 'path');
    if (options === null || typeof options !== 'object') throw new FlashMLAError('E_VALUE', 'must be an options object', 'options');
    const io = options.io ?? 'auto';
    if (io !== 'auto' && io !== 'mmap' && io !== 'pread') throw new FlashMLAError('E_VALUE', `must be 'auto', 'mmap' or 'pread', got ${String(io)}`, 'options.io');
    const { layerId, config } = options;
    if (layerId !== undefined && (!Number.isSafeInteger(layerId) || layerId < 0)) {
      throw new FlashMLAError('E_VALUE', `must be a non-negative integer, got ${String(layerId)}`, 'options.layerId');
    }

    const opened = isOwnFormat(path) ? openOwn(path, layerId, config) : openShard(path, layerId, config);
    let reader: RowReader;
    let used: 'mmap' | 'pread';
    const native = io === 'pread' ? undefined : nativeMapping();
    if (native !== undefined && 'ctor' in native) {
      reader = mappedReader(new native.ctor(path, opened.placement, { hugePages: options.hugePages === true }));
      used = 'mmap';
    } else if (io === 'mmap') {
      throw new FlashMLAError('E_BACKEND', `io 'mmap' needs the addon's EngramMapping: ${native!.reason}`, 'options.io');
    } else {
      reader = new PreadRowReader(path, opened.placement);
      used = 'pread';
    }
    return new EngramTable({ path, ...opened, reader, io: used });
  }

  /** True once {@link EngramTable.close} was called. */
  get closed(): boolean {
    return this.#reader === undefined;
  }

  #live(): RowReader {
    if (this.#reader === undefined) throw new FlashMLAError('E_DISPOSED', `the Engram table ${this.path} was closed`);
    return this.#reader;
  }

  /** Checks row ids (integers in [0, rows); E_RANGE / E_VALUE naming 'rowIds[i]') and returns them as a fresh Int32Array. */
  #ids(rowIds: Int32Array | readonly number[]): Int32Array {
    if (!(rowIds instanceof Int32Array) && !Array.isArray(rowIds)) {
      throw new FlashMLAError('E_VALUE', 'must be an Int32Array or an array of row ids', 'rowIds');
    }
    const n = rowIds.length;
    // Node keeps one typed array under buffer.constants.MAX_LENGTH bytes: the output, and the pread
    // path's packed rows, must each fit.
    const perRow = Math.max(this.rowBytes, 4 * this.headDim);
    if (n * perRow > constants.MAX_LENGTH) {
      throw new FlashMLAError('E_RANGE',
        `${n} rows exceed what one lookup can return (at most ${Math.floor(constants.MAX_LENGTH / perRow)} rows of this table)`, 'rowIds');
    }
    const ids = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      const id = rowIds[i];
      if (typeof id !== 'number' || !Number.isInteger(id)) {
        throw new FlashMLAError('E_VALUE', `rowIds[${i}] must be an integer row id, got ${String(id)}`, `rowIds[${i}]`);
      }
      if (id < 0 || id >= this.rows) {
        throw new FlashMLAError('E_RANGE', `rowIds[${i}] = ${id} is outside the table's rows [0, ${this.rows})`, `rowIds[${i}]`);
      }
      ids[i] = id;
    }
    return ids;
  }

  /** A lookup's dtype: options.dtype, else options.out's, else bf16. */
  #dtype(options: EngramLookupOptions): 'bf16' | 'fp32' {
    if (options === null || typeof options !== 'object') throw new FlashMLAError('E_VALUE', 'must be an options object', 'options');
    const dtype = options.dtype ?? options.out?.dtype ?? 'bf16';
    if (dtype !== 'bf16' && dtype !== 'fp32') throw new FlashMLAError('E_VALUE', `must be 'bf16' or 'fp32', got ${String(dtype)}`, 'options.dtype');
    return dtype;
  }

  /** The output tensor of a lookup of `n` rows and the typed array the reader fills. */
  #output(n: number, options: EngramLookupOptions): { tensor: HostTensor<'bf16' | 'fp32'>; data: Float32Array | Uint16Array } {
    const dtype = this.#dtype(options);
    const { out } = options;
    if (out === undefined) {
      const tensor = allocate(n, () => zeros(dtype, [n, this.headDim]));
      return { tensor, data: tensor.data };
    }
    const view = viewOf(out, 'options.out', 2);
    if (view.dtype !== dtype) throw new FlashMLAError('E_DTYPE', `options.out is ${view.dtype} but the lookup asks for ${dtype}`, 'options.out');
    if (view.shape[0] !== n || view.shape[1] !== this.headDim) {
      throw new FlashMLAError('E_SHAPE', `options.out must be [${n}, ${this.headDim}], got [${view.shape.join(', ')}]`, 'options.out');
    }
    if (!isContiguous(view)) throw new FlashMLAError('E_STRIDE', 'options.out must be contiguous', 'options.out');
    // `data` is read again here: check what was read, so a getter cannot swap in a shorter array.
    const whole = out.data as unknown;
    const Expected = dtype === 'fp32' ? Float32Array : Uint16Array;
    if (!(whole instanceof Expected) || whole.length < view.offset + n * this.headDim) {
      throw new FlashMLAError('E_BUFFER', `options.out.data must be a ${Expected.name} of at least ${view.offset + n * this.headDim} elements`, 'options.out');
    }
    return { tensor: out, data: whole.subarray(view.offset, view.offset + n * this.headDim) };
  }

  #rawOutput(n: number, options: EngramLookupRawOptions): Uint8Array {
    if (options === null || typeof options !== 'object') throw new FlashMLAError('E_VALUE', 'must be an options object', 'options');
    const bytes = n * this.rowBytes;
    if (options.out === undefined) return allocate(n, () => new Uint8Array(bytes));
    if (!(options.out instanceof Uint8Array)) throw new FlashMLAError('E_DTYPE', 'must be a Uint8Array', 'options.out');
    if (options.out.length < bytes) {
      throw new FlashMLAError('E_BUFFER', `options.out holds ${options.out.length} bytes; ${n} rows × ${this.rowBytes} need ${bytes}`, 'options.out');
    }
    return options.out.subarray(0, bytes);
  }

  /**
   * Rows `rowIds`, dequantised exactly (value = e4m3 · 2^(e8m0 − 127), rounded once to float32; bf16
   * by round-to-nearest-even of that), as a host tensor [n, headDim]. Ids must be integers in
   * [0, rows): others are FlashMLAErrors naming 'rowIds[i]' (never clamped). Returns options.out
   * when given.
   */
  lookup(rowIds: Int32Array | readonly number[], options: EngramLookupOptions = {}): HostTensor<'bf16' | 'fp32'> {
    const reader = this.#live();
    const ids = this.#ids(rowIds);
    const { tensor, data } = this.#output(ids.length, options);
    if (ids.length > 0) reader.gather(ids, data);
    return tensor;
  }

  /**
   * Packed records of rows `rowIds`: per row headDim e4m3 bytes then headDim/32 e8m0 bytes (fp8), or
   * 4·headDim little-endian float32 bytes (fp32); the file's bytes unchanged. Returns a view of
   * options.out's first n·rowBytes bytes when given. Ids are checked as in {@link EngramTable.lookup}.
   */
  lookupRaw(rowIds: Int32Array | readonly number[], options: EngramLookupRawOptions = {}): Uint8Array {
    const reader = this.#live();
    const ids = this.#ids(rowIds);
    const out = this.#rawOutput(ids.length, options);
    if (ids.length > 0) reader.gatherRaw(ids, out);
    return out;
  }

  /**
   * {@link EngramTable.lookup} with the reads (and, with the addon, the dequantisation) off the main
   * thread. The rows are gathered into memory of the table's own and land in options.out (when
   * given) once they are all there, so the caller's arrays are never written from another thread.
   */
  async lookupAsync(rowIds: Int32Array | readonly number[], options: EngramLookupOptions = {}): Promise<HostTensor<'bf16' | 'fp32'>> {
    const reader = this.#live();
    const ids = this.#ids(rowIds);
    const dtype = this.#dtype(options);
    if (options.out !== undefined) this.#output(ids.length, options);
    const rows = await reader.gatherAsync(ids, dtype);
    if (options.out === undefined) return tensor(dtype, [ids.length, this.headDim], rows as never);
    // Checked again: the caller may have changed options.out while the rows were read.
    const { tensor: out, data } = this.#output(ids.length, options);
    data.set(rows);
    return out;
  }

  /** {@link EngramTable.lookupRaw} with the reads off the main thread (into the table's own memory, copied to options.out when given). */
  async lookupRawAsync(rowIds: Int32Array | readonly number[], options: EngramLookupRawOptions = {}): Promise<Uint8Array> {
    const reader = this.#live();
    const ids = this.#ids(rowIds);
    if (options.out !== undefined) this.#rawOutput(ids.length, options);
    const rows = await reader.gatherRawAsync(ids);
    if (options.out === undefined) return rows;
    const out = this.#rawOutput(ids.length, options);
    out.set(rows);
    return out;
  }

  /**
   * EngramStore's gather: rows `rowIds` ('raw' records, or values dequantised to fp32 or bf16) off
   * the main thread straight into `out`, a view of a SharedArrayBuffer (it cannot be detached while
   * another thread writes it), block b of `blockRows` rows at out's byte b·blockStride. @internal
   */
  async lookupBlocksAsync(rowIds: Int32Array, kind: 'raw' | 'fp32' | 'bf16', out: Uint8Array | Float32Array | Uint16Array, blockRows: number, blockStride: number): Promise<void> {
    const reader = this.#live();
    const ids = this.#ids(rowIds);
    if (!(out.buffer instanceof SharedArrayBuffer)) throw new FlashMLAError('E_VALUE', 'must be a view of a SharedArrayBuffer', 'out');
    if (ids.length > 0) await reader.gatherBlocksAsync(ids, kind, out, blockRows, blockStride);
  }

  /** Releases the file (idempotent); in-flight async lookups finish first. Any later use is a FlashMLAError (E_DISPOSED). */
  close(): void {
    this.#reader?.close();
    this.#reader = undefined;
  }
}

/** The addon's mapping as a RowReader (its async gathers resolve to ArrayBuffers of the addon's memory). */
function mappedReader(m: NativeEngramMapping): RowReader {
  return {
    fileBytes: m.fileBytes,
    gatherRaw: (ids, out) => m.gatherRaw(ids, out),
    gather: (ids, out) => m.gather(ids, out),
    gatherRawAsync: async (ids) => new Uint8Array(await m.gatherRawAsync(ids)),
    gatherBlocksAsync: (ids, kind, out, blockRows, blockStride) => m.gatherBlocksAsync(ids, kind, out, blockRows, blockStride),
    gatherAsync: async (ids, dtype) => {
      const rows = await m.gatherAsync(ids, dtype);
      return dtype === 'fp32' ? new Float32Array(rows) : new Uint16Array(rows);
    },
    close: () => m.close(),
  };
}

/**
 * Allocates a lookup's output; an allocation JavaScript refuses (over the typed-array limit of
 * `buffer.constants.MAX_LENGTH`, or out of memory) is a FlashMLAError naming 'rowIds' (too many ids).
 */
function allocate<T>(n: number, make: () => T): T {
  try {
    return make();
  } catch (e) {
    throw new FlashMLAError('E_RANGE', `the output for ${n} rows cannot be allocated (${(e as Error).message}); look up fewer rows at a time`, 'rowIds');
  }
}

/** Whether the file at `path` starts with the own format's magic (a file shorter than 8 bytes does not). */
function isOwnFormat(path: string): boolean {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    throw new FlashMLAError('E_VALUE', `cannot open Engram table ${path}: ${(e as Error).message}`, 'path');
  }
  try {
    const head = new Uint8Array(8);
    try {
      readFully(fd, head, 0, path);
    } catch {
      return false;
    }
    return hasTableMagic(head);
  } finally {
    closeSync(fd);
  }
}

interface Opened {
  kind: EngramTableKind; layerId: number; layout: EngramLayerLayout | undefined; tokenMap: TokenMap | undefined; placement: TablePlacement;
}

function openShard(path: string, layerId: number | undefined, config: EngramConfig | undefined): Opened {
  const header = readSafetensorsHeader(path);
  const found = findCheckpointTable(header, layerId, 'path');
  const p = found.placement;
  const layout = config === undefined ? undefined : layoutForTable(config, found.layerId, p, 'options.config');
  return { kind: 'safetensors', layerId: found.layerId, layout, tokenMap: undefined, placement: p };
}

function openOwn(path: string, layerId: number | undefined, config: EngramConfig | undefined): Opened {
  const file = readTableHeader(path);
  if (layerId !== undefined && layerId !== file.layout.layerId) {
    throw new FlashMLAError('E_VALUE', `${path} holds layer ${file.layout.layerId}'s table, not layer ${layerId}'s`, 'options.layerId');
  }
  const fd = openSync(path, 'r');
  let tokenMap: TokenMap | undefined;
  try {
    tokenMap = readTableTokenMap(fd, file);
  } finally {
    closeSync(fd);
  }
  if (config !== undefined) {
    const expected = layoutForTable(config, file.layout.layerId, file, 'options.config', tokenMap?.size);
    const same = expected.primes.every((p, i) => file.layout.primes[i] === p) && expected.primes.length === file.layout.primes.length &&
      expected.multipliers.every((m, i) => file.layout.multipliers[i] === m) && expected.multipliers.length === file.layout.multipliers.length;
    if (!same) throw new FlashMLAError('E_VALUE', `${path} was written with other primes or multipliers than the config gives`, 'options.config');
  }
  return { kind: 'engram', layerId: file.layout.layerId, layout: file.layout, tokenMap, placement: placementOf(file) };
}
