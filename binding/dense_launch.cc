#include <cstring>

#include "decode_buffers.h"
#include "launcher_call.h"

namespace fmla {

void launchDense(const DeviceContext& ctx, const DecodeRequest& r, const DecodeBuffers& d) {
  const int hpk = r.hQ / r.hK;
  const int qSeqPerHk = r.sQ * hpk;
  const int hq512 = r.hQ * 512;
  // docs/flashmla-interface.md#dense-host-layer DenseAttnDecodeParams filling.
  DenseAttnDecodeParams p;
  std::memset(&p, 0, sizeof p);
  p.b = r.b;
  p.s_q = r.sQ;
  p.q_seq_per_hk = qSeqPerHk;
  p.d = r.dQK;
  p.d_v = r.dV;
  p.h_q = r.hQ;
  p.h_k = r.hK;
  p.num_blocks = r.numBlocks;
  p.q_head_per_hk = hpk;
  p.is_causal = r.causal;
  p.scale_softmax = r.scale;
  p.scale_softmax_log2 = r.scaleLog2;
  p.q_ptr = d.q;
  p.k_ptr = d.ptr[kKv];
  p.o_ptr = d.out;
  p.softmax_lse_ptr = d.lse;
  p.q_batch_stride = d.qStrides[0];
  p.q_row_stride = d.qStrides[1];
  p.q_head_stride = d.qStrides[2];
  p.k_batch_stride = r.kStrides[0];
  p.k_row_stride = r.kStrides[1];
  p.k_head_stride = r.kStrides[2];
  p.o_batch_stride = static_cast<int64_t>(r.sQ) * hq512;  // out (b, h_k, q_seq_per_hk, 512) contiguous
  p.o_row_stride = 512;
  p.o_head_stride = static_cast<int64_t>(qSeqPerHk) * 512;
  p.block_table = reinterpret_cast<int*>(d.ptr[kBlockTable]);
  p.block_table_batch_stride = r.blockTableStride;
  p.page_block_size = r.pageBlockSize;
  p.seqlens_k_ptr = reinterpret_cast<int*>(d.ptr[kSeqlens]);
  p.tile_scheduler_metadata_ptr = d.meta;
  p.num_sm_parts = r.numSmParts;
  p.num_splits_ptr = d.numSplits;
  p.total_num_splits = static_cast<int>(d.totalSplits);
  p.softmax_lseaccum_ptr = d.lseAccum;
  p.oaccum_ptr = d.oAccum;
  p.stream = d.stream;
  callLauncher(ctx, r.main, p);
}

}  // namespace fmla
