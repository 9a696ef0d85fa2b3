/**
 * safetensors header parsing without reading tensor data (docs/engram-tables.md#safetensors).
 * Only the 8-byte length and the JSON header are read; every offset is checked against the file
 * size here, so later reads of tensor bytes (mmap or pread) stay inside the file.
 */
import { closeSync, fstatSync, openSync } from 'node:fs';
import { FlashMLAError } from '../errors.js';
import { readFully } from './table-io.js';

/**
 * Bits per element of every safetensors dtype (huggingface/safetensors `Dtype::bitsize`,
 * docs/engram-tables.md#safetensors).
 */
const DTYPE_BITS = {
  BOOL: 8, F4: 4, F6_E2M3: 6, F6_E3M2: 6, U8: 8, I8: 8, F8_E5M2: 8, F8_E4M3: 8, F8_E8M0: 8,
  F8_E4M3FNUZ: 8, F8_E5M2FNUZ: 8, I16: 16, U16: 16, F16: 16, BF16: 16, I32: 32, U32: 32, F32: 32,
  C64: 64, F64: 64, I64: 64, U64: 64,
} as const;

/** A safetensors element type name, as the header spells it ('F8_E4M3', 'BF16', ...). */
export type SafetensorsDType = keyof typeof DTYPE_BITS;

/** The largest header accepted: 100,000,000 bytes, the limit of the reference implementation. */
export const SAFETENSORS_MAX_HEADER_BYTES = 100_000_000;

/** One tensor entry of a safetensors header, with its place in the file resolved. */
export interface SafetensorsTensor {
  /** The tensor's name (the header key). */
  readonly name: string;
  /** Element type. */
  readonly dtype: SafetensorsDType;
  /** Sizes of the dims, outermost first (row-major). */
  readonly shape: readonly number[];
  /** `data_offsets` as stored: [begin, end) relative to the start of the data section. */
  readonly dataOffsets: readonly [number, number];
  /** Absolute file offset of the tensor's first byte (8 + header length + begin). */
  readonly fileOffset: number;
  /** Bytes of the tensor (end − begin). */
  readonly byteLength: number;
}

/** A parsed safetensors header: what a file holds and where, without any tensor data. */
export interface SafetensorsHeader {
  /** The path the header was read from. */
  readonly path: string;
  /** Size of the file in bytes when it was read. */
  readonly fileBytes: number;
  /** The header length n stored in the first 8 bytes. */
  readonly headerBytes: number;
  /** File offset of the data section (8 + n); tensor offsets count from here. */
  readonly dataStart: number;
  /** The tensors in file order (ascending offsets). */
  readonly tensors: readonly SafetensorsTensor[];
  /** The `__metadata__` string map (empty when absent). */
  readonly metadata: Readonly<Record<string, string>>;
}

const isCount = (x: unknown): x is number => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;

/**
 * Reads and validates the header of the safetensors file at `path` (only its first 8 + n bytes).
 * Every problem is a FlashMLAError naming `argument` (default 'path'), the file, and the tensor when
 * one is at fault: a file shorter than 8 bytes, a header length past the end of the file or above
 * {@link SAFETENSORS_MAX_HEADER_BYTES} (E_BUFFER), a header that is not a JSON object starting with
 * '{', an entry with an unknown dtype, a shape or offsets that are not non-negative safe integers,
 * a byte length that does not match shape × dtype, offsets that overlap, leave holes, or do not end
 * exactly at the end of the file (E_VALUE; holes and trailing bytes are invalid by the format).
 */
export function readSafetensorsHeader(path: string, argument = 'path'): SafetensorsHeader {
  if (typeof path !== 'string' || path.length === 0) {
    throw new FlashMLAError('E_VALUE', `${argument} must be a non-empty file path`, argument);
  }
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    throw new FlashMLAError('E_VALUE', `cannot open safetensors file ${path}: ${(e as Error).message}`, argument);
  }
  try {
    return parseHeader(fd, path, argument);
  } finally {
    closeSync(fd);
  }
}

