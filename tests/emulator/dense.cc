// sm90::run_flash_splitkv_mla_kernel<T>: dense BF16/FP16 paged-KV decode (docs/flashmla-interface.md#dense-host-layer, docs/flashmla-interface.md#dense-semantics,
// docs/flashmla-interface.md#tma-alignment, docs/flashmla-interface.md#split-kv, docs/flashmla-interface.md#dense-kernel-assumptions). Follows the tile-scheduler metadata part by part like the kernel's
// persistent CTAs: each part handles requests begin..end, the block range the metadata gives, and
// writes out/lse directly for an unsplit request or its split's o_accum/lse_accum rows otherwise.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "launch.h"
#include "launchers.h"
#include "numeric.h"
#include "softmax.h"
#include "tma.h"

namespace emu {
namespace {

constexpr int kD = 576;       // HEAD_DIM_K
constexpr int kDv = 512;      // HEAD_DIM_V
constexpr int kPage = 64;     // PAGE_BLOCK_SIZE (the kernel hard-codes it)

template <class T> struct DenseKernel {
  KernelScope& k;
  const DenseAttnDecodeParams& p;

  const std::uint16_t* elems(const void* base) const { return static_cast<const std::uint16_t*>(base); }

  void loadRow(const std::uint16_t* src, int n, float* dst) {
    std::uint16_t raw[kD];
    k.read(src, sizeof(std::uint16_t) * n, raw);
    for (int i = 0; i < n; ++i) dst[i] = Elem<T>::toFloat(raw[i]);
  }

  void run() {
    for (int part = 0; part < p.num_sm_parts; ++part) {
      DecodingSchedMeta m = k.load<DecodingSchedMeta>(p.tile_scheduler_metadata_ptr + part);
      if (m.begin_req_idx >= p.b) continue;  // leftover part
      for (int i = m.begin_req_idx; i <= m.end_req_idx; ++i) request(m, i);
    }
  }

  void request(const DecodingSchedMeta& m, int i) {
    const int len = k.load<int>(p.seqlens_k_ptr + i);
    const int usedBlocks = (len + kPage - 1) / kPage;
    const int startBlock = i == m.begin_req_idx ? m.begin_block_idx : 0;
    const int endBlock = i == m.end_req_idx ? m.end_block_idx : usedBlocks;
    const bool split = i == m.begin_req_idx ? m.is_first_req_splitted != 0
                                            : (i == m.end_req_idx ? m.is_last_req_splitted != 0 : false);
    const int* tableRow = p.block_table + static_cast<std::int64_t>(i) * p.block_table_batch_stride;
    // The first block's entry is read unconditionally, even for L = 0 (docs/flashmla-interface.md#dense-kernel-assumptions).
    const int firstEntry = k.load<int>(tableRow + startBlock);

    const int nBlocks = endBlock > startBlock ? endBlock - startBlock : 0;
    const int splitIdx = split ? k.load<int>(p.num_splits_ptr + i) + (i == m.begin_req_idx ? m.begin_split_idx : 0) : 0;
    std::vector<float> q(static_cast<std::size_t>(p.q_seq_per_hk) * kD);
    std::vector<float> keys(static_cast<std::size_t>(kPage) * kD);
    for (int kh = 0; kh < p.h_k; ++kh) {
      for (int row = 0; row < p.q_seq_per_hk; ++row) {
        loadRow(elems(p.q_ptr) + static_cast<std::int64_t>(i) * p.q_batch_stride +
                    static_cast<std::int64_t>(row) * p.q_row_stride + static_cast<std::int64_t>(kh) * p.q_head_stride,
                kD, &q[static_cast<std::size_t>(row) * kD]);
      }
      std::vector<SoftmaxRow<kDv>> rows(static_cast<std::size_t>(p.q_seq_per_hk));
      for (int j = startBlock; j < startBlock + nBlocks; ++j) {
        // Entries at or beyond ceil(L/64) are never dereferenced: all their keys are masked.
        if (j >= usedBlocks) continue;
        const int phys = j == startBlock ? firstEntry : k.load<int>(tableRow + j);
        std::fill(keys.begin(), keys.end(), 0.0f);
        // A block id outside the cache reads as zeros (TMA out-of-bounds fill); rows at or past L
        // are masked and never read.
        for (int r = 0; r < kPage && j * kPage + r < len && phys >= 0 && phys < p.num_blocks; ++r) {
          loadRow(elems(p.k_ptr) + static_cast<std::int64_t>(phys) * p.k_batch_stride +
                      static_cast<std::int64_t>(r) * p.k_row_stride + static_cast<std::int64_t>(kh) * p.k_head_stride,
                  kD, &keys[static_cast<std::size_t>(r) * kD]);
        }
        for (int row = 0; row < p.q_seq_per_hk; ++row) addKeys(rows[static_cast<std::size_t>(row)], &q[static_cast<std::size_t>(row) * kD], row, j, len, keys);
      }
      for (int row = 0; row < p.q_seq_per_hk; ++row) finish(rows[static_cast<std::size_t>(row)], i, kh, row, split, splitIdx);
    }
  }

  void addKeys(SoftmaxRow<kDv>& state, const float* q, int row, int j, int len, const std::vector<float>& keys) {
    // Regrouped row r is query token s = r / q_head_per_hk; causal: key t visible iff t <= L − s_q + s.
    const int s = row / p.q_head_per_hk;
    const int lastVisible = p.is_causal ? len - p.s_q + s : len - 1;
    float x[kPage];
    for (int r = 0; r < kPage; ++r) {
      const int t = j * kPage + r;
      x[r] = (t < len && t <= lastVisible) ? dot(q, &keys[static_cast<std::size_t>(r) * kD], kD) * p.scale_softmax_log2
                                           : -INFINITY;
    }
    state.addBlock(
        x, kPage, [&](int r) { return &keys[static_cast<std::size_t>(r) * kD]; },
        [](float v) { return Elem<T>::toFloat(Elem<T>::fromFloat(v)); });
  }

  void finish(const SoftmaxRow<kDv>& st, int i, int kh, int row, bool split, int splitIdx) {
    // A NaN row sum counts as empty (docs/flashmla-interface.md#split-kv); O is then left undivided.
    const bool empty = st.l == 0.0f || std::isnan(st.l);
    const float denom = empty ? 1.0f : st.l;
    const std::int64_t flatRow = (static_cast<std::int64_t>(split ? splitIdx : i) * p.h_k + kh) * p.q_seq_per_hk + row;
    if (!split) {
      std::uint16_t out[kDv];
      for (int d = 0; d < kDv; ++d) out[d] = Elem<T>::fromFloat(st.o[d] / denom);
      k.write(static_cast<std::uint16_t*>(p.o_ptr) + static_cast<std::int64_t>(i) * p.o_batch_stride +
                  static_cast<std::int64_t>(kh) * p.o_head_stride + static_cast<std::int64_t>(row) * p.o_row_stride,
              sizeof out, out);
      // lse is a contiguous [b, h_k, q_seq_per_hk] buffer (docs/flashmla-interface.md#dense-kernel-assumptions), natural log.
      k.store<float>(p.softmax_lse_ptr + flatRow, empty ? INFINITY : std::log(st.l) + st.m / static_cast<float>(M_LOG2E));
    } else {
      // Split: normalised fp32 partial output and base-2 LSE; an empty split writes 0 and −inf (docs/flashmla-interface.md#split-kv).
      float acc[kDv];
      for (int d = 0; d < kDv; ++d) acc[d] = st.o[d] / denom;
      k.write(p.oaccum_ptr + flatRow * kDv, sizeof acc, acc);
      k.store<float>(p.softmax_lseaccum_ptr + flatRow, empty ? -INFINITY : std::log2(st.l) + st.m);
    }
  }
};

template <class T> void runDense(DenseAttnDecodeParams& p) {
  const std::string launcher = std::string("sm90::run_flash_splitkv_mla_kernel<") + Elem<T>::name + ">";
  require(FailStyle::Exit, p.d == kD, launcher.c_str(), "params.d == Config::HEAD_DIM_K");
  require(FailStyle::Exit, p.d_v == kDv, launcher.c_str(), "params.d_v == Config::HEAD_DIM_V");
  // Q, K and O descriptors are built by CuTe: a bad one only prints, then the kernel faults (docs/flashmla-interface.md#tma-alignment).
  const bool tmaOk = tmaEncodable(p.q_ptr, 2, {p.q_batch_stride, p.q_row_stride, p.q_head_stride}) &&
                     tmaEncodable(p.k_ptr, 2, {p.k_batch_stride, p.k_row_stride, p.k_head_stride}) &&
                     tmaEncodable(p.o_ptr, 2, {p.o_batch_stride, p.o_row_stride, p.o_head_stride});
  if (!tmaOk) logLine("Error: Failed to initialize the TMA descriptor (" + launcher + ")");
  const std::string image = std::string("dense_") + Elem<T>::name;
  LaunchSpec spec{launcher.c_str(), "flash_fwd_splitkv_mla_kernel", image.c_str(), FailStyle::Exit, KernelArch::Sm90, p.stream};
  launch(spec, [=](KernelScope& k) {  // by value: a captured launch runs later
    if (!tmaOk) k.illegalAddress("TMA load through an invalid tensor map");
    DenseKernel<T>{k, p}.run();
  });
}

}  // namespace
}  // namespace emu

namespace sm90 {

template <typename InputT> void run_flash_splitkv_mla_kernel(DenseAttnDecodeParams& params) { emu::runDense<InputT>(params); }

template void run_flash_splitkv_mla_kernel<cutlass::bfloat16_t>(DenseAttnDecodeParams& params);
template void run_flash_splitkv_mla_kernel<cutlass::half_t>(DenseAttnDecodeParams& params);

}  // namespace sm90
