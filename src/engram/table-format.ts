/**
 * The package's own Engram table file (".engram"), byte by byte in docs/engram-tables.md#own-format:
 * a 64-byte preamble (magic, version, header length, header CRC-32C), a JSON header, then 2 MiB
 * aligned sections (an optional token map, the packed rows). The header is verified at open; the
 * section checksums only by {@link verifyTable} (a 100 GB row section cannot be read at every open).
 */
import { closeSync, fstatSync, openSync } from 'node:fs';
import { open as openAsync } from 'node:fs/promises';
import { FlashMLAError } from '../errors.js';
import { INT32_MAX } from '../tensor.js';
import { checkConfig, type EngramConfig } from './config.js';
import { crc32c, crcHex } from './crc32c.js';
import type { EngramLayerLayout } from './layout.js';
import { readFully } from './table-io.js';
import { checkRowGeometry, configDescribes, rowBytesOf, type EngramRowFormat, type TablePlacement } from './table-placement.js';
import type { TokenMap } from './types.js';

/** The first 8 bytes of every own-format table file: "ENGRAMTB". */
export const TABLE_MAGIC = new Uint8Array([0x45, 0x4e, 0x47, 0x52, 0x41, 0x4d, 0x54, 0x42]);
/** The format version this package writes and reads. */
export const TABLE_VERSION = 1;
/** Bytes of the binary preamble before the JSON header. */
export const PREAMBLE_BYTES = 64;
/** Every section starts at a multiple of this (2 MiB: one x86-64 huge page). */
export const TABLE_ALIGNMENT = 2 * 1024 * 1024;
/** The header (preamble + JSON) must fit before the first section. */
export const MAX_HEADER_JSON_BYTES = TABLE_ALIGNMENT - PREAMBLE_BYTES;

/** One section of an own-format file. */
export interface TableSection {
  /** File offset (a multiple of {@link TABLE_ALIGNMENT}). */
  readonly offset: number;
  /** Bytes. */
  readonly length: number;
  /** CRC-32C of the section's bytes as 8 hex digits, or null when the writer did not record one. */
  readonly crc32c: string | null;
}

/** Everything the header of an own-format file states, checked. */
export interface EngramTableFile {
  /** The path the header was read from. */
  readonly path: string;
  /** Format version (1). */
  readonly version: number;
  /** File size stated by the header (equals the size on disk). */
  readonly fileBytes: number;
  /** Bytes of the preamble and JSON header (the rest of the first 2 MiB is zero). */
  readonly headerBytes: number;
  /** Row encoding. */
  readonly format: EngramRowFormat;
  /** Values per row. */
  readonly headDim: number;
  /** Rows (= layout.numEmbeddings). */
  readonly rows: number;
  /** Bytes per packed row (264 for fp8 with headDim 256). */
  readonly rowBytes: number;
  /** Section alignment in bytes (2 MiB). */
  readonly alignment: number;
  /** The layer's hash layout (primes, offsets, multipliers). */
  readonly layout: EngramLayerLayout;
  /** The model configuration the table was written for, when the writer had one (checked like any EngramConfig, and against the table). */
  readonly config: EngramConfig | undefined;
  /** The token map section (raw id → canonical id, int32 LE), when present; `size` is V′. */
  readonly tokenMap: (TableSection & { readonly entries: number; readonly size: number }) | undefined;
  /** The packed rows. */
  readonly rowsSection: TableSection;
  /** CRC-32C of the JSON header bytes (verified when the header was read). */
  readonly headerCrc32c: string;
}

/** Rounds `n` up to the next multiple of the section alignment. */
export function alignUp(n: number): number {
  return Math.ceil(n / TABLE_ALIGNMENT) * TABLE_ALIGNMENT;
}

/** Whether `bytes` (the first 8 or more bytes of a file) start with {@link TABLE_MAGIC}. */
export function hasTableMagic(bytes: Uint8Array): boolean {
  return bytes.length >= 8 && TABLE_MAGIC.every((b, i) => bytes[i] === b);
}

/**
 * Checks that `layout` is self-consistent: primes positive int32, offsets their exclusive prefix sums,
 * numEmbeddings their sum (≤ 2^31 − 1), at least 2 odd multipliers, primes.length a multiple of
 * (multipliers.length − 1). Failures are FlashMLAErrors (E_VALUE) naming `argument`.
 */
