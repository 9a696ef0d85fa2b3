/**
 * Where a table's rows lie in a file (docs/engram-tables.md#io-modes): the one description both
 * gather paths (the native mapping and the JS pread fallback) read rows by, whatever the file kind.
 */
import { FlashMLAError } from '../errors.js';
import { INT32_MAX } from '../tensor.js';
import { checkConfig, type EngramConfig } from './config.js';
import { layout, type EngramLayerLayout } from './layout.js';
import type { SafetensorsHeader, SafetensorsTensor } from './safetensors.js';
import { FP8_BLOCK } from './types.js';

/** Row encoding: fp8 (e4m3 values + one e8m0 scale per 32 values) or little-endian float32. */
export type EngramRowFormat = 'fp8' | 'fp32';

/**
 * Byte offsets of a table's rows in its file; field for field the addon's `NativeEngramSpec`.
 * Offsets are absolute file offsets (safe integers; may exceed 4 GiB).
 */
export interface TablePlacement {
  /** Rows in the table (row ids are int32: at most 2^31 − 1). */
  readonly rows: number;
  /** Values per row. */
  readonly headDim: number;
  /** Row encoding. */
  readonly format: EngramRowFormat;
  /** File offset of row 0's values. */
  readonly weightOffset: number;
  /** Bytes between consecutive rows' values. */
  readonly weightStride: number;
  /** fp8: file offset of row 0's scales (0 for fp32). */
  readonly scaleOffset: number;
  /** fp8: bytes between consecutive rows' scales (0 for fp32). */
  readonly scaleStride: number;
}

/** Bytes of one packed row: headDim e4m3 bytes + headDim/32 e8m0 bytes (fp8), or 4·headDim (fp32). */
export function rowBytesOf(format: EngramRowFormat, headDim: number): number {
  return format === 'fp8' ? headDim + headDim / FP8_BLOCK : 4 * headDim;
}

/** Checks a row count and head dim that a file or caller states (E_VALUE naming `argument`). */
export function checkRowGeometry(rows: number, headDim: number, format: EngramRowFormat, argument: string): void {
  if (!Number.isSafeInteger(rows) || rows < 1 || rows > INT32_MAX) {
    throw new FlashMLAError('E_VALUE', `rows must be an integer in [1, ${INT32_MAX}] (row ids are int32), got ${rows}`, argument);
  }
  if (!Number.isSafeInteger(headDim) || headDim < 1 || (format === 'fp8' && headDim % FP8_BLOCK !== 0) || headDim > 1 << 16) {
    throw new FlashMLAError('E_VALUE',
      `headDim must be a positive integer${format === 'fp8' ? ' multiple of 32' : ''} (at most 65536), got ${headDim}`, argument);
  }
}

/** The checkpoint tensor names of layer `layerId` (docs/engram-tables.md#v41-tensors). */
export function checkpointNames(layerId: number): { weight: string; scale: string } {
  return { weight: `layers.${layerId}.engram.embed.weight`, scale: `layers.${layerId}.engram.embed.scale` };
}

const WEIGHT_NAME = /^layers\.(\d+)\.engram\.embed\.weight$/;

/** The placement of one Engram layer's table inside a checkpoint shard, and which layer it is. */
export interface CheckpointTable {
  /** The layer (block index) the tensors belong to. */
  readonly layerId: number;
  /** Where the rows lie. */
  readonly placement: TablePlacement;
  /** The value tensor. */
  readonly weight: SafetensorsTensor;
  /** The scale tensor (fp8 tables only). */
  readonly scale: SafetensorsTensor | undefined;
}

/**
 * Finds layer `layerId`'s Engram table in a safetensors header: `layers.{L}.engram.embed.weight`
 * F8_E4M3 [rows, headDim] with `layers.{L}.engram.embed.scale` F8_E8M0 [rows, headDim/32] (V4.1), or
 * a lone F32 [rows, headDim] weight (an fp32 table). Without `layerId` the shard must hold exactly one
 * Engram layer. Every mismatch is a FlashMLAError naming the file and the tensor.
 */
