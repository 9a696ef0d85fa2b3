// Seeded fuzzing of both file kinds: every mutated file either fails with a FlashMLAError or opens
// as a table whose reads stay inside the file (a crash, a SIGBUS under mmap, or any other error
// type fails the test).
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadAddon } from '../../../src/addon.js';
import { crc32c } from '../../../src/engram/crc32c.js';
import { EngramTable } from '../../../src/engram/table.js';
import { PREAMBLE_BYTES, verifyTable } from '../../../src/engram/table-format.js';
import { inspectTable } from '../../../src/engram/table-inspect.js';
import { writeEngramTable } from '../../../src/engram/table-writer.js';
import { FlashMLAError } from '../../../src/errors.js';
import { fakeLayout, packedRows, rng, safetensorsBytes, syntheticTable, tempDir } from './table-fixtures.js';

const loaded = loadAddon();
const ioModes: ('mmap' | 'pread')[] = loaded.ok && loaded.addon.EngramMapping !== undefined ? ['mmap', 'pread'] : ['pread'];
const dir = tempDir();
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const table = syntheticTable(64, 256, 99);
const ROUNDS = 300;

const stBytes = safetensorsBytes([
  { name: 'layers.1.attn.wq.weight', dtype: 'BF16', shape: [3, 5], data: new Uint8Array(30).fill(7) },
  { name: 'layers.1.engram.embed.weight', dtype: 'F8_E4M3', shape: [64, 256], data: table.weights },
  { name: 'layers.1.engram.embed.scale', dtype: 'F8_E8M0', shape: [64, 8], data: table.scales },
]);

interface Outcome { opened: number; rejected: number }

/** Opens `path` in every io mode and reads rows; only FlashMLAErrors are acceptable failures. */
async function probe(path: string, r: () => number, outcome: Outcome): Promise<void> {
  const accept = (e: unknown): void => {
    if (!(e instanceof FlashMLAError)) throw new Error(`${path}: not a FlashMLAError: ${String(e)}`);
  };
  try {
    inspectTable(path);
  } catch (e) {
    accept(e);
  }
  for (const io of ioModes) {
    let t: EngramTable;
    try {
      t = EngramTable.open(path, { io });
    } catch (e) {
      accept(e);
      outcome.rejected++;
      continue;
    }
    outcome.opened++;
    const ids = [0, t.rows - 1, Math.floor(r() * t.rows)];
    const raw = t.lookupRaw(ids);
    expect(raw.length).toBe(3 * t.rowBytes);
    expect(t.lookup(ids, { dtype: 'fp32' }).shape).toEqual([3, t.headDim]);
    expect((await t.lookupRawAsync(ids)).length).toBe(3 * t.rowBytes);
    expect(() => t.lookupRaw([t.rows])).toThrow(FlashMLAError);
    t.close();
  }
}

function mutateSafetensors(r: () => number): Uint8Array {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  const n = Number(new DataView(stBytes.buffer).getBigUint64(0, true));
  const kind = Math.floor(r() * 5);
  if (kind === 0) return stBytes.slice(0, Math.floor(r() * stBytes.length)); // truncate
  if (kind === 1) {
    // Flip 1–4 bytes in the length field or the JSON.
    const out = stBytes.slice();
    for (let k = 1 + Math.floor(r() * 4); k > 0; k--) out[Math.floor(r() * (8 + n))]! ^= 1 << Math.floor(r() * 8);
    return out;
  }
  if (kind === 2) {
    // Lie about the header length.
    const out = stBytes.slice();
    new DataView(out.buffer).setBigUint64(0, pick([0n, 1n, BigInt(n - 1), BigInt(n + 1), 2n ** 40n, 2n ** 64n - 1n, BigInt(Math.floor(r() * 2 ** 32))]), true);
    return out;
  }
  // Rewrite one field of the JSON header, keeping the data.
  const header = JSON.parse(new TextDecoder().decode(stBytes.subarray(8, 8 + n))) as Record<string, { dtype: string; shape: unknown[]; data_offsets: unknown[] }>;
  const name = pick(Object.keys(header).filter((k) => k !== '__metadata__'));
  const e = header[name]!;
  const number = (): unknown => pick([-1, 0, 1, 7, 8, 63, 64, 65, 255, 256, 257, 2 ** 31, 2 ** 53, 1.5, 1e300, '8', null]);
  switch (Math.floor(r() * 6)) {
    case 0: e.dtype = pick(['F8_E4M3', 'F8_E8M0', 'F32', 'BF16', 'U8', 'F4', 'F8_E5M2', 'X', '']); break;
    case 1: e.shape[Math.floor(r() * e.shape.length)] = number(); break;
    case 2: e.shape = pick([[], [64], [64, 256, 1], [32, 256], [64, 128], [128, 256]]); break;
    case 3: e.data_offsets[Math.floor(r() * 2)] = number(); break;
    case 4: delete header[name]; break;
    default: header[`layers.${pick([1, 2, 14])}.engram.embed.${pick(['weight', 'scale'])}`] = { dtype: 'U8', shape: [4], data_offsets: [0, 4] };
  }
  const text = new TextEncoder().encode(JSON.stringify(header));
  const data = stBytes.subarray(8 + n);
  const out = new Uint8Array(8 + text.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(text.length), true);
  out.set(text, 8);
  out.set(data, 8 + text.length);
  return kind === 3 ? out : out.subarray(0, out.length - Math.floor(r() * 300)); // sometimes also short
}

