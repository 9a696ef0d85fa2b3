// Builds tests/emulator/build/libflashmla_emu*.so, the test-only stand-ins for a FlashMLA build,
// when a source is newer than the library. The sources compile once to objects; each variant is a
// link of those objects with its own generated kernel-image table and .nv_fatbin section (which
// GPU code the "build" carries) and its own export list. Safe when several processes build at
// once: each writes to its own temporary name and renames it into place.
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '..', '..');
const bindingDir = join(root, 'binding');
/**
 * FLASHMLA_EMU_SANITIZE=address builds with AddressSanitizer into build-asan/ instead, so the
 * normal libraries are untouched; node must then run with the ASan runtime in LD_PRELOAD.
 */
const sanitize = process.env.FLASHMLA_EMU_SANITIZE === 'address' ? ['-fsanitize=address', '-fno-omit-frame-pointer', '-g'] : [];
const outDir = join(here, sanitize.length > 0 ? 'build-asan' : 'build');
const objDir = join(outDir, 'obj');
/** The self-test driver is a separate program, not part of the library. */
const driverSource = 'selftest.cc';
/** The CUDA toolkit's headers, when installed: runtime_structs.cc then uses the real structs. */
const cudaInclude = ['/usr/local/cuda/include', '/usr/include'].find((d) => existsSync(join(d, 'driver_types.h')) && existsSync(join(d, 'cuda_runtime_api.h'))) ?? null;

/**
 * The mangled names of the kernels each launcher starts, as a real FlashMLA build (9241ae3) names
 * them in its cubins; the generated fatbin carries one cubin per target naming them.
 */
