#include <cstring>

#include "decode_buffers.h"
#include "launcher_call.h"

namespace fmla {

using flashmla_abi::Launcher;

void launchSparse(const DeviceContext& ctx, const DecodeRequest& r, const DecodeBuffers& d) {
  // docs/flashmla-interface.md#sparse-host-layer SparseAttnDecodeParams filling.
  SparseAttnDecodeParams p;
  std::memset(&p, 0, sizeof p);
  fillSplitOutputs(p, r, d);
  p.h_kv = 1;
  p.d_qk = r.dQK;
  p.sm_scale = r.scale;
  p.sm_scale_div_log2 = r.scaleLog2;
  p.num_blocks = r.numBlocks;
  p.page_block_size = r.pageBlockSize;
  p.topk = r.topk;
  p.model_type = r.dQK == 576 ? V32 : MODEL1;
  p.q = reinterpret_cast<cutlass::bfloat16_t*>(d.q);
  p.kv = reinterpret_cast<cutlass::bfloat16_t*>(d.ptr[kKv]);
  p.indices = reinterpret_cast<int*>(d.ptr[kIndices]);
  p.topk_length = reinterpret_cast<int*>(d.ptr[kTopkLength]);
  p.attn_sink = reinterpret_cast<float*>(d.ptr[kAttnSink]);
  p.lse = d.lse;
  p.out = reinterpret_cast<cutlass::bfloat16_t*>(d.out);
  p.extra_num_blocks = r.extraNumBlocks;
  p.extra_page_block_size = r.extraPageBlockSize;
  p.extra_topk = r.extraTopk;
  p.extra_kv = reinterpret_cast<cutlass::bfloat16_t*>(d.ptr[kExtraKv]);
  p.extra_indices = reinterpret_cast<int*>(d.ptr[kExtraIndices]);
  p.extra_topk_length = reinterpret_cast<int*>(d.ptr[kExtraTopkLength]);
  p.stride_q_b = static_cast<int>(r.qStrides[0]);
  p.stride_q_s_q = static_cast<int>(r.qStrides[1]);
  p.stride_q_h_q = static_cast<int>(r.qStrides[2]);
  p.stride_kv_block = r.strideKvBlock;
  p.stride_kv_row = r.strideKvRow;
  p.stride_indices_b = r.strideIndices[0];
  p.stride_indices_s_q = r.strideIndices[1];
  p.stride_extra_kv_block = r.strideExtraKvBlock;
  p.stride_extra_kv_row = r.strideExtraKvRow;
  p.stride_extra_indices_b = r.strideExtraIndices[0];
  p.stride_extra_indices_s_q = r.strideExtraIndices[1];
  if (!r.twice) {
    callLauncher(ctx, r.main, p);
  } else {
    // docs/flashmla-interface.md#sparse-host-layer "Head64 ×2": heads 0–63 then 64–127, shifted pointers, shared sched meta.
    for (int start : {0, 64}) {
      SparseAttnDecodeParams half = p;
      half.q = p.q + static_cast<int64_t>(start) * p.stride_q_h_q;
      if (p.attn_sink != nullptr) half.attn_sink = p.attn_sink + start;
      half.lse = p.lse + start;
      half.out = p.out + static_cast<int64_t>(start) * p.stride_o_h_q;
      half.lse_accum = p.lse_accum + start;
      half.o_accum = p.o_accum + static_cast<int64_t>(start) * p.stride_o_accum_h_q;
      half.h_q = 64;
      callLauncher(ctx, r.main, half);
    }
  }
}

}  // namespace fmla
