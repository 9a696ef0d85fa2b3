import type { BuildFile } from './build-file.js';
import { runsOn, targetName, type FatbinEntry } from './fatbin.js';

/**
 * Which of a build's GPU code belongs to which launcher: the mangled names of the `__global__`
 * kernels each FlashMLA launcher starts, as they appear in the cubins of a build of 9241ae3
 * (docs/flashmla-interface.md#kernel-names). A launcher's kernels are the cubin functions that
 * start with `prefix` and contain `contains`.
 */
const KERNELS: Readonly<Record<string, { readonly prefix: string; readonly contains?: string }>> = {
  dense_bf16: { prefix: '_ZN4sm9028flash_fwd_splitkv_mla_kernelI6TraitsIN7cutlass10bfloat16_tEE' },
  dense_fp16: { prefix: '_ZN4sm9028flash_fwd_splitkv_mla_kernelI6TraitsIN7cutlass6half_tEE' },
  sm90_sparse_v32_h64: { prefix: '_ZN4sm906decode10sparse_fp839flash_fwd_splitkv_mla_fp8_sparse_kernelINS1_14KernelTemplateIL9ModelType0ELi64EEE' },
  sm90_sparse_v32_h128: { prefix: '_ZN4sm906decode10sparse_fp839flash_fwd_splitkv_mla_fp8_sparse_kernelINS1_14KernelTemplateIL9ModelType0ELi128EEE' },
  sm90_sparse_model1_h64: { prefix: '_ZN4sm906decode10sparse_fp839flash_fwd_splitkv_mla_fp8_sparse_kernelINS1_14KernelTemplateIL9ModelType1ELi64EEE' },
  sm90_sparse_model1_h128: { prefix: '_ZN4sm906decode10sparse_fp839flash_fwd_splitkv_mla_fp8_sparse_kernelINS1_14KernelTemplateIL9ModelType1ELi128EEE' },
  sm100_head64_v32: { prefix: '_ZN5sm1006decode6head6439flash_fwd_splitkv_mla_fp8_sparse_kernelINS1_14KernelTemplateIL9ModelType0EEE' },
  sm100_head64_model1: { prefix: '_ZN5sm1006decode6head6439flash_fwd_splitkv_mla_fp8_sparse_kernelINS1_14KernelTemplateIL9ModelType1EEE' },
  sm100_head128_model1: { prefix: '_ZN5sm10018fwd_for_small_topk7head128', contains: 'SparseAttnFwdMode1ELi512E' },
  combine_bf16: { prefix: '_ZN4smxx6decode28flash_fwd_mla_combine_kernelIN7cutlass10bfloat16_tE' },
  combine_fp16: { prefix: '_ZN4smxx6decode28flash_fwd_mla_combine_kernelIN7cutlass6half_tE' },
  sched_meta: { prefix: '_ZN4smxx6decode23get_mla_metadata_kernelE' },
  // Sparse prefill (docs/cuda-path.md#prefill). sm90 and sm100 head128 name the kernel by its
  // KernelTemplate<D_QK…>; sm100 head64's kernel takes a bool, D_QK == 576.
  sm90_prefill_k512: { prefix: '_ZN4sm903fwd22sparse_attn_fwd_kernelINS0_14KernelTemplateILi512ELb0EEE' },
  sm90_prefill_k512_topklen: { prefix: '_ZN4sm903fwd22sparse_attn_fwd_kernelINS0_14KernelTemplateILi512ELb1EEE' },
  sm90_prefill_k576: { prefix: '_ZN4sm903fwd22sparse_attn_fwd_kernelINS0_14KernelTemplateILi576ELb0EEE' },
  sm90_prefill_k576_topklen: { prefix: '_ZN4sm903fwd22sparse_attn_fwd_kernelINS0_14KernelTemplateILi576ELb1EEE' },
  sm100_prefill_h64_k512: { prefix: '_ZN5sm1003fwd6head6422sparse_attn_fwd_kernelILb0E' },
  sm100_prefill_h64_k576: { prefix: '_ZN5sm1003fwd6head6422sparse_attn_fwd_kernelILb1E' },
  sm100_prefill_h128_k512: { prefix: '_ZN5sm1003fwd7head12822sparse_attn_fwd_kernelINS1_14KernelTemplateILi512EEE' },
  sm100_prefill_h128_k576: { prefix: '_ZN5sm1003fwd7head12822sparse_attn_fwd_kernelINS1_14KernelTemplateILi576EEE' },
  sm100_prefill_small_topk: { prefix: '_ZN5sm10018fwd_for_small_topk7head128', contains: 'SparseAttnFwdMode0ELi512E' },
};

const isKernelOf = (key: string, name: string): boolean => {
  const k = KERNELS[key];
  return k !== undefined && name.startsWith(k.prefix) && (k.contains === undefined || name.includes(k.contains));
};

const codeCache = new WeakMap<readonly FatbinEntry[], Map<string, readonly FatbinEntry[]>>();

/**
 * The fatbin entries that may hold a launcher's kernels: the cubins that name them, plus every
 * entry whose kernels cannot be read (PTX, compressed cubins), which may hold anything.
 */
export function codeOf(entries: readonly FatbinEntry[], key: string): readonly FatbinEntry[] {
  // Memoised per entry list (one per build file, cached by build-file.ts) and launcher: every
  // CUDA call asks for its launchers, and the answer never changes.
  let byKey = codeCache.get(entries);
  if (byKey === undefined) codeCache.set(entries, (byKey = new Map()));
  let code = byKey.get(key);
  if (code === undefined) {
    code = entries.filter((e) => e.kernels === null || e.kernels.some((n) => isKernelOf(key, n)));
    byKey.set(key, code);
  }
  return code;
}

/** nvcc target names of a set of entries, deduplicated and sorted: `sm_100f, sm_90a`. */
export function targetsOf(entries: readonly FatbinEntry[]): string[] {
  return [...new Set(entries.map(targetName))].sort();
}

/** Per launcher, the targets its kernels are built for (for reports). */
export function targetsByLauncher(file: BuildFile): Record<string, string[]> {
  if (!file.fatbin.ok) return {};
  const entries = file.fatbin.entries;
  return Object.fromEntries(Object.keys(KERNELS).map((k) => [k, targetsOf(codeOf(entries, k))]));
}

/**
 * Why the build has no code for a launcher's kernels on a device of compute capability
 * major.minor, or null when it has. Calling such a launcher fails with "no kernel image is
 * available", and FlashMLA's launchers then exit the process.
 */
export function missingCode(file: BuildFile, key: string, major: number, minor: number): string | null {
  if (!file.fatbin.ok) return file.fatbin.reason;
  const code = codeOf(file.fatbin.entries, key);
  if (code.some((e) => runsOn(e, major, minor))) return null;
  const found = targetsOf(code);
  return `this FlashMLA build has no GPU code for compute capability ${major}.${minor} in its ${key} kernels ` +
    `(they are built for ${found.length > 0 ? found.join(', ') : 'no architecture'})`;
}
