// FlashMLA's decode parameter structs, re-declared from docs/flashmla-interface.md#struct-layouts (x86-64 Linux ABI, FlashMLA
// commit 9241ae3). This header is the one place that knows these layouts; every offset and size
// is pinned by static_assert so a drift fails the build instead of corrupting a launch.
// Nothing here includes a CUDA header: CUDA handle types are opaque pointers.
#pragma once

#include <cstddef>
#include <cstdint>

namespace flashmla_abi {
using cudaStream_t = void*;  // CUstream_st*, pointer-sized (docs/flashmla-interface.md#struct-layouts preamble)
}  // namespace flashmla_abi

// The launcher symbols are mangled with these exact global names (docs/flashmla-interface.md#launcher-symbols), so the structs live in
// the global namespace like FlashMLA's.

// docs/flashmla-interface.md#struct-enums
enum ModelType : int { V32 = 0, MODEL1 = 1 };
enum SparseAttnFwdMode : int { Prefill = 0, DecodeWithSplitKV = 1 };

// docs/flashmla-interface.md#struct-decoding-sched-meta — sizeof 32, alignof 32 (DecodingSchedMetaSize = 32).
struct alignas(32) DecodingSchedMeta {
  int begin_req_idx;
  int end_req_idx;
  int begin_block_idx;
  int end_block_idx;
  int begin_split_idx;
  int is_first_req_splitted;
  int is_last_req_splitted;
  int _pad[1];
};

// docs/flashmla-interface.md#struct-dense-params — sizeof 240, alignof 8.
struct DenseAttnDecodeParams {
  using index_t = int64_t;
  int b;
  int s_q;
  int q_seq_per_hk;
  int d;
  int d_v;
  int h_q;
  int h_k;
  int num_blocks;
  int q_head_per_hk;
  bool is_causal;
  float scale_softmax;
  float scale_softmax_log2;
  void* __restrict__ q_ptr;
  void* __restrict__ k_ptr;
  void* __restrict__ o_ptr;
  float* __restrict__ softmax_lse_ptr;
  index_t q_batch_stride;
  index_t k_batch_stride;
  index_t o_batch_stride;
  index_t q_row_stride;
  index_t k_row_stride;
  index_t o_row_stride;
  index_t q_head_stride;
  index_t k_head_stride;
  index_t o_head_stride;
  int* __restrict__ block_table;
  index_t block_table_batch_stride;
  int page_block_size;
  int* __restrict__ seqlens_k_ptr;
  DecodingSchedMeta* __restrict__ tile_scheduler_metadata_ptr;
  int num_sm_parts;
  int* __restrict__ num_splits_ptr;
  int total_num_splits;
  float* __restrict__ softmax_lseaccum_ptr;
  float* __restrict__ oaccum_ptr;
  flashmla_abi::cudaStream_t stream;
};

// Stand-ins for cutlass::bfloat16_t / half_t: only their names matter (mangling, docs/flashmla-interface.md#mangled-names).
namespace cutlass {
struct bfloat16_t { uint16_t storage; };
struct half_t { uint16_t storage; };
}  // namespace cutlass

// docs/flashmla-interface.md#struct-sparse-params — sizeof 280, alignof 8.
struct SparseAttnDecodeParams {
  int b;
  int s_q;
  int h_q;
  int h_kv;
  int d_qk;
  int d_v;
  float sm_scale;
  float sm_scale_div_log2;
  int num_blocks;
  int page_block_size;
  int topk;
  ModelType model_type;
  cutlass::bfloat16_t* __restrict__ q;
  cutlass::bfloat16_t* __restrict__ kv;  // raw FP8 bytes
  int* __restrict__ indices;
  int* __restrict__ topk_length;
  float* __restrict__ attn_sink;
  float* __restrict__ lse;
  cutlass::bfloat16_t* __restrict__ out;
  int extra_num_blocks;
  int extra_page_block_size;
  int extra_topk;
  cutlass::bfloat16_t* __restrict__ extra_kv;
  int* __restrict__ extra_indices;
  int* __restrict__ extra_topk_length;
  int stride_q_b;
  int stride_q_s_q;
  int stride_q_h_q;
  int stride_kv_block;
  int stride_kv_row;
  int stride_indices_b;
  int stride_indices_s_q;
  int stride_lse_b;
  int stride_lse_s_q;
  int stride_o_b;
  int stride_o_s_q;
  int stride_o_h_q;
  int stride_extra_kv_block;
  int stride_extra_kv_row;
  int stride_extra_indices_b;
  int stride_extra_indices_s_q;
  flashmla_abi::cudaStream_t stream;
  float* __restrict__ lse_accum;
  float* __restrict__ o_accum;
  int stride_lse_accum_split;
  int stride_lse_accum_s_q;
  int stride_o_accum_split;
  int stride_o_accum_s_q;
  int stride_o_accum_h_q;
  DecodingSchedMeta* __restrict__ tile_scheduler_metadata_ptr;
  int* __restrict__ num_splits_ptr;
  int num_sm_parts;
};