export function checkLayout(layout: EngramLayerLayout, argument: string): void {
  const bad = (why: string): never => { throw new FlashMLAError('E_VALUE', `${argument}: ${why}`, argument); };
  if (layout === null || typeof layout !== 'object') bad('must be an EngramLayerLayout');
  const { layerId, primes, offsets, numEmbeddings, multipliers } = layout;
  if (!Number.isSafeInteger(layerId) || layerId < 0) bad(`layerId must be a non-negative integer, got ${String(layerId)}`);
  if (!(primes instanceof Int32Array) || !(offsets instanceof Int32Array) || !(multipliers instanceof BigInt64Array)) {
    bad('primes and offsets must be Int32Arrays and multipliers a BigInt64Array');
  }
  const n = multipliers.length;
  if (n < 2) bad(`needs at least 2 multipliers (orders 2..N), got ${n}`);
  if (primes.length === 0 || primes.length % (n - 1) !== 0 || offsets.length !== primes.length) {
    bad(`primes (${primes.length}) and offsets (${offsets.length}) must have the same non-zero length, a multiple of N − 1 = ${n - 1}`);
  }
  let sum = 0;
  for (let i = 0; i < primes.length; i++) {
    if (offsets[i] !== sum) bad(`offsets[${i}] must be ${sum} (exclusive prefix sum of primes), got ${offsets[i]}`);
    if (primes[i]! < 1) bad(`primes[${i}] must be positive, got ${primes[i]}`);
    sum += primes[i]!;
  }
  if (sum !== numEmbeddings) bad(`numEmbeddings must be the sum of primes ${sum}, got ${String(numEmbeddings)}`);
  if (sum > INT32_MAX) bad(`the primes sum to ${sum} rows, more than int32 row ids address`);
  for (let i = 0; i < n; i++) {
    if ((multipliers[i]! & 1n) !== 1n || multipliers[i]! < 0n) bad(`multipliers[${i}] must be a positive odd int64, got ${multipliers[i]}`);
  }
}

/** The JSON header as written (docs/engram-tables.md#header-json). */
interface HeaderJson {
  format: EngramRowFormat;
  headDim: number;
  rows: number;
  rowBytes: number;
  alignment: number;
  fileBytes: number;
  layout: { layerId: number; primes: number[]; offsets: number[]; numEmbeddings: number; multipliers: string[] };
  config: EngramConfig | null;
  sections: {
    tokenMap: (TableSection & { entries: number; size: number }) | null;
    rows: TableSection;
  };
}

/** What the writer knows when it writes the header. */
export interface TableHeaderFields {
  /** Row encoding. */
  readonly format: EngramRowFormat;
  /** Values per row. */
  readonly headDim: number;
  /** The layer's layout (its numEmbeddings is the row count). */
  readonly layout: EngramLayerLayout;
  /** The configuration, when known. */
  readonly config: EngramConfig | undefined;
  /** The token map section, when present. */
  readonly tokenMap: (TableSection & { readonly entries: number; readonly size: number }) | undefined;
  /** The row section. */
  readonly rowsSection: TableSection;
}

/** Section offsets for a table: the token map (when it has `tokenMapEntries`) then the rows, each 2 MiB aligned. */
export function planSections(rows: number, rowBytes: number, tokenMapEntries: number | undefined):
{ tokenMapOffset: number | undefined; rowsOffset: number; fileBytes: number } {
  const tokenMapOffset = tokenMapEntries === undefined ? undefined : TABLE_ALIGNMENT;
  const rowsOffset = tokenMapOffset === undefined ? TABLE_ALIGNMENT : alignUp(tokenMapOffset + 4 * tokenMapEntries!);
  return { tokenMapOffset, rowsOffset, fileBytes: rowsOffset + rows * rowBytes };
}

/**
 * The bytes of the header region's used part (preamble + JSON; the rest of the first 2 MiB is zero).
 * The writer calls this last, once the section checksums are known.
 */
export function encodeTableHeader(fields: TableHeaderFields): Uint8Array {
  checkLayout(fields.layout, 'layout');
  const rows = fields.layout.numEmbeddings;
  checkRowGeometry(rows, fields.headDim, fields.format, 'headDim');
  const l = fields.layout;
  const json: HeaderJson = {
    format: fields.format,
    headDim: fields.headDim,
    rows,
    rowBytes: rowBytesOf(fields.format, fields.headDim),
    alignment: TABLE_ALIGNMENT,
    fileBytes: fields.rowsSection.offset + fields.rowsSection.length,
    layout: {
      layerId: l.layerId, primes: [...l.primes], offsets: [...l.offsets], numEmbeddings: l.numEmbeddings,
      multipliers: [...l.multipliers].map((m) => m.toString()),
    },
    config: fields.config ?? null,
    sections: { tokenMap: fields.tokenMap ?? null, rows: fields.rowsSection },
  };
  const text = new TextEncoder().encode(JSON.stringify(json));
  if (text.length > MAX_HEADER_JSON_BYTES) {
    throw new FlashMLAError('E_VALUE', `the table header needs ${text.length} bytes, more than the ${MAX_HEADER_JSON_BYTES} it may have`, 'layout');
  }
  const out = new Uint8Array(PREAMBLE_BYTES + text.length);
  const dv = new DataView(out.buffer);
  out.set(TABLE_MAGIC, 0);
  dv.setUint32(8, TABLE_VERSION, true);
  dv.setUint32(12, text.length, true);
  dv.setUint32(16, crc32c(text), true);
  out.set(text, PREAMBLE_BYTES);
  return out;
}

