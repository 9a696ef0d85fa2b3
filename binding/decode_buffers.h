// What the main-kernel and combine steps of a decode read and write: the device addresses of the
// operands and of the workspaces the earlier steps laid out (decode.cc).
#pragma once

#include <cstdint>

#include "decode.h"
#include "flashmla_params.h"

namespace fmla {

struct DecodeBuffers {
  uint8_t* ptr[kOperandCount] = {};  // device address of each operand (uploaded or resident)
  uint8_t* q = nullptr;              // q, or its regrouped copy
  int64_t qStrides[3] = {0, 0, 0};   // of `q` as the kernels see it (batch, row, head)
  uint8_t* out = nullptr;            // where the kernels write out (the public tensor or a raw copy)
  float* lse = nullptr;              // where the kernels write lse
  float* lseAccum = nullptr;
  float* oAccum = nullptr;
  DecodingSchedMeta* meta = nullptr;
  int* numSplits = nullptr;
  std::size_t totalSplits = 0;       // T = b + P
  void* stream = nullptr;
};

// The fields that SparseAttnDecodeParams and CombineParams share by name: the query shape, lse
// (b, s_q, h_q) and out (b, s_q, h_q, 512) contiguous, one accumulator slice per split, the
// scheduler metadata and the stream (docs/flashmla-interface.md#combine).
template <class Params>
void fillSplitOutputs(Params& p, const DecodeRequest& r, const DecodeBuffers& d) {
  const int hq512 = r.hQ * 512;
  p.b = r.b;
  p.s_q = r.sQ;
  p.h_q = r.hQ;
  p.d_v = r.dV;
  p.stride_lse_b = r.sQ * r.hQ;
  p.stride_lse_s_q = r.hQ;
  p.stride_o_b = r.sQ * hq512;
  p.stride_o_s_q = hq512;
  p.stride_o_h_q = 512;
  p.lse_accum = d.lseAccum;
  p.o_accum = d.oAccum;
  p.stride_lse_accum_split = r.sQ * r.hQ;
  p.stride_lse_accum_s_q = r.hQ;
  p.stride_o_accum_split = r.sQ * hq512;
  p.stride_o_accum_s_q = hq512;
  p.stride_o_accum_h_q = 512;
  p.tile_scheduler_metadata_ptr = d.meta;
  p.num_splits_ptr = d.numSplits;
  p.num_sm_parts = r.numSmParts;
  p.stream = d.stream;
}

// Fills DenseAttnDecodeParams and runs the dense launcher (dense_launch.cc,
// docs/flashmla-interface.md#dense-params-filling).
void launchDense(const DeviceContext& ctx, const DecodeRequest& r, const DecodeBuffers& d);

// Fills SparseAttnDecodeParams and runs the sparse launcher, twice for "head64 ×2" (sparse_launch.cc,
// docs/flashmla-interface.md#sparse-params-filling).
void launchSparse(const DeviceContext& ctx, const DecodeRequest& r, const DecodeBuffers& d);

}  // namespace fmla