// docs/flashmla-interface.md#struct-combine-params — sizeof 136, alignof 8.
struct CombineParams {
  int b;
  int s_q;
  int h_q;
  int d_v;
  float* __restrict__ lse;
  void* __restrict__ out;
  int stride_lse_b;
  int stride_lse_s_q;
  int stride_o_b;
  int stride_o_s_q;
  int stride_o_h_q;
  float* __restrict__ lse_accum;
  float* __restrict__ o_accum;
  int stride_lse_accum_split;
  int stride_lse_accum_s_q;
  int stride_o_accum_split;
  int stride_o_accum_s_q;
  int stride_o_accum_h_q;
  DecodingSchedMeta* __restrict__ tile_scheduler_metadata_ptr;
  int* __restrict__ num_splits_ptr;
  int num_sm_parts;
  float* attn_sink;
  flashmla_abi::cudaStream_t stream;
};

// docs/flashmla-interface.md#struct-sched-meta-params — sizeof 80, alignof 8.
struct GetDecodeSchedMetaParams {
  int b;
  int s_q;
  int block_size_n;
  int fixed_overhead_num_blocks;
  int topk;
  int extra_topk;
  int* __restrict__ topk_length;
  int* __restrict__ extra_topk_length;
  int* __restrict__ seqlens_k_ptr;
  DecodingSchedMeta* __restrict__ tile_scheduler_metadata_ptr;
  int* __restrict__ num_splits_ptr;
  int num_sm_parts;
  flashmla_abi::cudaStream_t stream;
};

// docs/flashmla-interface.md#struct-sparse-fwd-params — sizeof 144 (prefill; declared for the head128 symbol's std::conditional, docs/flashmla-interface.md#mangled-names).
struct SparseAttnFwdParams {
  int s_q, s_kv, h_q, h_kv, d_qk, d_v, topk;
  float sm_scale;
  float sm_scale_div_log2;
  cutlass::bfloat16_t* __restrict__ q;
  cutlass::bfloat16_t* __restrict__ kv;
  int* __restrict__ indices;
  float* __restrict__ attn_sink;
  int* __restrict__ topk_length;
  int stride_q_s_q, stride_q_h_q;
  int stride_kv_s_kv, stride_kv_h_kv;
  int stride_indices_s_q, stride_indices_h_kv;
  cutlass::bfloat16_t* __restrict__ out;
  float* __restrict__ max_logits;
  float* __restrict__ lse;
  int num_sm;
  flashmla_abi::cudaStream_t stream;
};

#define FLASHMLA_ABI_FIELD(T, f, off) static_assert(offsetof(T, f) == (off), #T "::" #f " offset (docs/flashmla-interface.md#struct-layouts)")

static_assert(sizeof(DecodingSchedMeta) == 32 && alignof(DecodingSchedMeta) == 32, "docs/flashmla-interface.md#struct-decoding-sched-meta");
FLASHMLA_ABI_FIELD(DecodingSchedMeta, begin_req_idx, 0);
FLASHMLA_ABI_FIELD(DecodingSchedMeta, end_req_idx, 4);
FLASHMLA_ABI_FIELD(DecodingSchedMeta, begin_block_idx, 8);
FLASHMLA_ABI_FIELD(DecodingSchedMeta, end_block_idx, 12);
FLASHMLA_ABI_FIELD(DecodingSchedMeta, begin_split_idx, 16);
FLASHMLA_ABI_FIELD(DecodingSchedMeta, is_first_req_splitted, 20);
FLASHMLA_ABI_FIELD(DecodingSchedMeta, is_last_req_splitted, 24);
FLASHMLA_ABI_FIELD(DecodingSchedMeta, _pad, 28);

