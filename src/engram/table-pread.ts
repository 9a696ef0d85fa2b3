/**
 * The JavaScript row reader (docs/engram-tables.md#io-modes): positional reads (pread) of each row
 * and a table-driven dequantisation, for when the addon (or its EngramMapping) is missing or
 * io: 'pread' is asked for. Bit-identical to the native gather: value = e4m3(w) · 2^(e8m0 − 127),
 * computed exactly and rounded once to float32 (the product of an e4m3 value and a power of two is
 * exact in float64), then to bf16 by round-to-nearest-even (src/formats/bf16.ts); a NaN result is the
 * quiet NaN with the e4m3 code's sign.
 */
import { closeSync, fstatSync, openSync, read } from 'node:fs';
import { FlashMLAError } from '../errors.js';
import { bitsViewOf, f32ArrayToBf16 } from '../formats/bf16.js';
import { E4M3_TO_F32, E8M0_TO_F32 } from '../formats/fp8.js';
import { readFully } from './table-io.js';
import { rowBytesOf, type RowReader, type TablePlacement } from './table-placement.js';
import { FP8_BLOCK } from './types.js';

/** float32 bits of the quiet NaN (sign clear). */
const F32_QUIET_NAN = 0x7fc00000;

/** One positional read: `length` bytes at file offset `position` into `out[offset …]`. */
interface ReadOp { readonly offset: number; readonly length: number; readonly position: number }

function readAsync(fd: number, buf: Uint8Array, op: ReadOp, path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const step = (done: number): void => {
      read(fd, buf, op.offset + done, op.length - done, op.position + done, (err, got) => {
        if (err) reject(new FlashMLAError('E_BUFFER', `${path}: read failed at byte ${op.position + done}: ${err.message}`));
        else if (got === 0) reject(new FlashMLAError('E_BUFFER', `${path}: unexpected end of file at byte ${op.position + done}`));
        else if (done + got < op.length) step(done + got);
        else resolve();
      });
    };
    step(0);
  });
}

/**
 * Dequantises `n` packed rows `raw` (the layout of gatherRaw) into `out`: Float32Array values or
 * Uint16Array bf16 bits.
 */
export function dequantRows(raw: Uint8Array, n: number, headDim: number, format: TablePlacement['format'], out: Float32Array | Uint16Array): void {
  const count = n * headDim;
  const f32 = out instanceof Float32Array ? out : new Float32Array(count);
  if (format === 'fp32') {
    // Packed fp32 rows are little-endian float32: copy the bytes under a float view.
    new Uint8Array(f32.buffer, f32.byteOffset, 4 * count).set(raw.subarray(0, 4 * count));
  } else {
    const rowBytes = rowBytesOf('fp8', headDim);
    const e4m3 = E4M3_TO_F32;
    const e8m0 = E8M0_TO_F32;
    // A JavaScript NaN loses its sign; NaN results are written as bits, with the sign of the e4m3
    // code like every other result (the scale is positive), as the native gather does.
    const bits = bitsViewOf(f32);
    const at = f32.byteOffset >>> 2;
    for (let r = 0; r < n; r++) {
      const w = r * rowBytes;
      const s = w + headDim;
      const o = r * headDim;
      for (let b = 0; b < headDim / FP8_BLOCK; b++) {
        const scale = e8m0[raw[s + b]!]!;
        const base = b * FP8_BLOCK;
        for (let j = base; j < base + FP8_BLOCK; j++) {
          const code = raw[w + j]!;
          const v = e4m3[code]! * scale;
          if (v === v) f32[o + j] = v;
          else bits[at + o + j] = F32_QUIET_NAN | ((code & 0x80) << 24);
        }
      }
    }
  }
  if (out instanceof Uint16Array) f32ArrayToBf16(f32, out, 0, 0, count);
}

/** A row reader over plain positional reads of the file. */
export class PreadRowReader implements RowReader {
  /** Size of the file when it was opened. */
  readonly fileBytes: number;
  readonly #path: string;
  readonly #p: TablePlacement;
  readonly #rowBytes: number;
  /** Whether a row's values and scales are one contiguous record (one read per row). */
  readonly #packed: boolean;
  #fd: number | undefined;
  #inFlight = 0;
  #closing = false;

