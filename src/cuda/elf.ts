import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';

/**
 * Reading ELF64 little-endian files (x86-64 / aarch64 Linux shared libraries, and the cubins
 * inside a fatbin) without loading them. Every read is bounds-checked against the file's size, so
 * a truncated or lying file gives an `ElfError` with a readable message, never a RangeError.
 */
export class ElfError extends Error {
  override readonly name = 'ElfError';
}

/** Random access to bytes: a file or a buffer. */
export interface ByteSource {
  readonly size: number;
  read(offset: number, length: number): Buffer;
}

export function bufferSource(buf: Buffer): ByteSource {
  return {
    size: buf.length,
    read(offset, length) {
      if (offset < 0 || length < 0 || offset + length > buf.length) {
        throw new ElfError(`bytes ${offset}..${offset + length} lie past the end (${buf.length} bytes)`);
      }
      return buf.subarray(offset, offset + length);
    },
  };
}

class FileSource implements ByteSource {
  constructor(private readonly fd: number, readonly size: number) {}
  read(offset: number, length: number): Buffer {
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new ElfError(`bytes ${offset}..${offset + length} lie past the end of the file (${this.size} bytes): it is truncated`);
    }
    const buf = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const n = readSync(this.fd, buf, done, length - done, offset + done);
      if (n === 0) throw new ElfError(`the file ended at byte ${offset + done} while reading (it changed or is truncated)`);
      done += n;
    }
    return buf;
  }
}

/**
 * Opens `path` for reading only if it is a regular file: a FIFO, device or socket would block or
 * never end (O_NONBLOCK keeps the open itself from waiting for a FIFO writer).
 */
export function withRegularFile<T>(path: string, use: (source: ByteSource, stat: { size: number; mtimeMs: number }) => T): T {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new ElfError(`${path} is not a regular file`);
    return use(new FileSource(fd, st.size), { size: st.size, mtimeMs: st.mtimeMs });
  } finally {
    closeSync(fd);
  }
}

export interface ElfSection {
  readonly name: string;
  readonly type: number;
  readonly offset: number;
  readonly size: number;
  readonly link: number;
  readonly entsize: number;
}

export const SHT_SYMTAB = 2;
const SHT_NOBITS = 8;
const SHT_DYNAMIC = 6;
const SHT_DYNSYM = 11;
const DT_NEEDED = 1n;
const DT_SONAME = 14n;
const ELF_HEADER_BYTES = 64;
const SYMBOL_BYTES = 24;
export const STT_FUNC = 2;

/** An ELF64 little-endian image: its sections by index, with names. */
export class ElfImage {
  readonly sections: readonly ElfSection[];

  private constructor(private readonly src: ByteSource, sections: ElfSection[]) {
    this.sections = sections;
  }

  /** Parses the ELF and section headers; throws an ElfError saying what is wrong. */
  static parse(src: ByteSource, what: string): ElfImage {
    if (src.size < ELF_HEADER_BYTES) throw new ElfError(`${what} is not an ELF file (${src.size} bytes, shorter than an ELF header)`);
    const h = src.read(0, ELF_HEADER_BYTES);
    if (h.readUInt32BE(0) !== 0x7f454c46) throw new ElfError(`${what} is not an ELF file`);
    if (h[4] !== 2 || h[5] !== 1) throw new ElfError(`${what} is not a 64-bit little-endian ELF file`);
    const shoff = Number(h.readBigUInt64LE(0x28));
    const shentsize = h.readUInt16LE(0x3a);
    const shnum = h.readUInt16LE(0x3c);
    const shstrndx = h.readUInt16LE(0x3e);
    if (shnum > 0 && shentsize < 64) throw new ElfError(`${what} has a malformed ELF header (section header size ${shentsize})`);
    if (!Number.isSafeInteger(shoff) || shoff + shentsize * shnum > src.size) {
      throw new ElfError(`${what} is truncated: its section headers (at byte ${shoff}, ${shnum} × ${shentsize}) lie past the end of the file (${src.size} bytes)`);
    }
    const table = src.read(shoff, shentsize * shnum);
    const raw = [];
    for (let i = 0; i < shnum; i++) {
      const o = i * shentsize;
      raw.push({
        nameAt: table.readUInt32LE(o),
        type: table.readUInt32LE(o + 4),
        offset: Number(table.readBigUInt64LE(o + 0x18)),
        size: Number(table.readBigUInt64LE(o + 0x20)),
        link: table.readUInt32LE(o + 0x28),
        entsize: Number(table.readBigUInt64LE(o + 0x38)),
      });
    }
    for (const [i, s] of raw.entries()) {
      if (s.type !== SHT_NOBITS && s.type !== 0 && (!Number.isSafeInteger(s.offset + s.size) || s.offset + s.size > src.size)) {
        throw new ElfError(`${what} is truncated: section ${i} (bytes ${s.offset}..${s.offset + s.size}) lies past the end of the file (${src.size} bytes)`);
      }
    }
    const names = shstrndx < raw.length && raw[shstrndx]!.type !== SHT_NOBITS ? src.read(raw[shstrndx]!.offset, raw[shstrndx]!.size) : Buffer.alloc(0);
    const sections = raw.map(({ nameAt, ...s }) => ({ ...s, name: cstr(names, nameAt) }));
    return new ElfImage(src, sections);
  }

  section(name: string): ElfSection | undefined {
    return this.sections.find((s) => s.name === name);
  }

  bytes(s: ElfSection | undefined): Buffer {
    return s === undefined || s.type === SHT_NOBITS ? Buffer.alloc(0) : this.src.read(s.offset, s.size);
  }

  /** DT_NEEDED entries and DT_SONAME of the dynamic section. */
  dynamic(): { needed: string[]; soname: string | null } {
    const needed: string[] = [];
    let soname: string | null = null;
    const dyn = this.sections.find((s) => s.type === SHT_DYNAMIC);
    if (dyn === undefined) return { needed, soname };
    const strings = this.bytes(this.sections[dyn.link]);
    const entries = this.bytes(dyn);
    for (let o = 0; o + 16 <= entries.length; o += 16) {
      const tag = entries.readBigInt64LE(o);
      if (tag === 0n) break;
      const val = Number(entries.readBigUInt64LE(o + 8));
      if (tag === DT_NEEDED) needed.push(cstr(strings, val));
      else if (tag === DT_SONAME) soname = cstr(strings, val);
    }
    return { needed, soname };
  }

  /** Names of defined symbols (st_shndx != 0) of the first section of `type`, optionally of one symbol type. */
  definedSymbols(type: number = SHT_DYNSYM, symbolType?: number): string[] {
    const table = this.sections.find((s) => s.type === type);
    if (table === undefined) return [];
    const syms = this.bytes(table);
    const strings = this.bytes(this.sections[table.link]);
    const ent = table.entsize || SYMBOL_BYTES;
    const out: string[] = [];
    for (let o = 0; o + SYMBOL_BYTES <= syms.length; o += ent) {
      const name = syms.readUInt32LE(o);
      const info = syms[o + 4]!;
      const shndx = syms.readUInt16LE(o + 6);
      if (name !== 0 && shndx !== 0 && (symbolType === undefined || (info & 0xf) === symbolType)) out.push(cstr(strings, name));
    }
    return out;
  }
}

function cstr(b: Buffer, at: number): string {
  if (at >= b.length) return '';
  const end = b.indexOf(0, at);
  return b.toString('latin1', at, end < 0 ? b.length : end);
}
