import { ElfError, ElfImage, withRegularFile } from './elf.js';
import { parseFatbin, type FatbinEntry } from './fatbin.js';

/**
 * What a FlashMLA build file says about itself before anything loads it: its NEEDED libraries,
 * its exported symbols and the GPU code it carries. Read once per (path, size, mtime).
 */
export interface BuildFile {
  readonly path: string;
  readonly size: number;
  readonly mtimeMs: number;
  readonly needed: readonly string[];
  readonly soname: string | null;
  /** Defined dynamic symbols (what dlsym can find). */
  readonly exports: ReadonlySet<string>;
  /** The entries of `.nv_fatbin`, or why they cannot be read. */
  readonly fatbin: { readonly ok: true; readonly entries: readonly FatbinEntry[] } | { readonly ok: false; readonly reason: string };
}

const cache = new Map<string, { key: string; file: BuildFile }>();

/** Reads `path` (a regular file only); throws an ElfError whose message says what is wrong with it. */
export function inspectBuild(path: string): BuildFile {
  return withRegularFile(path, (src, stat) => {
    const key = `${stat.size}:${stat.mtimeMs}`;
    const hit = cache.get(path);
    if (hit !== undefined && hit.key === key) return hit.file;
    const elf = ElfImage.parse(src, path);
    const { needed, soname } = elf.dynamic();
    const section = elf.section('.nv_fatbin');
    let fatbin: BuildFile['fatbin'];
    if (section === undefined) {
      fatbin = { ok: false, reason: `${path} has no .nv_fatbin section, so it carries no CUDA kernels` };
    } else {
      try {
        fatbin = { ok: true, entries: parseFatbin(elf.bytes(section)) };
      } catch (e) {
        if (!(e instanceof ElfError)) throw e;
        fatbin = { ok: false, reason: `the GPU code of ${path} cannot be read (${e.message})` };
      }
    }
    const file: BuildFile = { path, size: stat.size, mtimeMs: stat.mtimeMs, needed, soname, exports: new Set(elf.definedSymbols()), fatbin };
    cache.set(path, { key, file });
    return file;
  });
}