/**
 * Reads and checks the header of the own-format file at `path` (at most its first 2 MiB): magic,
 * version, reserved bytes, header CRC-32C, every field's type and range, the layout's consistency,
 * section alignment and bounds, and the file size (a shorter file is E_BUFFER). Section contents
 * are not read. Every failure is a FlashMLAError naming `argument` and the file.
 */
export function readTableHeader(path: string, argument = 'path'): EngramTableFile {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    throw new FlashMLAError('E_VALUE', `cannot open Engram table ${path}: ${(e as Error).message}`, argument);
  }
  try {
    return parseTableHeader(fd, path, argument);
  } finally {
    closeSync(fd);
  }
}

const isCount = (x: unknown): x is number => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;

function parseTableHeader(fd: number, path: string, argument: string): EngramTableFile {
  const fail = (code: 'E_VALUE' | 'E_BUFFER', why: string): never => {
    throw new FlashMLAError(code, `Engram table ${path}: ${why}`, argument);
  };
  const size = fstatSync(fd).size;
  if (size < PREAMBLE_BYTES) fail('E_BUFFER', `${size} bytes, shorter than the ${PREAMBLE_BYTES}-byte preamble`);
  const pre = new Uint8Array(PREAMBLE_BYTES);
  readFully(fd, pre, 0, path);
  if (!hasTableMagic(pre)) fail('E_VALUE', 'no ENGRAMTB magic (not an Engram table, or its writer did not finish)');
  const dv = new DataView(pre.buffer);
  const version = dv.getUint32(8, true);
  if (version !== TABLE_VERSION) fail('E_VALUE', `format version ${version}; this package reads version ${TABLE_VERSION}`);
  const jsonBytes = dv.getUint32(12, true);
  if (jsonBytes === 0 || jsonBytes > MAX_HEADER_JSON_BYTES) fail('E_VALUE', `header length ${jsonBytes} outside [1, ${MAX_HEADER_JSON_BYTES}]`);
  if (pre.subarray(20).some((b) => b !== 0)) fail('E_VALUE', 'reserved preamble bytes 20..63 are not zero');
  if (PREAMBLE_BYTES + jsonBytes > size) fail('E_BUFFER', `header of ${jsonBytes} bytes runs past the end of the ${size}-byte file`);
  const text = new Uint8Array(jsonBytes);
  readFully(fd, text, PREAMBLE_BYTES, path);
  const headerCrc = crc32c(text);
  if (headerCrc !== dv.getUint32(16, true)) {
    fail('E_VALUE', `header checksum mismatch (stored ${crcHex(dv.getUint32(16, true))}, computed ${crcHex(headerCrc)})`);
  }
  let json: HeaderJson;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(text)) as HeaderJson;
  } catch (e) {
    return fail('E_VALUE', `header is not UTF-8 JSON (${(e as Error).message})`);
  }
  const field = (ok: boolean, what: string): void => { if (!ok) fail('E_VALUE', `header field ${what} is missing or invalid`); };
  field(json !== null && typeof json === 'object', 'root');
  field(json.format === 'fp8' || json.format === 'fp32', 'format');
  field(isCount(json.headDim) && isCount(json.rows), 'headDim/rows');
  try {
    checkRowGeometry(json.rows, json.headDim, json.format, argument);
  } catch (e) {
    fail('E_VALUE', (e as Error).message);
  }
  const rowBytes = rowBytesOf(json.format, json.headDim);
  field(json.rowBytes === rowBytes, 'rowBytes');
  field(json.alignment === TABLE_ALIGNMENT, 'alignment');
  const layout = parseLayout(json.layout, fail);
  if (layout.numEmbeddings !== json.rows) fail('E_VALUE', `rows ${json.rows} differ from layout.numEmbeddings ${layout.numEmbeddings}`);
  let config: EngramConfig | undefined;
  if (json.config !== null) {
    try {
      config = checkConfig(json.config, 'config');
    } catch (e) {
      fail('E_VALUE', `header ${(e as Error).message}`);
    }
    field(configDescribes(config!, layout, json.headDim, json.format), 'config (it does not describe this table)');
  }
  field(json.sections !== null && typeof json.sections === 'object', 'sections');
  const section = (s: unknown, name: string): TableSection => {
    const t = s as TableSection;
    field(t !== null && typeof t === 'object' && isCount(t.offset) && isCount(t.length) &&
      (t.crc32c === null || (typeof t.crc32c === 'string' && /^[0-9a-f]{8}$/.test(t.crc32c))), `sections.${name}`);
    if (t.offset % TABLE_ALIGNMENT !== 0 || t.offset < TABLE_ALIGNMENT) fail('E_VALUE', `section ${name} at ${t.offset} is not 2 MiB aligned after the header`);
    return { offset: t.offset, length: t.length, crc32c: t.crc32c };
  };
  const rowsSection = section(json.sections.rows, 'rows');
  if (rowsSection.length !== json.rows * rowBytes) fail('E_VALUE', `sections.rows.length ${rowsSection.length} ≠ rows × rowBytes = ${json.rows * rowBytes}`);
  let tokenMap: EngramTableFile['tokenMap'];
  if (json.sections.tokenMap !== null) {
    const t = json.sections.tokenMap;
    const s = section(t, 'tokenMap');
    field(isCount(t.entries) && t.entries > 0 && t.length === 4 * t.entries && isCount(t.size) && t.size > 0 && t.size <= t.entries, 'sections.tokenMap entries/size');
    if (s.offset + s.length > rowsSection.offset) fail('E_VALUE', 'the token map section overlaps the rows');
    tokenMap = { ...s, entries: t.entries, size: t.size };
  }
  const fileBytes = rowsSection.offset + rowsSection.length;
  field(json.fileBytes === fileBytes, 'fileBytes');
  if (size < fileBytes) fail('E_BUFFER', `the header states ${fileBytes} bytes but the file has ${size} (truncated?)`);
  if (size > fileBytes) fail('E_VALUE', `the header states ${fileBytes} bytes but the file has ${size} (trailing bytes)`);
  return {
    path, version, fileBytes, headerBytes: PREAMBLE_BYTES + jsonBytes, format: json.format, headDim: json.headDim, rows: json.rows, rowBytes,
    alignment: TABLE_ALIGNMENT, layout, config, tokenMap, rowsSection, headerCrc32c: crcHex(headerCrc),
  };
}