/** An own-format file's header JSON re-encoded with a valid checksum (so field checks, not the CRC, must catch lies). */
function withHeader(bytes: Uint8Array, edit: (json: Record<string, any>) => void): Uint8Array {
  const dv = new DataView(bytes.buffer, bytes.byteOffset);
  const len = dv.getUint32(12, true);
  const json = JSON.parse(new TextDecoder().decode(bytes.subarray(PREAMBLE_BYTES, PREAMBLE_BYTES + len))) as Record<string, any>;
  edit(json);
  const text = new TextEncoder().encode(JSON.stringify(json));
  const out = bytes.slice();
  out.fill(0, PREAMBLE_BYTES, PREAMBLE_BYTES + Math.max(len, text.length));
  out.set(text, PREAMBLE_BYTES);
  const odv = new DataView(out.buffer);
  odv.setUint32(12, text.length, true);
  odv.setUint32(16, crc32c(text), true);
  return out;
}

function mutateOwn(bytes: Uint8Array, r: () => number): Uint8Array {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  const len = new DataView(bytes.buffer, bytes.byteOffset).getUint32(12, true);
  const number = (): unknown => pick([-1, 0, 1, 31, 32, 64, 256, 264, 2 ** 21, 2 ** 31, 2 ** 53, 1.5, '1', null, 10 ** 12]);
  switch (Math.floor(r() * 5)) {
    case 0: return bytes.slice(0, Math.floor(r() * bytes.length));
    case 1: {
      const out = bytes.slice();
      for (let k = 1 + Math.floor(r() * 4); k > 0; k--) out[Math.floor(r() * (PREAMBLE_BYTES + len))]! ^= 1 << Math.floor(r() * 8);
      return out;
    }
    default: return withHeader(bytes, (j) => {
      const path = pick([
        ['rows'], ['headDim'], ['rowBytes'], ['fileBytes'], ['alignment'], ['format'],
        ['sections', 'rows', 'offset'], ['sections', 'rows', 'length'], ['sections', 'tokenMap', 'offset'],
        ['sections', 'tokenMap', 'entries'], ['sections', 'tokenMap', 'size'], ['sections', 'tokenMap', 'length'],
        ['layout', 'numEmbeddings'], ['layout', 'layerId'], ['layout', 'primes', 0], ['layout', 'offsets', 1],
        ['layout', 'multipliers', 0], ['config'], ['sections', 'tokenMap'],
      ] as (string | number)[][]);
      let o = j;
      for (const k of path.slice(0, -1)) o = o[k];
      const last = path.at(-1)!;
      o[last] = last === 'format' ? pick(['fp32', 'fp16', 'fp8']) : last === 'multipliers' ? pick(['2', '-3', 'x', '99999999999999999999']) :
        last === 'tokenMap' || last === 'config' ? pick([null, {}, [], { layerIds: [1], headDim: 256, maxNgramSize: 3 }]) : number();
    });
  }
}

describe('fuzzed table files', () => {
  it(`safetensors: ${ROUNDS} seeded mutations give FlashMLAErrors or in-range reads`, async () => {
    const r = rng(1234);
    const outcome: Outcome = { opened: 0, rejected: 0 };
    for (let i = 0; i < ROUNDS; i++) {
      const path = join(dir, 'mutant.safetensors');
      writeFileSync(path, mutateSafetensors(r));
      await probe(path, r, outcome);
    }
    // Both outcomes occur (some mutations keep a valid table, e.g. an extra unrelated tensor's dtype).
    expect(outcome.rejected).toBeGreaterThan(ROUNDS / 2);
    expect(outcome.opened).toBeGreaterThan(0);
  });

  it(`own format: ${ROUNDS} seeded mutations give FlashMLAErrors or in-range reads`, async () => {
    const base = join(dir, 'base.engram');
    await writeEngramTable(base, {
      layout: fakeLayout(1, 64), headDim: 256, format: 'fp8', rows: [packedRows(table, Array.from({ length: 64 }, (_, i) => i))],
      tokenMap: { map: Int32Array.from({ length: 40 }, (_, i) => i % 30), size: 30 },
    });
    const bytes = new Uint8Array(readFileSync(base));
    const r = rng(4321);
    const outcome: Outcome = { opened: 0, rejected: 0 };
    for (let i = 0; i < ROUNDS; i++) {
      const path = join(dir, 'mutant.engram');
      writeFileSync(path, mutateOwn(bytes, r));
      await probe(path, r, outcome);
      try {
        await verifyTable(path);
      } catch (e) {
        expect(e).toBeInstanceOf(FlashMLAError);
      }
    }
    expect(outcome.rejected).toBeGreaterThan(ROUNDS / 2);
  });
});