const KERNELS = {
  dense_bf16: '_ZN4sm9028flash_fwd_splitkv_mla_kernelI6TraitsIN7cutlass10bfloat16_tEE9TmaParamsEEvRK21DenseAttnDecodeParams',
  dense_fp16: '_ZN4sm9028flash_fwd_splitkv_mla_kernelI6TraitsIN7cutlass6half_tEE9TmaParamsEEvRK21DenseAttnDecodeParams',
  sm90_sparse_v32_h64: '_ZN4sm906decode10sparse_fp839flash_fwd_splitkv_mla_fp8_sparse_kernelINS1_14KernelTemplateIL9ModelType0ELi64EEENS5_9TmaParamsEEEvT0_',
  sm90_sparse_v32_h128: '_ZN4sm906decode10sparse_fp839flash_fwd_splitkv_mla_fp8_sparse_kernelINS1_14KernelTemplateIL9ModelType0ELi128EEENS5_9TmaParamsEEEvT0_',
  sm90_sparse_model1_h64: '_ZN4sm906decode10sparse_fp839flash_fwd_splitkv_mla_fp8_sparse_kernelINS1_14KernelTemplateIL9ModelType1ELi64EEENS5_9TmaParamsEEEvT0_',
  sm90_sparse_model1_h128: '_ZN4sm906decode10sparse_fp839flash_fwd_splitkv_mla_fp8_sparse_kernelINS1_14KernelTemplateIL9ModelType1ELi128EEENS5_9TmaParamsEEEvT0_',
  sm100_head64_v32: '_ZN5sm1006decode6head6439flash_fwd_splitkv_mla_fp8_sparse_kernelINS1_14KernelTemplateIL9ModelType0EEENS5_9TmaParamsEEEvT0_',
  sm100_head64_model1: '_ZN5sm1006decode6head6439flash_fwd_splitkv_mla_fp8_sparse_kernelINS1_14KernelTemplateIL9ModelType1EEENS5_9TmaParamsEEEvT0_',
  sm100_head128_model1: '_ZN5sm10018fwd_for_small_topk7head12839flash_fwd_splitkv_mla_fp8_sparse_kernelINS1_14KernelTemplateIL17SparseAttnFwdMode1ELi512EEEEEvNT_4ArgTENS6_9TmaParamsE',
  combine_bf16: '_ZN4smxx6decode28flash_fwd_mla_combine_kernelIN7cutlass10bfloat16_tELi512ELi8ELi32ELi256EEEv13CombineParams',
  combine_fp16: '_ZN4smxx6decode28flash_fwd_mla_combine_kernelIN7cutlass6half_tELi512ELi8ELi32ELi256EEEv13CombineParams',
  sched_meta: '_ZN4smxx6decode23get_mla_metadata_kernelE24GetDecodeSchedMetaParams',
  // Sparse prefill. The real names go on with the TmaParams<…> template arguments (CuTe types),
  // shortened here as in the decode names above; flashmla-node matches the part before them.
  sm90_prefill_k512: '_ZN4sm903fwd22sparse_attn_fwd_kernelINS0_14KernelTemplateILi512ELb0EEENS2_9TmaParamsEEEv19SparseAttnFwdParamsT0_',
  sm90_prefill_k512_topklen: '_ZN4sm903fwd22sparse_attn_fwd_kernelINS0_14KernelTemplateILi512ELb1EEENS2_9TmaParamsEEEv19SparseAttnFwdParamsT0_',
  sm90_prefill_k576: '_ZN4sm903fwd22sparse_attn_fwd_kernelINS0_14KernelTemplateILi576ELb0EEENS2_9TmaParamsEEEv19SparseAttnFwdParamsT0_',
  sm90_prefill_k576_topklen: '_ZN4sm903fwd22sparse_attn_fwd_kernelINS0_14KernelTemplateILi576ELb1EEENS2_9TmaParamsEEEv19SparseAttnFwdParamsT0_',
  sm100_prefill_h64_k512: '_ZN5sm1003fwd6head6422sparse_attn_fwd_kernelILb0ENS1_9TmaParamsEEEv19SparseAttnFwdParamsT0_',
  sm100_prefill_h64_k576: '_ZN5sm1003fwd6head6422sparse_attn_fwd_kernelILb1ENS1_9TmaParamsEEEv19SparseAttnFwdParamsT0_',
  sm100_prefill_h128_k512: '_ZN5sm1003fwd7head12822sparse_attn_fwd_kernelINS1_14KernelTemplateILi512EEENS1_9TmaParamsEEEv19SparseAttnFwdParamsT0_',
  sm100_prefill_h128_k576: '_ZN5sm1003fwd7head12822sparse_attn_fwd_kernelINS1_14KernelTemplateILi576EEENS1_9TmaParamsEEEv19SparseAttnFwdParamsT0_',
  sm100_prefill_small_topk: '_ZN5sm10018fwd_for_small_topk7head12837sparse_attn_fwd_for_small_topk_kernelINS1_14KernelTemplateIL17SparseAttnFwdMode0ELi512EEEEEvNT_4ArgTENS6_9TmaParamsE',
};

/** FlashMLA's setup.py targets: sm_100f and sm_90a cubins for every translation unit. */
const DEFAULT_TARGETS = ['sm_90a', 'sm_100f'];

/** The decode launchers: dense, sparse, the head128 <DecodeWithSplitKV, 512> instantiation, combine, scheduler. */
const DECODE_LAUNCHERS = ['_ZN4sm9028run_flash_splitkv_mla_kernel*', '_ZN4sm906decode*', '_ZN5sm1006decode*',
  '_ZN5sm10018fwd_for_small_topk7head12836run_fwd_for_small_topk_phase1_kernelIL17SparseAttnFwdMode1E*', '_ZN4smxx*'];