function parseLayout(l: HeaderJson['layout'], fail: (code: 'E_VALUE', why: string) => never): EngramLayerLayout {
  const ints = (a: unknown): a is number[] => Array.isArray(a) && a.every((x) => Number.isSafeInteger(x) && Math.abs(x as number) <= INT32_MAX);
  if (l === null || typeof l !== 'object' || !ints(l.primes) || !ints(l.offsets) || !Array.isArray(l.multipliers) ||
    !l.multipliers.every((m) => typeof m === 'string' && /^[0-9]{1,19}$/.test(m) && BigInt(m) < 2n ** 63n)) {
    return fail('E_VALUE', 'header field layout is missing or invalid');
  }
  const layout: EngramLayerLayout = {
    layerId: l.layerId,
    primes: Int32Array.from(l.primes),
    offsets: Int32Array.from(l.offsets),
    numEmbeddings: l.numEmbeddings,
    multipliers: BigInt64Array.from(l.multipliers.map((m) => BigInt(m))),
  };
  try {
    checkLayout(layout, 'layout');
  } catch (e) {
    fail('E_VALUE', `header ${(e as Error).message}`);
  }
  return layout;
}

/** The placement of an own-format file's rows (packed records). */
export function placementOf(file: EngramTableFile): TablePlacement {
  const { rows, headDim, format, rowBytes } = file;
  const offset = file.rowsSection.offset;
  return format === 'fp8'
    ? { rows, headDim, format, weightOffset: offset, weightStride: rowBytes, scaleOffset: offset + headDim, scaleStride: rowBytes }
    : { rows, headDim, format, weightOffset: offset, weightStride: rowBytes, scaleOffset: 0, scaleStride: 0 };
}

/**
 * Reads the token map section of `file` (small: 4 bytes per raw token id), checks its CRC-32C when
 * recorded and that every entry lies in [0, size). Failures are FlashMLAErrors (E_VALUE) naming the file.
 */
