// smxx::decode::run_flash_mla_combine_kernel<T>: merges the split-KV partial results (docs/flashmla-interface.md#split-kv,
// docs/flashmla-interface.md#split-kv). One "CTA" per (request, query token, group of 8 heads), one "warp" per head; the LSE
// reductions follow the warp's lane structure (32 lanes, xor-shuffle tree) so the fp32 results
// match the kernel's summation order.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "launch.h"
#include "launchers.h"
#include "numeric.h"

namespace emu {
namespace {

constexpr int kHeadsPerCta = 8;  // BLOCK_SIZE_M
constexpr int kDv = 512;

// MAX_SPLITS, the template argument the launcher picks from num_sm_parts (<= 160, docs/flashmla-interface.md#launcher-checks).
int maxSplitsFor(int numSmParts) {
  for (int m : {32, 64, 96, 128, 160}) {
    if (numSmParts <= m) return m;
  }
  return 0;
}

// CUDA's float max(), i.e. fmaxf: a NaN operand is ignored (docs/flashmla-interface.md#split-kv).
float warpMax(const float* lanes) {
  float v[32];
  for (int l = 0; l < 32; ++l) v[l] = lanes[l];
  for (int off = 16; off >= 1; off /= 2) {
    float n[32];
    for (int l = 0; l < 32; ++l) n[l] = std::fmax(v[l], v[l ^ off]);
    for (int l = 0; l < 32; ++l) v[l] = n[l];
  }
  return v[0];
}

float warpSum(const float* lanes) {
  float v[32];
  for (int l = 0; l < 32; ++l) v[l] = lanes[l];
  for (int off = 16; off >= 1; off /= 2) {
    float n[32];
    for (int l = 0; l < 32; ++l) n[l] = v[l] + v[l ^ off];
    for (int l = 0; l < 32; ++l) v[l] = n[l];
  }
  return v[0];
}

template <class T> void combineHead(KernelScope& k, const CombineParams& p, int batch, int s, int h, int start,
                                    int count, int maxSplits) {
  const int perLane = (maxSplits + 31) / 32;
  const float* oAccum = p.o_accum + static_cast<std::int64_t>(start) * p.stride_o_accum_split +
                        static_cast<std::int64_t>(s) * p.stride_o_accum_s_q +
                        static_cast<std::int64_t>(h) * p.stride_o_accum_h_q;
  // The first split's row is prefetched before the LSE reduction, whatever the split count.
  float data[kDv];
  k.read(oAccum, sizeof data, data);

  std::vector<float> local(static_cast<std::size_t>(perLane) * 32);
  float laneMax[32], laneSum[32];
  for (int l = 0; l < 32; ++l) {
    laneMax[l] = -INFINITY;
    for (int i = 0; i < perLane; ++i) {
      int split = i * 32 + l;
      float v = split < count
                    ? k.load<float>(p.lse_accum + static_cast<std::int64_t>(start + split) * p.stride_lse_accum_split +
                                    static_cast<std::int64_t>(s) * p.stride_lse_accum_s_q + h)
                    : -INFINITY;
      local[static_cast<std::size_t>(i) * 32 + l] = v;
      laneMax[l] = std::fmax(laneMax[l], v);
    }
  }
  float maxLse = warpMax(laneMax);
  if (maxLse == -INFINITY) maxLse = 0.0f;  // all splits empty
  for (int l = 0; l < 32; ++l) {
    laneSum[l] = 0.0f;
    for (int i = 0; i < perLane; ++i) laneSum[l] = laneSum[l] + std::exp2(local[static_cast<std::size_t>(i) * 32 + l] - maxLse);
  }
  float sum = warpSum(laneSum);
  float g = (sum == 0.0f || sum == -INFINITY) ? INFINITY : std::log2(sum) + maxLse;
  k.store<float>(p.lse + static_cast<std::int64_t>(batch) * p.stride_lse_b + static_cast<std::int64_t>(s) * p.stride_lse_s_q + h,
                 g / static_cast<float>(M_LOG2E));
  if (p.attn_sink != nullptr) {
    float sink = k.load<float>(p.attn_sink + h);
    if (g != INFINITY) g += std::log2(1.0f + std::exp2(sink * kLog2e - g));
    else g = sink == -INFINITY ? INFINITY : sink * kLog2e;
  }

  float result[kDv] = {};
  for (int split = 0; split < count; ++split) {
    float scale = std::exp2(local[static_cast<std::size_t>(split)] - g);
    for (int d = 0; d < kDv; ++d) result[d] = std::fma(scale, data[d], result[d]);
    if (split != count - 1) k.read(oAccum + static_cast<std::int64_t>(split + 1) * p.stride_o_accum_split, sizeof data, data);
  }
  std::uint16_t out[kDv];
  for (int d = 0; d < kDv; ++d) out[d] = Elem<T>::fromFloat(result[d]);
  k.write(static_cast<std::uint16_t*>(p.out) + static_cast<std::int64_t>(batch) * p.stride_o_b +
              static_cast<std::int64_t>(s) * p.stride_o_s_q + static_cast<std::int64_t>(h) * p.stride_o_h_q,
          sizeof out, out);
}

template <class T> void combineKernel(KernelScope& k, const CombineParams& p, int maxSplits) {
  const int groups = (p.h_q + kHeadsPerCta - 1) / kHeadsPerCta;
  for (int bs = 0; bs < p.b * p.s_q; ++bs) {
    const int batch = bs / p.s_q;
    const int s = bs - batch * p.s_q;
    for (int g = 0; g < groups; ++g) {
      // num_splits is read before the grid-dependency wait, by every CTA (docs/flashmla-interface.md#split-kv).
      const int start = k.load<int>(p.num_splits_ptr + batch);
      const int end = k.load<int>(p.num_splits_ptr + batch + 1);
      const int count = end - start;
      if (count == 1) continue;  // the main kernel wrote out/lse itself
      if (count > maxSplits) k.trap("combine assert my_num_splits <= MAX_SPLITS");
      const int heads = std::min(kHeadsPerCta, p.h_q - g * kHeadsPerCta);
      for (int w = 0; w < heads; ++w) combineHead<T>(k, p, batch, s, g * kHeadsPerCta + w, start, count, maxSplits);
    }
  }
}

template <class T> void runCombine(CombineParams& p) {
  const std::string launcher = std::string("run_flash_mla_combine_kernel<") + Elem<T>::name + ">";
  require(FailStyle::Exit, p.d_v == kDv, launcher.c_str(), "params.d_v == HEAD_DIM_V");
  const int maxSplits = maxSplitsFor(p.num_sm_parts);
  require(FailStyle::Exit, maxSplits != 0, launcher.c_str(), "false (num_sm_parts > 160 in MLA_NUM_SPLITS_SWITCH)");
  const std::string image = std::string("combine_") + Elem<T>::name;
  LaunchSpec spec{launcher.c_str(), "flash_fwd_mla_combine_kernel", image.c_str(), FailStyle::Exit, KernelArch::Any, p.stream};
  launch(spec, [=](KernelScope& k) { combineKernel<T>(k, p, maxSplits); });  // by value: a captured launch runs later
}

}  // namespace
}  // namespace emu

namespace smxx::decode {

template <typename ElementT> void run_flash_mla_combine_kernel(CombineParams& params) { emu::runCombine<ElementT>(params); }

template void run_flash_mla_combine_kernel<cutlass::bfloat16_t>(CombineParams& params);
template void run_flash_mla_combine_kernel<cutlass::half_t>(CombineParams& params);

}  // namespace smxx::decode