const EXPORTS = {
  /** The launchers (namespaces sm90, sm100, smxx) and the C runtime functions. */
  all: ['cuda*', '_ZN4sm90*', '_ZN5sm100*', '_ZN4smxx*'],
  /** A shared library that is no FlashMLA build of ours: none of the launchers. */
  'no-launchers': ['cuda*'],
  /** Like a build linked with the static CUDA runtime: launchers, but no cuda* function. */
  'no-runtime': ['_ZN4sm90*', '_ZN5sm100*', '_ZN4smxx*'],
  /** A build with the 12 decode launchers but none of the 9 sparse prefill launchers. */
  'no-prefill': ['cuda*', ...DECODE_LAUNCHERS],
};

async function mtime(path) {
  try {
    return (await stat(path)).mtimeMs;
  } catch {
    return -1;
  }
}

async function librarySources() {
  const names = (await readdir(here)).filter((n) => n.endsWith('.cc') && n !== driverSource).sort();
  return names.map((n) => join(here, n));
}

async function headers() {
  const own = (await readdir(here)).filter((n) => n.endsWith('.h')).map((n) => join(here, n));
  return [...own, ...['flashmla_params.h', 'cuda_runtime_abi.h', 'flashmla_symbols.h'].map((n) => join(bindingDir, n)), fileURLToPath(import.meta.url)];
}

async function compile(args, output) {
  const tmp = `${output}.${process.pid}.${Date.now()}.tmp`;
  try {
    await run('g++', [...args, '-o', tmp], { maxBuffer: 16 * 1024 * 1024 });
    await rename(tmp, output);
  } catch (err) {
    await rm(tmp, { force: true });
    const e = /** @type {{ stderr?: string, message: string }} */ (err);
    throw new Error(`building the FlashMLA emulator failed:\n${e.stderr ?? e.message}`);
  }
}

/** Compiles each library source to an object when it or a header changed; returns the objects. */
async function objects() {
  await mkdir(objDir, { recursive: true });
  const sources = await librarySources();
  const newestHeader = Math.max(...(await Promise.all((await headers()).map(mtime))));
  const flags = ['-std=c++20', '-O2', '-fPIC', '-fvisibility=hidden', '-Wall', '-Wextra', ...sanitize, '-I', bindingDir, '-I', here];
  const outs = [];
  const pending = [];
  for (const src of sources) {
    const name = src.slice(here.length + 1).replace(/\.cc$/, '.o');
    const out = join(objDir, name);
    outs.push(out);
    if ((await mtime(out)) >= Math.max(newestHeader, await mtime(src))) continue;
    const extra = name === 'runtime_structs.o' && cudaInclude !== null ? ['-DEMU_CUDA_HEADERS', '-isystem', cudaInclude] : [];
    pending.push(() => compile([...flags, ...extra, '-c', src], out));
  }
  // Two at a time: the machines this runs on have two cores.
  for (let i = 0; i < pending.length; i += 2) await Promise.all(pending.slice(i, i + 2).map((f) => f()));
  return outs;
}

// ---- the generated .nv_fatbin --------------------------------------------------------------

