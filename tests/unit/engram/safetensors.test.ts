import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FlashMLAError } from '../../../src/errors.js';
import { readSafetensorsHeader } from '../../../src/engram/safetensors.js';
import { safetensorsBytes, tempDir } from './table-fixtures.js';

const dir = tempDir();
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let counter = 0;
function file(bytes: Uint8Array): string {
  const p = join(dir, `t${counter++}.safetensors`);
  writeFileSync(p, bytes);
  return p;
}

/** A file from a literal header object and `dataBytes` zero bytes of data. */
function raw(header: unknown, dataBytes: number, lengthOverride?: bigint): string {
  const text = new TextEncoder().encode(typeof header === 'string' ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + text.length + dataBytes);
  new DataView(out.buffer).setBigUint64(0, lengthOverride ?? BigInt(text.length), true);
  out.set(text, 8);
  return file(out);
}

function rejects(path: string, code: string, fragment: string): void {
  try {
    readSafetensorsHeader(path);
  } catch (e) {
    expect(e).toBeInstanceOf(FlashMLAError);
    expect((e as FlashMLAError).code).toBe(code);
    expect((e as FlashMLAError).argument).toBe('path');
    expect((e as Error).message).toContain(path);
    expect((e as Error).message).toContain(fragment);
    return;
  }
  throw new Error(`${path} was accepted`);
}

describe('readSafetensorsHeader', () => {
  it('reads tensors, offsets and metadata of a valid file', () => {
    const p = file(safetensorsBytes([
      { name: 'a', dtype: 'BF16', shape: [3, 5], data: new Uint8Array(30) },
      { name: 'b', dtype: 'F8_E4M3', shape: [4, 64], data: new Uint8Array(256) },
      { name: 'c', dtype: 'F8_E8M0', shape: [4, 2], data: new Uint8Array(8) },
      { name: 'empty', dtype: 'F32', shape: [0, 7], data: new Uint8Array(0) },
      { name: 'scalar', dtype: 'I64', shape: [], data: new Uint8Array(8) },
      { name: 'f4', dtype: 'F4', shape: [2, 3], data: new Uint8Array(3) },
    ], { format: 'pt' }));
    const h = readSafetensorsHeader(p);
    expect(h.metadata).toEqual({ format: 'pt' });
    expect(h.tensors.map((t) => t.name)).toEqual(['a', 'b', 'c', 'empty', 'scalar', 'f4']);
    const b = h.tensors[1]!;
    expect(b.dtype).toBe('F8_E4M3');
    expect(b.shape).toEqual([4, 64]);
    expect(b.dataOffsets).toEqual([30, 286]);
    expect(b.fileOffset).toBe(h.dataStart + 30);
    expect(h.dataStart).toBe(8 + h.headerBytes);
    expect(h.fileBytes).toBe(h.dataStart + 30 + 256 + 8 + 8 + 3);
  });

  it('accepts tensors listed out of offset order and returns them in file order', () => {
    const p = raw({ z: { dtype: 'U8', shape: [2], data_offsets: [3, 5] }, y: { dtype: 'U8', shape: [3], data_offsets: [0, 3] } }, 5);
    expect(readSafetensorsHeader(p).tensors.map((t) => t.name)).toEqual(['y', 'z']);
  });

  it('rejects broken files with a FlashMLAError naming the file and the tensor', () => {
    rejects(file(new Uint8Array(5)), 'E_BUFFER', 'shorter than the 8-byte header length');
    rejects(raw({ a: { dtype: 'U8', shape: [1], data_offsets: [0, 1] } }, 1, 1000n), 'E_BUFFER', 'runs past the end');
    rejects(raw({}, 0, 2n ** 63n), 'E_BUFFER', 'exceeds');
    rejects(raw('[1,2]', 0), 'E_VALUE', 'does not start with');
    rejects(raw('{"a": ', 0), 'E_VALUE', 'not UTF-8 JSON');
    rejects(raw({ a: { dtype: 'Q7', shape: [1], data_offsets: [0, 1] } }, 1), 'E_VALUE', "tensor 'a': unknown dtype");
    rejects(raw({ a: { dtype: 'U8', shape: [-1], data_offsets: [0, 1] } }, 1), 'E_VALUE', "tensor 'a': shape");
    rejects(raw({ a: { dtype: 'U8', shape: [1.5], data_offsets: [0, 1] } }, 1), 'E_VALUE', "tensor 'a': shape");
    rejects(raw({ a: { dtype: 'U8', shape: [1], data_offsets: [-1, 0] } }, 1), 'E_VALUE', "tensor 'a': data_offsets");
    rejects(raw({ a: { dtype: 'U8', shape: [1], data_offsets: [0.5, 1] } }, 1), 'E_VALUE', "tensor 'a': data_offsets");
    rejects(raw({ a: { dtype: 'U8', shape: [1], data_offsets: [1, 0] } }, 1), 'E_VALUE', "tensor 'a': data_offsets [1, 0] end before");
    rejects(raw({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 4] } }, 4), 'E_VALUE', "tensor 'a': shape [2] of F32 needs 8 bytes");
    rejects(raw({ a: { dtype: 'F4', shape: [3], data_offsets: [0, 1] } }, 1), 'E_VALUE', 'not a whole number of bytes');
    rejects(raw({ a: { dtype: 'U8', shape: [4], data_offsets: [0, 4] }, b: { dtype: 'U8', shape: [4], data_offsets: [2, 6] } }, 6), 'E_VALUE', "tensor 'b' overlaps");
    rejects(raw({ a: { dtype: 'U8', shape: [4], data_offsets: [2, 6] } }, 6), 'E_VALUE', "hole before tensor 'a'");
    rejects(raw({ a: { dtype: 'U8', shape: [4], data_offsets: [0, 4] } }, 3), 'E_BUFFER', 'truncated');
    rejects(raw({ a: { dtype: 'U8', shape: [4], data_offsets: [0, 4] } }, 9), 'E_VALUE', 'trailing bytes');
    rejects(raw({ a: { dtype: 'U8', shape: [2 ** 40, 2 ** 40], data_offsets: [0, 4] } }, 4), 'E_VALUE', 'too large');
    rejects(raw({ __metadata__: { k: 1 } }, 0), 'E_VALUE', '__metadata__.k is not a string');
    rejects(raw({ a: 7 }, 0), 'E_VALUE', "tensor 'a': entry is not an object");
  });

  it('names a missing file and a bad path argument', () => {
    expect(() => readSafetensorsHeader(join(dir, 'missing.safetensors'))).toThrow(/cannot open safetensors file .*missing/);
    expect(() => readSafetensorsHeader('')).toThrow(FlashMLAError);
  });
});