static_assert(sizeof(DenseAttnDecodeParams) == 240 && alignof(DenseAttnDecodeParams) == 8, "docs/flashmla-interface.md#struct-dense-params");
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, b, 0);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, s_q, 4);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, q_seq_per_hk, 8);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, d, 12);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, d_v, 16);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, h_q, 20);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, h_k, 24);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, num_blocks, 28);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, q_head_per_hk, 32);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, is_causal, 36);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, scale_softmax, 40);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, scale_softmax_log2, 44);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, q_ptr, 48);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, k_ptr, 56);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, o_ptr, 64);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, softmax_lse_ptr, 72);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, q_batch_stride, 80);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, k_batch_stride, 88);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, o_batch_stride, 96);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, q_row_stride, 104);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, k_row_stride, 112);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, o_row_stride, 120);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, q_head_stride, 128);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, k_head_stride, 136);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, o_head_stride, 144);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, block_table, 152);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, block_table_batch_stride, 160);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, page_block_size, 168);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, seqlens_k_ptr, 176);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, tile_scheduler_metadata_ptr, 184);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, num_sm_parts, 192);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, num_splits_ptr, 200);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, total_num_splits, 208);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, softmax_lseaccum_ptr, 216);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, oaccum_ptr, 224);
FLASHMLA_ABI_FIELD(DenseAttnDecodeParams, stream, 232);

static_assert(sizeof(SparseAttnDecodeParams) == 280 && alignof(SparseAttnDecodeParams) == 8, "docs/flashmla-interface.md#struct-sparse-params");
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, b, 0);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, s_q, 4);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, h_q, 8);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, h_kv, 12);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, d_qk, 16);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, d_v, 20);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, sm_scale, 24);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, sm_scale_div_log2, 28);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, num_blocks, 32);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, page_block_size, 36);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, topk, 40);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, model_type, 44);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, q, 48);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, kv, 56);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, indices, 64);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, topk_length, 72);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, attn_sink, 80);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, lse, 88);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, out, 96);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, extra_num_blocks, 104);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, extra_page_block_size, 108);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, extra_topk, 112);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, extra_kv, 120);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, extra_indices, 128);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, extra_topk_length, 136);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, stride_q_b, 144);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, stride_q_s_q, 148);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, stride_q_h_q, 152);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, stride_kv_block, 156);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, stride_kv_row, 160);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, stride_indices_b, 164);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, stride_indices_s_q, 168);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, stride_lse_b, 172);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, stride_lse_s_q, 176);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, stride_o_b, 180);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, stride_o_s_q, 184);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, stride_o_h_q, 188);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, stride_extra_kv_block, 192);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, stride_extra_kv_row, 196);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, stride_extra_indices_b, 200);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, stride_extra_indices_s_q, 204);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, stream, 208);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, lse_accum, 216);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, o_accum, 224);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, stride_lse_accum_split, 232);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, stride_lse_accum_s_q, 236);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, stride_o_accum_split, 240);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, stride_o_accum_s_q, 244);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, stride_o_accum_h_q, 248);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, tile_scheduler_metadata_ptr, 256);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, num_splits_ptr, 264);
FLASHMLA_ABI_FIELD(SparseAttnDecodeParams, num_sm_parts, 272);