/** A minimal ELF64 cubin whose symbol table names `kernel` as a function (what the binding reads). */
function cubin(kernel) {
  const strtab = Buffer.from(`\0${kernel}\0`, 'latin1');
  const shstrtab = Buffer.from('\0.text\0.symtab\0.strtab\0.shstrtab\0', 'latin1');
  const symtab = Buffer.alloc(48);
  symtab.writeUInt32LE(1, 24); // st_name
  symtab[28] = 0x12; // STB_GLOBAL, STT_FUNC
  symtab.writeUInt16LE(1, 30); // st_shndx: .text
  const text = Buffer.alloc(16);
  const parts = [text, symtab, strtab, shstrtab];
  const offsets = [];
  let at = 64;
  for (const p of parts) {
    offsets.push(at);
    at += p.length;
  }
  const shoff = (at + 7) & ~7;
  const header = Buffer.alloc(64);
  header.writeUInt32BE(0x7f454c46, 0);
  header[4] = 2; // ELFCLASS64
  header[5] = 1; // little-endian
  header[6] = 1;
  header.writeUInt16LE(2, 16); // ET_EXEC
  header.writeUInt16LE(190, 18); // EM_CUDA
  header.writeBigUInt64LE(BigInt(shoff), 0x28);
  header.writeUInt16LE(64, 0x34);
  header.writeUInt16LE(64, 0x3a);
  header.writeUInt16LE(5, 0x3c);
  header.writeUInt16LE(4, 0x3e);
  const sh = Buffer.alloc(64 * 5);
  const section = (i, name, type, off, size, link, entsize) => {
    const o = i * 64;
    sh.writeUInt32LE(name, o);
    sh.writeUInt32LE(type, o + 4);
    sh.writeBigUInt64LE(BigInt(off), o + 0x18);
    sh.writeBigUInt64LE(BigInt(size), o + 0x20);
    sh.writeUInt32LE(link, o + 0x28);
    sh.writeBigUInt64LE(BigInt(entsize), o + 0x38);
  };
  section(1, 1, 1, offsets[0], text.length, 0, 0); // .text, PROGBITS
  section(2, 7, 2, offsets[1], symtab.length, 3, 24); // .symtab → .strtab
  section(3, 15, 3, offsets[2], strtab.length, 0, 0); // .strtab
  section(4, 23, 3, offsets[3], shstrtab.length, 0, 0); // .shstrtab
  return Buffer.concat([header, ...parts, Buffer.alloc(shoff - at), sh]);
}

/** One fatbin entry (a cubin, or PTX marked compressed) for an nvcc target such as sm_90a or compute_100f. */
function entry(target, kernel) {
  const m = /^(sm|compute)_(\d+)([af]?)$/.exec(target);
  if (m === null) throw new Error(`unknown target ${target}`);
  const ptx = m[1] === 'compute';
  const payload = ptx ? Buffer.from('(\xb5/\xfd compressed PTX stand-in\0', 'latin1') : cubin(kernel);
  const padded = Buffer.concat([payload, Buffer.alloc((8 - (payload.length % 8)) % 8)]);
  const h = Buffer.alloc(64);
  h.writeUInt16LE(ptx ? 1 : 2, 0);
  h.writeUInt16LE(0x0101, 2);
  h.writeUInt32LE(64, 4);
  h.writeBigUInt64LE(BigInt(padded.length), 8);
  h.writeUInt32LE(Number(m[2]), 28);
  let flags = 0x11n;
  if (m[3] === 'a') flags |= 0x100000n;
  if (m[3] === 'f') flags |= 0x200000n;
  if (ptx) flags |= 0x8000n;
  h.writeBigUInt64LE(flags, 40);
  return Buffer.concat([h, padded]);
}

/** One container per launcher (as nvcc makes one per translation unit), each holding its targets. */
function fatbin(targetsOf) {
  const containers = Object.entries(KERNELS).filter(([key]) => targetsOf(key).length > 0).map(([key, kernel]) => {
    const entries = Buffer.concat(targetsOf(key).map((t) => entry(t, kernel)));
    const h = Buffer.alloc(16);
    h.writeUInt32LE(0xba55ed50, 0);
    h.writeUInt16LE(1, 4);
    h.writeUInt16LE(16, 6);
    h.writeBigUInt64LE(BigInt(entries.length), 8);
    return Buffer.concat([h, entries]);
  });
  return Buffer.concat(containers);
}

