import { bufferSource, ElfError, ElfImage, SHT_SYMTAB, STT_FUNC } from './elf.js';

/**
 * The GPU code a CUDA shared library carries: the fatbin containers of its `.nv_fatbin` section
 * (one per compiled translation unit), each holding cubins and PTX for some architectures. Format
 * facts: docs/cuda-path.md#fatbin.
 */
export interface FatbinEntry {
  readonly kind: 'cubin' | 'ptx';
  /** SM number: 90, 100, 103, … (major·10 + minor). */
  readonly sm: number;
  /** '' generic, 'a' architecture-specific (sm_90a), 'f' family-specific (sm_100f). */
  readonly variant: '' | 'a' | 'f';
  readonly compressed: boolean;
  /** Kernel names (function symbols) of an uncompressed cubin; null when they cannot be read. */
  readonly kernels: readonly string[] | null;
}

const CONTAINER_MAGIC = 0xba55ed50;
const CONTAINER_HEADER_BYTES = 16;
const ENTRY_HEADER_MIN_BYTES = 64;
const KIND_PTX = 1;
const KIND_CUBIN = 2;
const KIND_CUBIN_ALT = 0x10;
const FLAG_COMPRESSED = 0x8000n;
const FLAG_ARCH_SPECIFIC = 0x100000n;
const FLAG_FAMILY_SPECIFIC = 0x200000n;

/** `sm_90a`, `compute_100f`, … as nvcc names the target. */
export function targetName(e: Pick<FatbinEntry, 'kind' | 'sm' | 'variant'>): string {
  return `${e.kind === 'cubin' ? 'sm' : 'compute'}_${e.sm}${e.variant}`;
}

/**
 * Whether the driver can run this entry on a device of compute capability major.minor: a cubin
 * runs on its own major with an equal or higher minor (exactly its own capability when
 * architecture-specific); PTX is compiled for the device when the device is at least its target
 * (same major for family-specific PTX, exactly the target for architecture-specific PTX).
 */
export function runsOn(e: Pick<FatbinEntry, 'kind' | 'sm' | 'variant'>, major: number, minor: number): boolean {
  const eMajor = Math.floor(e.sm / 10);
  const eMinor = e.sm % 10;
  if (e.variant === 'a') return major === eMajor && minor === eMinor;
  if (e.kind === 'cubin' || e.variant === 'f') return major === eMajor && minor >= eMinor;
  return major > eMajor || (major === eMajor && minor >= eMinor);
}

/** Parses every container of a `.nv_fatbin` section; throws an ElfError when the bytes are not fatbin containers. */
export function parseFatbin(section: Buffer): FatbinEntry[] {
  const entries: FatbinEntry[] = [];
  let off = 0;
  while (off + CONTAINER_HEADER_BYTES <= section.length) {
    const magic = section.readUInt32LE(off);
    if (magic === 0) { // padding between containers
      off += 8;
      continue;
    }
    if (magic !== CONTAINER_MAGIC) throw new ElfError(`byte ${off} of .nv_fatbin is not a fatbin container (magic 0x${magic.toString(16)})`);
    const headerBytes = section.readUInt16LE(off + 6);
    const payload = Number(section.readBigUInt64LE(off + 8));
    const end = off + headerBytes + payload;
    if (headerBytes < CONTAINER_HEADER_BYTES || !Number.isSafeInteger(end) || end > section.length) {
      throw new ElfError(`the fatbin container at byte ${off} of .nv_fatbin claims ${payload} bytes past the end of the section`);
    }
    let e = off + headerBytes;
    while (e < end) {
      if (e + ENTRY_HEADER_MIN_BYTES > end) throw new ElfError(`the fatbin entry at byte ${e} of .nv_fatbin is cut off`);
      const kind = section.readUInt16LE(e);
      const entryHeader = section.readUInt32LE(e + 4);
      const size = Number(section.readBigUInt64LE(e + 8));
      const next = e + entryHeader + size;
      if (entryHeader < ENTRY_HEADER_MIN_BYTES || !Number.isSafeInteger(next) || next > end) {
        throw new ElfError(`the fatbin entry at byte ${e} of .nv_fatbin has a malformed header`);
      }
      const sm = section.readUInt32LE(e + 28);
      const flags = section.readBigUInt64LE(e + 40);
      if (kind === KIND_PTX || kind === KIND_CUBIN || kind === KIND_CUBIN_ALT) {
        const compressed = (flags & FLAG_COMPRESSED) !== 0n;
        const isCubin = kind !== KIND_PTX;
        entries.push({
          kind: isCubin ? 'cubin' : 'ptx',
          sm,
          variant: (flags & FLAG_ARCH_SPECIFIC) !== 0n ? 'a' : (flags & FLAG_FAMILY_SPECIFIC) !== 0n ? 'f' : '',
          compressed,
          kernels: isCubin && !compressed ? cubinKernels(section.subarray(e + entryHeader, e + entryHeader + size)) : null,
        });
      }
      e = next;
    }
    off = end;
  }
  return entries;
}

function cubinKernels(cubin: Buffer): string[] | null {
  try {
    return ElfImage.parse(bufferSource(cubin), 'a cubin').definedSymbols(SHT_SYMTAB, STT_FUNC);
  } catch {
    return null;
  }
}
