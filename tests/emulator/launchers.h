// FlashMLA's decode and sparse prefill launchers, declared exactly as FlashMLA declares them (same namespaces,
// template parameters and parameter types) so that their explicit instantiations carry the
// mangled names of binding/flashmla_symbols.h (docs/flashmla-interface.md#mangled-names). EMU_EXPORT gives them default
// visibility (the library builds with -fvisibility=hidden): these are its exports.
#pragma once

#include <type_traits>

#include "abi.h"

#define EMU_EXPORT __attribute__((visibility("default")))

// docs/flashmla-interface.md#mangled-names "Surprise": the head128 launcher takes the dependent alias, so its mangled name spells
// the unresolved std::conditional<is_decode_v<T_>, ...>::type.
template <SparseAttnFwdMode M> constexpr bool is_decode_v = M == SparseAttnFwdMode::DecodeWithSplitKV;
template <SparseAttnFwdMode M>
using SparseFwdArgT = std::conditional_t<is_decode_v<M>, SparseAttnDecodeParams, SparseAttnFwdParams>;

namespace sm90 {
template <typename InputT> EMU_EXPORT void run_flash_splitkv_mla_kernel(DenseAttnDecodeParams& params);
}  // namespace sm90

namespace sm90::decode::sparse_fp8 {
template <ModelType MODEL_TYPE, int NUM_HEADS>
EMU_EXPORT void run_flash_splitkv_mla_fp8_sparse_kernel(const SparseAttnDecodeParams& params);
}  // namespace sm90::decode::sparse_fp8

namespace sm100::decode::head64 {
template <ModelType MODEL_TYPE> EMU_EXPORT void run_flash_splitkv_mla_fp8_sparse_kernel(const SparseAttnDecodeParams& params);
}  // namespace sm100::decode::head64

namespace sm100::fwd_for_small_topk::head128 {
template <SparseAttnFwdMode FWD_MODE, int D_QK>
EMU_EXPORT void run_fwd_for_small_topk_phase1_kernel(const SparseFwdArgT<FWD_MODE>& params);
}  // namespace sm100::fwd_for_small_topk::head128

// Sparse prefill (docs/flashmla-interface.md#sparse-prefill); the small-topk prefill launcher is the
// <SparseAttnFwdMode::Prefill, 512> specialization of the head128 template above.
namespace sm90::fwd {
template <int D_QK, bool HAVE_TOPK_LENGTH> EMU_EXPORT void run_fwd_phase1_kernel(const SparseAttnFwdParams& params);
}  // namespace sm90::fwd

namespace sm100::fwd::head64 {
template <int D_QK> EMU_EXPORT void run_fwd_phase1_kernel(const SparseAttnFwdParams& params);
}  // namespace sm100::fwd::head64

namespace sm100::fwd::head128 {
template <int D_QK> EMU_EXPORT void run_fwd_phase1_kernel(const SparseAttnFwdParams& params);
}  // namespace sm100::fwd::head128

namespace smxx::decode {
template <typename ElementT> EMU_EXPORT void run_flash_mla_combine_kernel(CombineParams& params);
EMU_EXPORT void run_get_decoding_sched_meta_kernel(GetDecodeSchedMetaParams& params);
}  // namespace smxx::decode