static_assert(sizeof(CombineParams) == 136 && alignof(CombineParams) == 8, "docs/flashmla-interface.md#struct-combine-params");
FLASHMLA_ABI_FIELD(CombineParams, b, 0);
FLASHMLA_ABI_FIELD(CombineParams, s_q, 4);
FLASHMLA_ABI_FIELD(CombineParams, h_q, 8);
FLASHMLA_ABI_FIELD(CombineParams, d_v, 12);
FLASHMLA_ABI_FIELD(CombineParams, lse, 16);
FLASHMLA_ABI_FIELD(CombineParams, out, 24);
FLASHMLA_ABI_FIELD(CombineParams, stride_lse_b, 32);
FLASHMLA_ABI_FIELD(CombineParams, stride_lse_s_q, 36);
FLASHMLA_ABI_FIELD(CombineParams, stride_o_b, 40);
FLASHMLA_ABI_FIELD(CombineParams, stride_o_s_q, 44);
FLASHMLA_ABI_FIELD(CombineParams, stride_o_h_q, 48);
FLASHMLA_ABI_FIELD(CombineParams, lse_accum, 56);
FLASHMLA_ABI_FIELD(CombineParams, o_accum, 64);
FLASHMLA_ABI_FIELD(CombineParams, stride_lse_accum_split, 72);
FLASHMLA_ABI_FIELD(CombineParams, stride_lse_accum_s_q, 76);
FLASHMLA_ABI_FIELD(CombineParams, stride_o_accum_split, 80);
FLASHMLA_ABI_FIELD(CombineParams, stride_o_accum_s_q, 84);
FLASHMLA_ABI_FIELD(CombineParams, stride_o_accum_h_q, 88);
FLASHMLA_ABI_FIELD(CombineParams, tile_scheduler_metadata_ptr, 96);
FLASHMLA_ABI_FIELD(CombineParams, num_splits_ptr, 104);
FLASHMLA_ABI_FIELD(CombineParams, num_sm_parts, 112);
FLASHMLA_ABI_FIELD(CombineParams, attn_sink, 120);
FLASHMLA_ABI_FIELD(CombineParams, stream, 128);

static_assert(sizeof(GetDecodeSchedMetaParams) == 80 && alignof(GetDecodeSchedMetaParams) == 8, "docs/flashmla-interface.md#struct-sched-meta-params");
FLASHMLA_ABI_FIELD(GetDecodeSchedMetaParams, b, 0);
FLASHMLA_ABI_FIELD(GetDecodeSchedMetaParams, s_q, 4);
FLASHMLA_ABI_FIELD(GetDecodeSchedMetaParams, block_size_n, 8);
FLASHMLA_ABI_FIELD(GetDecodeSchedMetaParams, fixed_overhead_num_blocks, 12);
FLASHMLA_ABI_FIELD(GetDecodeSchedMetaParams, topk, 16);
FLASHMLA_ABI_FIELD(GetDecodeSchedMetaParams, extra_topk, 20);
FLASHMLA_ABI_FIELD(GetDecodeSchedMetaParams, topk_length, 24);
FLASHMLA_ABI_FIELD(GetDecodeSchedMetaParams, extra_topk_length, 32);
FLASHMLA_ABI_FIELD(GetDecodeSchedMetaParams, seqlens_k_ptr, 40);
FLASHMLA_ABI_FIELD(GetDecodeSchedMetaParams, tile_scheduler_metadata_ptr, 48);
FLASHMLA_ABI_FIELD(GetDecodeSchedMetaParams, num_splits_ptr, 56);
FLASHMLA_ABI_FIELD(GetDecodeSchedMetaParams, num_sm_parts, 64);
FLASHMLA_ABI_FIELD(GetDecodeSchedMetaParams, stream, 72);

static_assert(sizeof(SparseAttnFwdParams) == 144 && alignof(SparseAttnFwdParams) == 8, "docs/flashmla-interface.md#struct-sparse-fwd-params");
FLASHMLA_ABI_FIELD(SparseAttnFwdParams, sm_scale, 28);
FLASHMLA_ABI_FIELD(SparseAttnFwdParams, q, 40);
FLASHMLA_ABI_FIELD(SparseAttnFwdParams, stride_q_s_q, 80);
FLASHMLA_ABI_FIELD(SparseAttnFwdParams, out, 104);
FLASHMLA_ABI_FIELD(SparseAttnFwdParams, num_sm, 128);
FLASHMLA_ABI_FIELD(SparseAttnFwdParams, stream, 136);

#undef FLASHMLA_ABI_FIELD