export function findCheckpointTable(header: SafetensorsHeader, layerId: number | undefined, argument: string): CheckpointTable {
  const byName = new Map(header.tensors.map((t) => [t.name, t]));
  const layers = header.tensors.map((t) => WEIGHT_NAME.exec(t.name)).filter((m) => m !== null).map((m) => Number(m[1]));
  let layer: number;
  if (layerId === undefined) {
    if (layers.length !== 1) {
      throw new FlashMLAError('E_VALUE', `${header.path} holds ${layers.length === 0 ? 'no Engram table' : `Engram tables of layers ${layers.join(', ')}`}` +
        (layers.length === 0 ? ' (no tensor named layers.{L}.engram.embed.weight)' : '; say which with options.layerId'), 'options.layerId');
    }
    layer = layers[0]!;
  } else {
    layer = layerId;
  }
  const names = checkpointNames(layer);
  const weight = byName.get(names.weight);
  if (weight === undefined) {
    throw new FlashMLAError('E_VALUE', `${header.path} has no tensor ${names.weight}` +
      (layers.length > 0 ? ` (it holds the Engram tables of layers ${layers.join(', ')})` : ''), layerId === undefined ? argument : 'options.layerId');
  }
  const scale = byName.get(names.scale);
  const where = `${header.path}: tensor ${names.weight}`;
  if (weight.shape.length !== 2) {
    throw new FlashMLAError('E_SHAPE', `${where} must be 2-D [rows, headDim], got [${weight.shape.join(', ')}]`, argument);
  }
  const [rows, headDim] = weight.shape as [number, number];
  if (weight.dtype === 'F32') {
    if (scale !== undefined) throw new FlashMLAError('E_DTYPE', `${where} is F32 but ${names.scale} exists (fp8 tables are F8_E4M3)`, argument);
    checkRowGeometry(rows, headDim, 'fp32', argument);
    return {
      layerId: layer, weight, scale,
      placement: { rows, headDim, format: 'fp32', weightOffset: weight.fileOffset, weightStride: 4 * headDim, scaleOffset: 0, scaleStride: 0 },
    };
  }
  if (weight.dtype !== 'F8_E4M3') throw new FlashMLAError('E_DTYPE', `${where} must be F8_E4M3 or F32, got ${weight.dtype}`, argument);
  checkRowGeometry(rows, headDim, 'fp8', argument);
  if (scale === undefined) throw new FlashMLAError('E_VALUE', `${header.path} has ${names.weight} but no ${names.scale}`, argument);
  if (scale.dtype !== 'F8_E8M0') {
    throw new FlashMLAError('E_DTYPE', `${header.path}: tensor ${names.scale} must be F8_E8M0, got ${scale.dtype}`, argument);
  }
  if (scale.shape.length !== 2 || scale.shape[0] !== rows || scale.shape[1] !== headDim / FP8_BLOCK) {
    throw new FlashMLAError('E_SHAPE',
      `${header.path}: tensor ${names.scale} must be [${rows}, ${headDim / FP8_BLOCK}], got [${scale.shape.join(', ')}]`, argument);
  }
  return {
    layerId: layer, weight, scale,
    placement: {
      rows, headDim, format: 'fp8',
      weightOffset: weight.fileOffset, weightStride: headDim,
      scaleOffset: scale.fileOffset, scaleStride: headDim / FP8_BLOCK,
    },
  };
}

/**
 * Whether `config` describes a table of `layout`, `headDim` and `format`: it lists the layer, and its
 * headDim, N (the number of multipliers) and table dtype agree.
 */
export function configDescribes(config: EngramConfig, layout: EngramLayerLayout, headDim: number, format: EngramRowFormat): boolean {
  return config.layerIds.includes(layout.layerId) && config.headDim === headDim &&
    config.maxNgramSize === layout.multipliers.length && (config.tableDtype === 'fp32') === (format === 'fp32');
}

/**
 * Layer `layerId`'s layout from `config` (layout(config) of ./layout.ts; V′ from `compressedVocabSize`,
 * default config.compressedVocabSize), checked against a table's rows, headDim and format: a
 * mismatch means the file belongs to another model or layer (E_VALUE naming `argument`).
 */
export function layoutForTable(
  config: EngramConfig, layerId: number, placement: Pick<TablePlacement, 'rows' | 'headDim' | 'format'>, argument: string,
  compressedVocabSize?: number,
): EngramLayerLayout {
  const { rows, headDim, format } = placement;
  const c = checkConfig(config, argument);
  const vocab = compressedVocabSize ?? c.compressedVocabSize;
  if (vocab === undefined) {
    throw new FlashMLAError('E_VALUE', `${argument}.compressedVocabSize (V′) is unknown, so the layout's multipliers cannot be computed`, argument);
  }
  const found = layout(c, { compressedVocabSize: vocab }).find((l) => l.layerId === layerId);
  if (found === undefined) {
    throw new FlashMLAError('E_VALUE', `layer ${layerId} is not an Engram layer of the config (layerIds [${c.layerIds.join(', ')}])`, argument);
  }
  if (found.numEmbeddings !== rows) {
    throw new FlashMLAError('E_VALUE', `layer ${layerId} of the config has ${found.numEmbeddings} rows but the table has ${rows}`, argument);
  }
  if (!configDescribes(c, found, headDim, format)) {
    throw new FlashMLAError('E_VALUE',
      `the config (headDim ${c.headDim}, tableDtype ${c.tableDtype}) does not describe this ${format} table of ${headDim} values per row`, argument);
  }
  return found;
}

/**
 * What a table reads rows through: the addon's EngramMapping (mmap) or the JS pread fallback. Ids
 * were checked by the caller (and are re-checked natively); outputs are sized n·rowBytes (raw) or
 * n·headDim (dequantised: Float32Array fp32, Uint16Array bf16 bits).
 */
export interface RowReader {
  /** Size of the file when it was opened. */
  readonly fileBytes: number;
  /** Packed records of rows `ids` into `out`. */
  gatherRaw(ids: Int32Array, out: Uint8Array): void;
  /** Dequantised rows `ids` into `out`. */
  gather(ids: Int32Array, out: Float32Array | Uint16Array): void;
  /**
   * {@link RowReader.gatherRaw} off the main thread, into memory of its own: a caller's array could
   * be transferred or detached while another thread writes it.
   */
  gatherRawAsync(ids: Int32Array): Promise<Uint8Array>;
  /** {@link RowReader.gather} off the main thread, into memory of its own (float32 values or bf16 bits). */
  gatherAsync(ids: Int32Array, dtype: 'fp32' | 'bf16'): Promise<Float32Array | Uint16Array>;
  /**
   * Off the main thread, straight into `out` (a view of a SharedArrayBuffer): the rows of block b
   * (ids[b·blockRows …]) as 'raw' records, float32 or bf16 values, at out's byte b·blockStride.
   */
  gatherBlocksAsync(ids: Int32Array, kind: 'raw' | 'fp32' | 'bf16', out: Uint8Array | Float32Array | Uint16Array, blockRows: number, blockStride: number): Promise<void>;
  /** Releases the file (idempotent; waits for in-flight async gathers). */
  close(): void;
}
