// Mangled names of FlashMLA's decode launchers (docs/flashmla-interface.md#mangled-names, Itanium C++ ABI, libstdc++). The one
// place that knows them: the addon resolves exactly these, and a test checks the CI emulator
// exports exactly these.
#pragma once

namespace flashmla_abi {

enum class Launcher : int {
  DenseBf16 = 0,       // sm90::run_flash_splitkv_mla_kernel<cutlass::bfloat16_t>
  DenseFp16,           // sm90::run_flash_splitkv_mla_kernel<cutlass::half_t> (absent with FLASH_MLA_DISABLE_FP16)
  Sm90SparseV32H64,    // sm90::decode::sparse_fp8::run_flash_splitkv_mla_fp8_sparse_kernel<V32, 64>
  Sm90SparseV32H128,   // <V32, 128>
  Sm90SparseModel1H64, // <MODEL1, 64>
  Sm90SparseModel1H128,// <MODEL1, 128>
  Sm100Head64V32,      // sm100::decode::head64::run_flash_splitkv_mla_fp8_sparse_kernel<V32>
  Sm100Head64Model1,   // <MODEL1>
  Sm100Head128Model1,  // sm100::fwd_for_small_topk::head128::run_fwd_for_small_topk_phase1_kernel<DecodeWithSplitKV, 512>
  CombineBf16,         // smxx::decode::run_flash_mla_combine_kernel<cutlass::bfloat16_t>
  CombineFp16,         // <cutlass::half_t> (absent with FLASH_MLA_DISABLE_FP16)
  SchedMeta,           // smxx::decode::run_get_decoding_sched_meta_kernel
  // Sparse prefill (docs/flashmla-interface.md#prefill-launchers). FlashMLA's own host layer calls
  // these templates directly; sm90::run_fwd_kernel, a dispatcher that throws a C++ exception for
  // other d_qk, is never resolved: an exception must not cross the dlopen boundary.
  Sm90PrefillK512,         // sm90::fwd::run_fwd_phase1_kernel<512, false>
  Sm90PrefillK512TopkLen,  // <512, true> (topk_length given)
  Sm90PrefillK576,         // <576, false>
  Sm90PrefillK576TopkLen,  // <576, true>
  Sm100PrefillH64K512,     // sm100::fwd::head64::run_fwd_phase1_kernel<512>
  Sm100PrefillH64K576,     // <576>
  Sm100PrefillH128K512,    // sm100::fwd::head128::run_fwd_phase1_kernel<512>
  Sm100PrefillH128K576,    // <576>
  Sm100PrefillSmallTopk,   // sm100::fwd_for_small_topk::head128::run_fwd_for_small_topk_phase1_kernel<Prefill, 512>
  Count
};

struct LauncherSymbol {
  Launcher id;
  const char* key;      // short name reported to JavaScript
  const char* mangled;  // docs/flashmla-interface.md#mangled-names
  // docs/flashmla-interface.md#head128-fallback: for the two small-topk instantiations, whose names
  // spell std::conditional_t the way libstdc++ does, the stable part to look for in the dynamic
  // symbol table when the exact name is missing (another standard library); null for the others.
  const char* fallback = nullptr;
};

inline constexpr LauncherSymbol kLauncherSymbols[] = {
    {Launcher::DenseBf16, "dense_bf16",
     "_ZN4sm9028run_flash_splitkv_mla_kernelIN7cutlass10bfloat16_tEEEvR21DenseAttnDecodeParams"},
    {Launcher::DenseFp16, "dense_fp16",
     "_ZN4sm9028run_flash_splitkv_mla_kernelIN7cutlass6half_tEEEvR21DenseAttnDecodeParams"},
    {Launcher::Sm90SparseV32H64, "sm90_sparse_v32_h64",
     "_ZN4sm906decode10sparse_fp839run_flash_splitkv_mla_fp8_sparse_kernelIL9ModelType0ELi64EEEvRK22SparseAttnDecodeParams"},
    {Launcher::Sm90SparseV32H128, "sm90_sparse_v32_h128",
     "_ZN4sm906decode10sparse_fp839run_flash_splitkv_mla_fp8_sparse_kernelIL9ModelType0ELi128EEEvRK22SparseAttnDecodeParams"},
    {Launcher::Sm90SparseModel1H64, "sm90_sparse_model1_h64",
     "_ZN4sm906decode10sparse_fp839run_flash_splitkv_mla_fp8_sparse_kernelIL9ModelType1ELi64EEEvRK22SparseAttnDecodeParams"},
    {Launcher::Sm90SparseModel1H128, "sm90_sparse_model1_h128",
     "_ZN4sm906decode10sparse_fp839run_flash_splitkv_mla_fp8_sparse_kernelIL9ModelType1ELi128EEEvRK22SparseAttnDecodeParams"},
    {Launcher::Sm100Head64V32, "sm100_head64_v32",
     "_ZN5sm1006decode6head6439run_flash_splitkv_mla_fp8_sparse_kernelIL9ModelType0EEEvRK22SparseAttnDecodeParams"},
    {Launcher::Sm100Head64Model1, "sm100_head64_model1",
     "_ZN5sm1006decode6head6439run_flash_splitkv_mla_fp8_sparse_kernelIL9ModelType1EEEvRK22SparseAttnDecodeParams"},
    {Launcher::Sm100Head128Model1, "sm100_head128_model1",
     "_ZN5sm10018fwd_for_small_topk7head12836run_fwd_for_small_topk_phase1_kernelIL17SparseAttnFwdMode1ELi512EEEvRKNSt11conditionalIX11is_decode_vIXT_EEE22SparseAttnDecodeParams19SparseAttnFwdParamsE4typeE",
     "36run_fwd_for_small_topk_phase1_kernelIL17SparseAttnFwdMode1ELi512E"},
    {Launcher::CombineBf16, "combine_bf16",
     "_ZN4smxx6decode28run_flash_mla_combine_kernelIN7cutlass10bfloat16_tEEEvR13CombineParams"},
    {Launcher::CombineFp16, "combine_fp16",
     "_ZN4smxx6decode28run_flash_mla_combine_kernelIN7cutlass6half_tEEEvR13CombineParams"},
    {Launcher::SchedMeta, "sched_meta",
     "_ZN4smxx6decode34run_get_decoding_sched_meta_kernelER24GetDecodeSchedMetaParams"},
    {Launcher::Sm90PrefillK512, "sm90_prefill_k512",
     "_ZN4sm903fwd21run_fwd_phase1_kernelILi512ELb0EEEvRK19SparseAttnFwdParams"},
    {Launcher::Sm90PrefillK512TopkLen, "sm90_prefill_k512_topklen",
     "_ZN4sm903fwd21run_fwd_phase1_kernelILi512ELb1EEEvRK19SparseAttnFwdParams"},
    {Launcher::Sm90PrefillK576, "sm90_prefill_k576",
     "_ZN4sm903fwd21run_fwd_phase1_kernelILi576ELb0EEEvRK19SparseAttnFwdParams"},
    {Launcher::Sm90PrefillK576TopkLen, "sm90_prefill_k576_topklen",
     "_ZN4sm903fwd21run_fwd_phase1_kernelILi576ELb1EEEvRK19SparseAttnFwdParams"},
    {Launcher::Sm100PrefillH64K512, "sm100_prefill_h64_k512",
     "_ZN5sm1003fwd6head6421run_fwd_phase1_kernelILi512EEEvRK19SparseAttnFwdParams"},
    {Launcher::Sm100PrefillH64K576, "sm100_prefill_h64_k576",
     "_ZN5sm1003fwd6head6421run_fwd_phase1_kernelILi576EEEvRK19SparseAttnFwdParams"},
    {Launcher::Sm100PrefillH128K512, "sm100_prefill_h128_k512",
     "_ZN5sm1003fwd7head12821run_fwd_phase1_kernelILi512EEEvRK19SparseAttnFwdParams"},
    {Launcher::Sm100PrefillH128K576, "sm100_prefill_h128_k576",
     "_ZN5sm1003fwd7head12821run_fwd_phase1_kernelILi576EEEvRK19SparseAttnFwdParams"},
    {Launcher::Sm100PrefillSmallTopk, "sm100_prefill_small_topk",
     "_ZN5sm10018fwd_for_small_topk7head12836run_fwd_for_small_topk_phase1_kernelIL17SparseAttnFwdMode0ELi512EEEvRKNSt11conditionalIX11is_decode_vIXT_EEE22SparseAttnDecodeParams19SparseAttnFwdParamsE4typeE",
     "36run_fwd_for_small_topk_phase1_kernelIL17SparseAttnFwdMode0ELi512E"},
};
static_assert(sizeof(kLauncherSymbols) / sizeof(kLauncherSymbols[0]) == static_cast<int>(Launcher::Count));

}  // namespace flashmla_abi