function parseHeader(fd: number, path: string, argument: string): SafetensorsHeader {
  const fail = (code: 'E_VALUE' | 'E_BUFFER', why: string): never => {
    throw new FlashMLAError(code, `safetensors file ${path}: ${why}`, argument);
  };
  const fileBytes = fstatSync(fd).size;
  if (fileBytes < 8) fail('E_BUFFER', `${fileBytes} bytes, shorter than the 8-byte header length`);
  const lengthBytes = Buffer.alloc(8);
  readFully(fd, lengthBytes, 0, path);
  const n64 = lengthBytes.readBigUInt64LE(0);
  if (n64 > BigInt(SAFETENSORS_MAX_HEADER_BYTES)) {
    fail('E_BUFFER', `header length ${n64} exceeds the ${SAFETENSORS_MAX_HEADER_BYTES}-byte limit`);
  }
  const n = Number(n64);
  if (8 + n > fileBytes) fail('E_BUFFER', `header length ${n} runs past the end of the ${fileBytes}-byte file`);
  const headerBuf = Buffer.alloc(n);
  readFully(fd, headerBuf, 8, path);
  if (n === 0 || headerBuf[0] !== 0x7b) fail('E_VALUE', 'the header does not start with \'{\'');
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(headerBuf));
  } catch (e) {
    fail('E_VALUE', `the header is not UTF-8 JSON (${(e as Error).message})`);
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) fail('E_VALUE', 'the header is not a JSON object');

  const dataStart = 8 + n;
  let metadata: Record<string, string> = {};
  const tensors: SafetensorsTensor[] = [];
  for (const [name, entry] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      metadata = parseMetadata(entry, fail);
      continue;
    }
    tensors.push(parseEntry(name, entry, dataStart, fail));
  }
  tensors.sort((a, b) => a.dataOffsets[0] - b.dataOffsets[0] || a.dataOffsets[1] - b.dataOffsets[1]);
  // The data section must be tiled exactly: each tensor starts where the previous one ended.
  let expected = 0;
  for (const t of tensors) {
    if (t.dataOffsets[0] !== expected) {
      fail('E_VALUE', t.dataOffsets[0] < expected
        ? `tensor '${t.name}' overlaps the previous tensor (begins at ${t.dataOffsets[0]}, previous ends at ${expected})`
        : `hole before tensor '${t.name}' (begins at ${t.dataOffsets[0]}, previous ends at ${expected})`);
    }
    expected = t.dataOffsets[1];
  }
  if (dataStart + expected !== fileBytes) {
    fail(dataStart + expected > fileBytes ? 'E_BUFFER' : 'E_VALUE',
      `the tensors end at byte ${dataStart + expected} but the file has ${fileBytes} bytes` +
      (dataStart + expected > fileBytes ? ' (truncated?)' : ' (trailing bytes)'));
  }
  return { path, fileBytes, headerBytes: n, dataStart, tensors, metadata };
}

function parseMetadata(entry: unknown, fail: (code: 'E_VALUE', why: string) => never): Record<string, string> {
  if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) fail('E_VALUE', '__metadata__ is not an object');
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(entry as Record<string, unknown>)) {
    if (typeof v !== 'string') fail('E_VALUE', `__metadata__.${k} is not a string`);
    out[k] = v as string;
  }
  return out;
}

function parseEntry(
  name: string, entry: unknown, dataStart: number, fail: (code: 'E_VALUE', why: string) => never,
): SafetensorsTensor {
  const bad = (why: string): never => fail('E_VALUE', `tensor '${name}': ${why}`);
  if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) bad('entry is not an object');
  const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
  if (typeof dtype !== 'string' || !Object.hasOwn(DTYPE_BITS, dtype)) bad(`unknown dtype ${JSON.stringify(dtype)}`);
  if (!Array.isArray(shape) || !shape.every(isCount)) bad('shape is not an array of non-negative integers');
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount)) {
    bad('data_offsets is not [begin, end] of non-negative integers');
  }
  const [begin, end] = offsets as [number, number];
  if (end < begin) bad(`data_offsets [${begin}, ${end}] end before they begin`);
  let bits = DTYPE_BITS[dtype as SafetensorsDType] as number;
  for (const d of shape as number[]) {
    bits *= d;
    if (!Number.isSafeInteger(bits)) bad(`shape [${(shape as number[]).join(', ')}] is too large`);
  }
  if (bits % 8 !== 0) bad(`shape [${(shape as number[]).join(', ')}] of ${String(dtype)} is not a whole number of bytes`);
  if (bits / 8 !== end - begin) {
    bad(`shape [${(shape as number[]).join(', ')}] of ${String(dtype)} needs ${bits / 8} bytes but data_offsets [${begin}, ${end}] hold ${end - begin}`);
  }
  if (!Number.isSafeInteger(dataStart + end)) bad(`data_offsets [${begin}, ${end}] are too large`);
  return {
    name, dtype: dtype as SafetensorsDType, shape: [...(shape as number[])], dataOffsets: [begin, end],
    fileOffset: dataStart + begin, byteLength: end - begin,
  };
}