  /** Opens `path` and checks that every row of `placement` lies inside it (E_VALUE naming 'path'). */
  constructor(path: string, placement: TablePlacement) {
    this.#path = path;
    this.#p = placement;
    this.#rowBytes = rowBytesOf(placement.format, placement.headDim);
    this.#packed = placement.format === 'fp32' ||
      (placement.scaleOffset === placement.weightOffset + placement.headDim && placement.scaleStride === placement.weightStride);
    const fd = openSync(path, 'r');
    this.fileBytes = fstatSync(fd).size;
    const lastRow = placement.rows - 1;
    const ends = [placement.weightOffset + lastRow * placement.weightStride + (this.#packed ? this.#rowBytes : placement.headDim)];
    if (!this.#packed) ends.push(placement.scaleOffset + lastRow * placement.scaleStride + placement.headDim / FP8_BLOCK);
    if (Math.max(...ends) > this.fileBytes) {
      closeSync(fd);
      throw new FlashMLAError('E_VALUE', `${path}: the table's rows end at byte ${Math.max(...ends)} but the file has ${this.fileBytes}`, 'path');
    }
    this.#fd = fd;
  }

  /** The reads that fetch rows `ids` as packed records into an output buffer. */
  #ops(ids: Int32Array): ReadOp[] {
    const p = this.#p;
    const ops: ReadOp[] = [];
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      const at = i * this.#rowBytes;
      if (this.#packed) {
        ops.push({ offset: at, length: this.#rowBytes, position: p.weightOffset + id * p.weightStride });
      } else {
        ops.push({ offset: at, length: p.headDim, position: p.weightOffset + id * p.weightStride });
        ops.push({ offset: at + p.headDim, length: p.headDim / FP8_BLOCK, position: p.scaleOffset + id * p.scaleStride });
      }
    }
    return ops;
  }

  #open(): number {
    if (this.#fd === undefined || this.#closing) throw new FlashMLAError('E_DISPOSED', `${this.#path}: the table was closed`);
    return this.#fd;
  }

  /** Packed records of rows `ids` into `out` (n·rowBytes bytes). */
  gatherRaw(ids: Int32Array, out: Uint8Array): void {
    const fd = this.#open();
    for (const op of this.#ops(ids)) readFully(fd, out.subarray(op.offset, op.offset + op.length), op.position, this.#path);
  }

  /** Dequantised rows `ids` into `out` (n·headDim values). */
  gather(ids: Int32Array, out: Float32Array | Uint16Array): void {
    const raw = new Uint8Array(ids.length * this.#rowBytes);
    this.gatherRaw(ids, raw);
    dequantRows(raw, ids.length, this.#p.headDim, this.#p.format, out);
  }

  /** {@link PreadRowReader.gatherRaw} with the reads on the libuv pool. */
  async gatherRawAsync(ids: Int32Array): Promise<Uint8Array> {
    const fd = this.#open();
    const out = new Uint8Array(ids.length * this.#rowBytes);
    this.#inFlight++;
    try {
      await Promise.all(this.#ops(ids).map((op) => readAsync(fd, out, op, this.#path)));
      return out;
    } finally {
      // close() during the reads deferred closing the descriptor to the last of them.
      if (--this.#inFlight === 0 && this.#closing) this.#release();
    }
  }

  /** {@link PreadRowReader.gather} with the reads on the libuv pool. */
  async gatherAsync(ids: Int32Array, dtype: 'fp32' | 'bf16'): Promise<Float32Array | Uint16Array> {
    const raw = await this.gatherRawAsync(ids);
    const out = dtype === 'fp32' ? new Float32Array(ids.length * this.#p.headDim) : new Uint16Array(ids.length * this.#p.headDim);
    dequantRows(raw, ids.length, this.#p.headDim, this.#p.format, out);
    return out;
  }

  /** {@link RowReader.gatherBlocksAsync}: the rows read on the libuv pool, then placed block by block. */
  async gatherBlocksAsync(ids: Int32Array, kind: 'raw' | 'fp32' | 'bf16', out: Uint8Array | Float32Array | Uint16Array, blockRows: number, blockStride: number): Promise<void> {
    const rows = kind === 'raw' ? await this.gatherRawAsync(ids) : await this.gatherAsync(ids, kind);
    const bytes = new Uint8Array(rows.buffer, rows.byteOffset, rows.byteLength);
    const target = new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
    const span = bytes.byteLength / Math.max(1, ids.length / blockRows);
    for (let b = 0, from = 0; from < bytes.byteLength; b++, from += span) target.set(bytes.subarray(from, from + span), b * blockStride);
  }

  /** Closes the file (idempotent); with async reads in flight, once they finish. */
  close(): void {
    if (this.#closing) return;
    this.#closing = true;
    if (this.#inFlight === 0) this.#release();
  }

  #release(): void {
    if (this.#fd !== undefined) closeSync(this.#fd);
    this.#fd = undefined;
  }
}
