import { closeSync, openSync, readSync } from 'node:fs';

/**
 * The two facts the loader needs from a shared library before dlopen-ing it (LOADING.md): its
 * NEEDED entries (kernels-only build vs PyTorch extension) and its defined dynamic symbols (the
 * SPEC §4.1 head128 fallback). ELF64 little-endian only (x86-64 / aarch64 Linux).
 */
export interface ElfFacts {
  readonly needed: readonly string[];
  readonly soname: string | null;
  /** Names of symbols defined (st_shndx != 0) in .dynsym. */
  readonly definedSymbols: () => string[];
}

const SHT_DYNAMIC = 6;
const SHT_DYNSYM = 11;
const DT_NEEDED = 1n;
const DT_SONAME = 14n;

class FileReader {
  constructor(private readonly fd: number) {}
  read(offset: number, length: number): Buffer {
    const buf = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const n = readSync(this.fd, buf, done, length - done, offset + done);
      if (n === 0) throw new Error(`unexpected end of file at byte ${offset + done}`);
      done += n;
    }
    return buf;
  }
}

interface Section { type: number; offset: number; size: number; link: number; entsize: number }

/** Reads the ELF facts of `path`; throws an Error with a readable message for non-ELF64 files. */
export function readElf(path: string): ElfFacts {
  const fd = openSync(path, 'r');
  try {
    const f = new FileReader(fd);
    const h = f.read(0, 64);
    if (h.readUInt32BE(0) !== 0x7f454c46) throw new Error(`${path} is not an ELF file`);
    if (h[4] !== 2 || h[5] !== 1) throw new Error(`${path} is not a 64-bit little-endian ELF file`);
    const shoff = Number(h.readBigUInt64LE(0x28));
    const shentsize = h.readUInt16LE(0x3a);
    const shnum = h.readUInt16LE(0x3c);
    const table = f.read(shoff, shentsize * shnum);
    const sections: Section[] = [];
    for (let i = 0; i < shnum; i++) {
      const o = i * shentsize;
      sections.push({
        type: table.readUInt32LE(o + 4),
        offset: Number(table.readBigUInt64LE(o + 0x18)),
        size: Number(table.readBigUInt64LE(o + 0x20)),
        link: table.readUInt32LE(o + 0x28),
        entsize: Number(table.readBigUInt64LE(o + 0x38)),
      });
    }
    const strings = (s: Section | undefined): Buffer => (s ? f.read(s.offset, s.size) : Buffer.alloc(0));
    const cstr = (b: Buffer, at: number): string => b.toString('latin1', at, b.indexOf(0, at));

    const needed: string[] = [];
    let soname: string | null = null;
    const dyn = sections.find((s) => s.type === SHT_DYNAMIC);
    if (dyn) {
      const dynstr = strings(sections[dyn.link]);
      const entries = f.read(dyn.offset, dyn.size);
      for (let o = 0; o + 16 <= entries.length; o += 16) {
        const tag = entries.readBigInt64LE(o);
        if (tag === 0n) break;
        const val = Number(entries.readBigUInt64LE(o + 8));
        if (tag === DT_NEEDED) needed.push(cstr(dynstr, val));
        else if (tag === DT_SONAME) soname = cstr(dynstr, val);
      }
    }
    const dynsym = sections.find((s) => s.type === SHT_DYNSYM);
    const symbols = dynsym ? { syms: f.read(dynsym.offset, dynsym.size), str: strings(sections[dynsym.link]), ent: dynsym.entsize || 24 } : null;
    return {
      needed,
      soname,
      definedSymbols: () => {
        if (!symbols) return [];
        const out: string[] = [];
        for (let o = 0; o + symbols.ent <= symbols.syms.length; o += symbols.ent) {
          const name = symbols.syms.readUInt32LE(o);
          const shndx = symbols.syms.readUInt16LE(o + 6);
          if (name !== 0 && shndx !== 0) out.push(cstr(symbols.str, name));
        }
        return out;
      },
    };
  } finally {
    closeSync(fd);
  }
}