/** The variant's generated translation unit: the kernel-image table and the .nv_fatbin bytes. */
function imagesSource(variant) {
  // A build without the prefill launchers has no prefill kernels either.
  const absent = (key) => variant.exports === 'no-prefill' && key.includes('_prefill_');
  const targetsOf = (key) => variant.kernelTargets?.[key] ?? (absent(key) ? [] : variant.targets ?? DEFAULT_TARGETS);
  const table = Object.keys(KERNELS).map((k) => `  {"${k}", "${targetsOf(k).join(',')}"},`).join('\n');
  const fatbinMode = variant.fatbin ?? 'ok';
  const bytes = fatbinMode === 'ok' ? fatbin(targetsOf) : fatbinMode === 'corrupt' ? Buffer.from('not a fatbin container, just bytes', 'latin1') : null;
  const section = bytes === null ? '' :
    `__attribute__((used, section(".nv_fatbin"), aligned(8))) static const unsigned char kFatbin[] = {${[...bytes].join(',')}};\n`;
  return `// Generated by tests/emulator/build.mjs for the variant "${variant.name ?? 'default'}".
#include "kernel_images.h"
namespace emu {
extern const KernelImage kKernelImages[] = {
${table}
  {nullptr, nullptr},
};
}  // namespace emu
${section}`;
}

/**
 * A stand-in FlashMLA build with chosen GPU code and exports.
 * @typedef {object} EmulatorVariant
 * @property {string} [name] library file name suffix: libflashmla_emu-<name>.so
 * @property {string[]} [targets] nvcc targets of every kernel (default sm_90a, sm_100f, as FlashMLA's setup.py)
 * @property {Record<string, string[]>} [kernelTargets] per launcher key, targets that replace `targets`
 * @property {'all' | 'no-launchers' | 'no-runtime' | 'no-prefill'} [exports] 'no-launchers': none of the 21 entry points; 'no-runtime': like a static CUDA runtime; 'no-prefill': the 12 decode launchers only
 * @property {'ok' | 'none' | 'corrupt'} [fatbin] no .nv_fatbin section, or an unreadable one
 */

/**
 * Compiles the emulator if needed and returns the absolute path of the library. Without a variant:
 * `libflashmla_emu.so`, a full build (all launchers, shared runtime, sm_90a and sm_100f code).
 * A variant `{ name, targets?, kernelTargets?, exports?, fatbin? }` gives `libflashmla_emu-<name>.so`:
 * `targets` the nvcc targets of every kernel, `kernelTargets` per-launcher overrides,
 * `exports` 'all' | 'no-launchers' | 'no-runtime' | 'no-prefill', `fatbin` 'ok' | 'none' | 'corrupt'.
 * @param {EmulatorVariant} [variant]
 * @returns {Promise<string>}
 */
export async function buildEmulator(variant = {}) {
  const name = variant.name === undefined ? 'libflashmla_emu.so' : `libflashmla_emu-${variant.name}.so`;
  const output = join(outDir, name);
  const objs = await objects();
  const source = imagesSource(variant);
  const sourceFile = join(outDir, `${name}.images.cc`);
  const newest = Math.max(...(await Promise.all(objs.map(mtime))));
  const existing = await mtime(output);
  const sameSource = existsSync(sourceFile) && readFileSync(sourceFile, 'utf8') === source;
  if (existing >= newest && sameSource) return output;
  const tmpSource = `${sourceFile}.${process.pid}.${Date.now()}.tmp.cc`;
  await writeFile(tmpSource, source);
  const mapFile = `${tmpSource}.map`;
  const globals = EXPORTS[variant.exports ?? 'all'];
  await writeFile(mapFile, `{\n  global:\n${globals.map((g) => `    ${g};`).join('\n')}\n  local:\n    *;\n};\n`);
  try {
    await compile(['-std=c++20', '-O2', '-fPIC', '-shared', '-fvisibility=hidden', ...sanitize, '-I', bindingDir, '-I', here,
      ...objs, tmpSource, `-Wl,--version-script=${mapFile}`, '-lm', '-pthread'], output);
    await rename(tmpSource, sourceFile);
  } finally {
    await rm(tmpSource, { force: true });
    await rm(mapFile, { force: true });
  }
  return output;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  buildEmulator().then(
    (path) => console.log(path),
    (err) => {
      console.error(err instanceof Error ? err.message : err);
      process.exit(1);
    },
  );
}
