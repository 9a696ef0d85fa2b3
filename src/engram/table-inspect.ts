/**
 * A plain description of an Engram table file of either kind, for `engram inspect`
 * (docs/engram-tables.md#inspect). Reads headers only.
 */
import { closeSync, openSync } from 'node:fs';
import { FlashMLAError } from '../errors.js';
import { readSafetensorsHeader, type SafetensorsDType } from './safetensors.js';
import { hasTableMagic, readTableHeader, TABLE_ALIGNMENT } from './table-format.js';
import { readFully } from './table-io.js';
import { findCheckpointTable, rowBytesOf, type EngramRowFormat } from './table-placement.js';

/** One Engram layer's table found in a file. */
export interface InspectedTable {
  /** The layer (block index). */
  readonly layerId: number;
  /** Rows. */
  readonly rows: number;
  /** Values per row. */
  readonly headDim: number;
  /** Row encoding. */
  readonly format: EngramRowFormat;
  /** Bytes per packed row. */
  readonly rowBytes: number;
  /** Why EngramTable.open would refuse this layer's tensors (wrong dtype, missing scale, …); undefined when they form a table. */
  readonly problem: string | undefined;
}

/** What {@link inspectTable} reports. */
export interface TableInspection {
  /** The file. */
  readonly path: string;
  /** 'safetensors' (a checkpoint shard) or 'engram' (the package's own format). */
  readonly kind: 'safetensors' | 'engram';
  /** File size in bytes. */
  readonly fileBytes: number;
  /** Header bytes (safetensors: the JSON length n; own format: preamble + JSON). */
  readonly headerBytes: number;
  /** Every tensor (safetensors) with dtype, shape and absolute file offset; empty for the own format. */
  readonly tensors: readonly { readonly name: string; readonly dtype: SafetensorsDType; readonly shape: readonly number[]; readonly fileOffset: number; readonly byteLength: number }[];
  /** The Engram layers' tables the file holds (tensors named layers.{L}.engram.embed.weight, or the own format's one table). */
  readonly tables: readonly InspectedTable[];
  /** Own format: the layout (primes, offsets, numEmbeddings, multipliers as decimal strings); undefined for safetensors. */
  readonly layout: { readonly layerId: number; readonly primes: readonly number[]; readonly offsets: readonly number[]; readonly numEmbeddings: number; readonly multipliers: readonly string[] } | undefined;
  /** Own format: the sections with offsets, lengths, CRC-32C (null when not recorded) and whether they are 2 MiB aligned. */
  readonly sections: readonly { readonly name: string; readonly offset: number; readonly length: number; readonly crc32c: string | null; readonly aligned: boolean }[];
  /** Own format: the header's CRC-32C (verified while inspecting); undefined for safetensors (it has none). */
  readonly headerCrc32c: string | undefined;
  /** Own format: whether a configuration is stored. */
  readonly hasConfig: boolean;
  /** Own format: the token map's V′ and entry count, when stored. */
  readonly tokenMap: { readonly size: number; readonly entries: number } | undefined;
  /** safetensors: the __metadata__ map; empty for the own format. */
  readonly metadata: Readonly<Record<string, string>>;
}

const ENGRAM_WEIGHT = /^layers\.(\d+)\.engram\.embed\.weight$/;

/**
 * Describes the file at `path` from its header alone (both kinds; the own format's header checksum
 * is verified, section checksums are not: see verifyTable). Malformed files throw FlashMLAErrors.
 */
export function inspectTable(path: string): TableInspection {
  if (typeof path !== 'string' || path.length === 0) throw new FlashMLAError('E_VALUE', 'must be a non-empty file path', 'path');
  const fd = (() => {
    try {
      return openSync(path, 'r');
    } catch (e) {
      throw new FlashMLAError('E_VALUE', `cannot open ${path}: ${(e as Error).message}`, 'path');
    }
  })();
  const head = new Uint8Array(8);
  let own = false;
  try {
    readFully(fd, head, 0, path);
    own = hasTableMagic(head);
  } catch {
    own = false;
  } finally {
    closeSync(fd);
  }
  if (own) {
    const f = readTableHeader(path);
    const sections = [
      ...(f.tokenMap !== undefined ? [{ name: 'tokenMap', ...f.tokenMap }] : []),
      { name: 'rows', ...f.rowsSection },
    ].map((s) => ({ name: s.name, offset: s.offset, length: s.length, crc32c: s.crc32c, aligned: s.offset % TABLE_ALIGNMENT === 0 }));
    return {
      path, kind: 'engram', fileBytes: f.fileBytes, headerBytes: f.headerBytes, tensors: [],
      tables: [{ layerId: f.layout.layerId, rows: f.rows, headDim: f.headDim, format: f.format, rowBytes: f.rowBytes, problem: undefined }],
      layout: {
        layerId: f.layout.layerId, primes: [...f.layout.primes], offsets: [...f.layout.offsets], numEmbeddings: f.layout.numEmbeddings,
        multipliers: [...f.layout.multipliers].map(String),
      },
      sections, headerCrc32c: f.headerCrc32c, hasConfig: f.config !== undefined,
      tokenMap: f.tokenMap === undefined ? undefined : { size: f.tokenMap.size, entries: f.tokenMap.entries },
      metadata: {},
    };
  }
  const h = readSafetensorsHeader(path);
  const tables: InspectedTable[] = [];
  for (const t of h.tensors) {
    const m = ENGRAM_WEIGHT.exec(t.name);
    if (m === null) continue;
    const layerId = Number(m[1]);
    const format: EngramRowFormat = t.dtype === 'F32' ? 'fp32' : 'fp8';
    let problem: string | undefined;
    try {
      findCheckpointTable(h, layerId, 'path');
    } catch (e) {
      problem = (e as Error).message;
    }
    const [rows = 0, headDim = 0] = t.shape;
    tables.push({ layerId, rows, headDim, format, rowBytes: rowBytesOf(format, headDim), problem });
  }
  return {
    path, kind: 'safetensors', fileBytes: h.fileBytes, headerBytes: h.headerBytes,
    tensors: h.tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, fileOffset: t.fileOffset, byteLength: t.byteLength })),
    tables, layout: undefined, sections: [], headerCrc32c: undefined, hasConfig: false, tokenMap: undefined, metadata: h.metadata,
  };
}