export function readTableTokenMap(fd: number, file: EngramTableFile): TokenMap | undefined {
  const t = file.tokenMap;
  if (t === undefined) return undefined;
  const bytes = new Uint8Array(t.length);
  readFully(fd, bytes, t.offset, file.path);
  const crc = crcHex(crc32c(bytes));
  if (t.crc32c !== null && crc !== t.crc32c) {
    throw new FlashMLAError('E_VALUE', `Engram table ${file.path}: token map checksum mismatch (stored ${t.crc32c}, computed ${crc})`, 'path');
  }
  const map = new Int32Array(t.entries);
  const dv = new DataView(bytes.buffer);
  for (let i = 0; i < t.entries; i++) {
    const v = dv.getInt32(4 * i, true);
    if (v < 0 || v >= t.size) {
      throw new FlashMLAError('E_VALUE', `Engram table ${file.path}: token map entry ${i} is ${v}, outside [0, ${t.size})`, 'path');
    }
    map[i] = v;
  }
  return { map, size: t.size };
}

/** One section's result in a {@link TableVerification}. */
export interface SectionVerification {
  /** 'tokenMap' or 'rows'. */
  readonly section: 'tokenMap' | 'rows';
  /** The stored CRC-32C (8 hex digits), or null when none was recorded. */
  readonly expected: string | null;
  /** The CRC-32C of the bytes on disk. */
  readonly actual: string;
  /** True when no checksum was recorded or it matches. */
  readonly ok: boolean;
}

/** What {@link verifyTable} found. */
export interface TableVerification {
  /** True when every recorded section checksum matches (the header's was checked when it was read). */
  readonly ok: boolean;
  /** The header's CRC-32C (always verified). */
  readonly headerCrc32c: string;
  /** Per section, in file order. */
  readonly sections: readonly SectionVerification[];
}

/** Options of {@link verifyTable}. */
export interface VerifyTableOptions {
  /** Called after each chunk with the bytes checked so far and in all; default: none. */
  readonly onProgress?: (doneBytes: number, totalBytes: number) => void;
  /** Bytes read per step; default: 8 MiB. */
  readonly chunkBytes?: number;
}

/**
 * Reads every section of the own-format table at `path` and compares its CRC-32C with the header's
 * (the header checksum itself is verified by reading the header). Streams in `chunkBytes` reads, so
 * memory stays small for any file size. A mismatch is reported (ok: false), not thrown; an unreadable
 * or malformed file throws a FlashMLAError.
 */
export async function verifyTable(path: string, options: VerifyTableOptions = {}): Promise<TableVerification> {
  if (options === null || typeof options !== 'object') throw new FlashMLAError('E_VALUE', 'must be an options object', 'options');
  const chunk = options.chunkBytes ?? 8 * 1024 * 1024;
  if (!Number.isSafeInteger(chunk) || chunk < 1 || chunk > 1 << 30) {
    throw new FlashMLAError('E_VALUE', `must be an integer in [1, 2^30], got ${String(chunk)}`, 'options.chunkBytes');
  }
  if (options.onProgress !== undefined && typeof options.onProgress !== 'function') {
    throw new FlashMLAError('E_VALUE', 'must be a function', 'options.onProgress');
  }
  const file = readTableHeader(path);
  const sections: [SectionVerification['section'], TableSection][] = [];
  if (file.tokenMap !== undefined) sections.push(['tokenMap', file.tokenMap]);
  sections.push(['rows', file.rowsSection]);
  const total = sections.reduce((s, [, sec]) => s + sec.length, 0);
  const handle = await openAsync(path, 'r');
  const results: SectionVerification[] = [];
  try {
    const buf = new Uint8Array(Math.min(chunk, Math.max(1, total)));
    let done = 0;
    for (const [name, sec] of sections) {
      let crc = 0;
      for (let at = 0; at < sec.length;) {
        const want = Math.min(buf.length, sec.length - at);
        const { bytesRead } = await handle.read(buf, 0, want, sec.offset + at);
        if (bytesRead === 0) throw new FlashMLAError('E_BUFFER', `Engram table ${path}: unexpected end of file at byte ${sec.offset + at}`, 'path');
        crc = crc32c(buf.subarray(0, bytesRead), crc);
        at += bytesRead;
        done += bytesRead;
        options.onProgress?.(done, total);
      }
      const actual = crcHex(crc);
      results.push({ section: name, expected: sec.crc32c, actual, ok: sec.crc32c === null || sec.crc32c === actual });
    }
  } finally {
    await handle.close();
  }
  return { ok: results.every((r) => r.ok), headerCrc32c: file.headerCrc32c, sections: results };
}
