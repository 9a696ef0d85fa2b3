// The sparse FP8 decode launchers (docs/flashmla-interface.md#sparse-host-layer, docs/flashmla-interface.md#launcher-checks, docs/flashmla-interface.md#sparse-semantics, docs/flashmla-interface.md#launchers, docs/flashmla-interface.md#split-kv, docs/flashmla-interface.md#sparse-block-ranges, docs/flashmla-interface.md#extra-topk-multiple):
// sm90::decode::sparse_fp8 <MT, NUM_HEADS>, sm100::decode::head64 <MT> and the sm100 head128
// small-topk kernel in decode mode. One emulated kernel body serves all three; what differs is
// the launcher's checks, the heads processed, the V32 scale conversion and the LSE formula.
#include <cmath>
#include <csignal>
#include <cstdint>
#include <string>
#include <vector>

#include "launch.h"
#include "launchers.h"
#include "numeric.h"
#include "softmax.h"
#include "sparse_kv.h"
#include "tma.h"

namespace emu {
namespace {

constexpr int kDv = 512;
constexpr int kBlock = 64;  // index positions per block

struct SparseVariant {
  const char* kernel;
  ModelType model;
  int heads;          // heads the grid covers (sm90: the NUM_HEADS template argument)
  bool sm100;         // e8m0 V32 scales and fmaf LSE
  bool trapOnEmpty;   // sm100 head64 traps on a work item with start >= end block
};

struct SparseKernel {
  KernelScope& k;
  const SparseAttnDecodeParams& p;
  SparseVariant v;

  int dqk() const { return v.model == V32 ? 576 : 512; }
  // sm90 V32 walks topk/64 blocks of the main list only and ignores topk_length (docs/flashmla-interface.md#sparse-block-ranges).
  bool sm90V32() const { return !v.sm100 && v.model == V32; }

  void run() {
    for (int part = 0; part < p.num_sm_parts; ++part) {
      DecodingSchedMeta m = k.load<DecodingSchedMeta>(p.tile_scheduler_metadata_ptr + part);
      if (m.begin_req_idx >= p.b) continue;  // leftover part
      for (int i = m.begin_req_idx; i <= m.end_req_idx; ++i) request(m, i);
    }
  }

  void request(const DecodingSchedMeta& m, int i) {
    int topkLen = p.topk, extraLen = p.extra_topk, nMain, nExtra;
    if (sm90V32()) {
      nMain = p.topk / kBlock;
      nExtra = 0;
    } else {
      if (p.topk_length != nullptr) topkLen = k.load<int>(p.topk_length + i);
      if (p.extra_topk_length != nullptr) extraLen = k.load<int>(p.extra_topk_length + i);
      int mainPadded = (topkLen + kBlock - 1) / kBlock * kBlock;
      nMain = (mainPadded > kBlock ? mainPadded : kBlock) / kBlock;
      nExtra = (extraLen + kBlock - 1) / kBlock;
    }
    const int startBlock = i == m.begin_req_idx ? m.begin_block_idx : 0;
    const int endBlock = i == m.end_req_idx ? m.end_block_idx : nMain + nExtra;
    if (v.trapOnEmpty && startBlock >= endBlock) k.trap("work item with start block >= end block");
    const bool split = i == m.begin_req_idx ? m.is_first_req_splitted != 0
                                            : (i == m.end_req_idx ? m.is_last_req_splitted != 0 : false);
    const int splitIdx = split ? k.load<int>(p.num_splits_ptr + i) + (i == m.begin_req_idx ? m.begin_split_idx : 0) : 0;

    const int d = dqk();
    std::vector<float> q(static_cast<std::size_t>(v.heads) * d);
    std::vector<float> keys(static_cast<std::size_t>(kBlock) * d);
    std::vector<float> invalidToken(static_cast<std::size_t>(d));
    for (int s = 0; s < p.s_q; ++s) {
      for (int h = 0; h < v.heads; ++h) {
        std::uint16_t raw[576];
        k.read(p.q + static_cast<std::int64_t>(i) * p.stride_q_b + static_cast<std::int64_t>(s) * p.stride_q_s_q +
                   static_cast<std::int64_t>(h) * p.stride_q_h_q,
               sizeof(std::uint16_t) * d, raw);
        for (int c = 0; c < d; ++c) q[static_cast<std::size_t>(h) * d + c] = bf16ToFloat(raw[c]);
      }
      std::vector<SoftmaxRow<kDv>> rows(static_cast<std::size_t>(v.heads));
      for (int j = startBlock; j < endBlock; ++j) {
        const bool extra = j >= nMain;
        const int firstPos = (extra ? j - nMain : j) * kBlock;
        const int* idxRow = extra ? p.extra_indices + static_cast<std::int64_t>(i) * p.stride_extra_indices_b +
                                        static_cast<std::int64_t>(s) * p.stride_extra_indices_s_q
                                  : p.indices + static_cast<std::int64_t>(i) * p.stride_indices_b +
                                        static_cast<std::int64_t>(s) * p.stride_indices_s_q;
        int idx[kBlock];
        k.read(idxRow + firstPos, sizeof idx, idx);
        const KvCache cache = extra ? KvCache{p.extra_kv, p.stride_extra_kv_block, p.extra_page_block_size}
                                    : KvCache{p.kv, p.stride_kv_block, p.page_block_size};
        const int limit = extra ? extraLen : topkLen;
        bool valid[kBlock];
        // Invalid positions still load a token: block 0, row 0 (docs/flashmla-interface.md#sm90-cache-loads).
        loadToken(cache, 0, invalidToken.data());
        for (int u = 0; u < kBlock; ++u) {
          valid[u] = idx[u] != -1 && (sm90V32() || firstPos + u < limit);
          float* dst = &keys[static_cast<std::size_t>(u) * d];
          if (valid[u]) loadToken(cache, idx[u], dst);
          else std::copy(invalidToken.begin(), invalidToken.end(), dst);
        }
        for (int h = 0; h < v.heads; ++h) {
          float x[kBlock];
          for (int u = 0; u < kBlock; ++u) {
            x[u] = valid[u] ? dot(&q[static_cast<std::size_t>(h) * d], &keys[static_cast<std::size_t>(u) * d], d) * p.sm_scale_div_log2
                            : -INFINITY;
          }
          // V = dims 0–511: NoPE only for V32, NoPE + RoPE for MODEL1 (docs/flashmla-interface.md#value-vector).
          rows[static_cast<std::size_t>(h)].addBlock(
              x, kBlock, [&](int u) { return &keys[static_cast<std::size_t>(u) * d]; }, roundBf16);
        }
      }
      for (int h = 0; h < v.heads; ++h) finish(rows[static_cast<std::size_t>(h)], i, s, h, split, splitIdx);
    }
  }

  void loadToken(const KvCache& c, int index, float* dst) {
    const std::int64_t block = index / c.pageBlockSize;
    const std::int64_t row = index % c.pageBlockSize;
    if (v.model == V32) loadTokenV32(k, c, block, row, v.sm100 ? V32Scale::E8m0TowardZero : V32Scale::Bf16, dst);
    else loadTokenModel1(k, c, block, row, dst);
  }

  void finish(const SoftmaxRow<kDv>& st, int i, int s, int h, bool split, int splitIdx) {
    const bool empty = st.l == 0.0f;
    if (!split) {
      // Unsplit: the sink enters the denominator here (docs/flashmla-interface.md#split-kv).
      float sinkTerm = 0.0f;
      if (p.attn_sink != nullptr) sinkTerm = std::exp2(k.load<float>(p.attn_sink + h) * kLog2e - st.m);
      std::uint16_t out[kDv];
      for (int c = 0; c < kDv; ++c) out[c] = floatToBf16(empty ? 0.0f : st.o[c] / (st.l + sinkTerm));
      k.write(p.out + static_cast<std::int64_t>(i) * p.stride_o_b + static_cast<std::int64_t>(s) * p.stride_o_s_q +
                  static_cast<std::int64_t>(h) * p.stride_o_h_q,
              sizeof out, out);
      float lse = empty ? INFINITY
                        : (v.sm100 ? std::fma(st.m, kLn2, std::log(st.l)) : std::log(st.l) + st.m / static_cast<float>(M_LOG2E));
      k.store<float>(p.lse + static_cast<std::int64_t>(i) * p.stride_lse_b + static_cast<std::int64_t>(s) * p.stride_lse_s_q + h, lse);
    } else {
      float acc[kDv];
      for (int c = 0; c < kDv; ++c) acc[c] = empty ? 0.0f : st.o[c] / st.l;
      k.write(p.o_accum + static_cast<std::int64_t>(splitIdx) * p.stride_o_accum_split +
                  static_cast<std::int64_t>(s) * p.stride_o_accum_s_q + static_cast<std::int64_t>(h) * p.stride_o_accum_h_q,
              sizeof acc, acc);
      k.store<float>(p.lse_accum + static_cast<std::int64_t>(splitIdx) * p.stride_lse_accum_split +
                         static_cast<std::int64_t>(s) * p.stride_lse_accum_s_q + h,
                     empty ? -INFINITY : std::log2(st.l) + st.m);
    }
  }
};

const char* modelName(ModelType mt) { return mt == V32 ? "V32" : "MODEL1"; }

// Silent failures found only when the kernel runs (docs/flashmla-interface.md#sm90-cache-loads, docs/flashmla-interface.md#tma-alignment): each ends as a device fault.
struct DeviceFault {
  bool fault = false;
  std::string what;
  void add(bool bad, const std::string& w) {
    if (bad && !fault) {
      fault = true;
      what = w;
    }
  }
};

// The launcher's key in kernel_images.h: sm90_sparse_<model>_h<heads>, sm100_head64_<model>, sm100_head128_model1.
std::string imageOf(const SparseVariant& v, KernelArch arch) {
  const std::string model = v.model == V32 ? "v32" : "model1";
  if (arch == KernelArch::Sm90) return "sm90_sparse_" + model + "_h" + std::to_string(v.heads);
  return v.heads == 64 ? "sm100_head64_" + model : "sm100_head128_" + model;
}

void runSparse(const SparseAttnDecodeParams& p, const char* launcher, const SparseVariant& v, KernelArch arch,
               const DeviceFault& fault) {
  const std::string image = imageOf(v, arch);
  LaunchSpec spec{launcher, v.kernel, image.c_str(), FailStyle::Throw, arch, p.stream};
  launch(spec, [=](KernelScope& k) {  // by value: a captured launch runs later
    if (fault.fault) k.illegalAddress(fault.what);
    SparseKernel{k, p, v}.run();
  });
}

template <ModelType MT, int NUM_HEADS> void sm90Sparse(const SparseAttnDecodeParams& p) {
  const std::string name = std::string("sm90::decode::sparse_fp8::run_flash_splitkv_mla_fp8_sparse_kernel<") + modelName(MT) +
                           "," + std::to_string(NUM_HEADS) + ">";
  const char* l = name.c_str();
  constexpr FailStyle T = FailStyle::Throw;
  require(T, p.h_kv == 1, l, "params.h_kv == 1");
  require(T, p.topk % kBlock == 0, l, "params.topk % B_TOPK == 0");
  require(T, p.d_qk == (MT == V32 ? 576 : 512), l, "params.d_qk == D_Q");
  require(T, p.d_v == kDv, l, "params.d_v == D_V");
  require(T, p.h_q % 64 == 0, l, "params.h_q % B_H == 0");  // the only head check
  if constexpr (MT == MODEL1) {
    require(T, p.stride_kv_row == 584, l, "params.stride_kv_row == 584");
    if (p.extra_kv != nullptr) require(T, p.stride_extra_kv_row == 584, l, "params.stride_extra_kv_row == 584");
  } else {
    require(T, p.extra_kv == nullptr, l, "params.extra_kv == nullptr");
    require(T, p.topk_length == nullptr, l, "params.topk_length == nullptr");
    require(T, p.stride_kv_row == 656, l, "params.stride_kv_row == 656");
  }
  // The output tensor map is encoded with an explicit KU_ASSERT on the result (docs/flashmla-interface.md#tma-alignment).
  require(T, tmaEncodable(p.out, 2, {p.stride_o_b, p.stride_o_s_q, p.stride_o_h_q}), l,
          "res == CUDA_SUCCESS (output tensor map encoding)");
  DeviceFault fault;
  // Q's descriptor is CuTe-built: failure is silent (docs/flashmla-interface.md#tma-alignment).
  if (!tmaEncodable(p.q, 2, {p.stride_q_b, p.stride_q_s_q, p.stride_q_h_q})) {
    logLine("Error: Failed to initialize the TMA descriptor (" + name + ")");
    fault.add(true, "TMA load through an invalid tensor map (q)");
  }
  // 128-bit cache loads need 16-byte-aligned blocks (docs/flashmla-interface.md#sm90-cache-loads).
  fault.add(!aligned16(p.kv) || p.stride_kv_block % 16 != 0, "misaligned address: 128-bit load from kv (base or stride_kv_block)");
  if (p.extra_kv != nullptr) {
    fault.add(!aligned16(p.extra_kv) || p.stride_extra_kv_block % 16 != 0,
              "misaligned address: 128-bit load from extra_kv (base or stride_extra_kv_block)");
  }
  runSparse(p, l, SparseVariant{"flash_fwd_splitkv_mla_fp8_sparse_kernel", MT, NUM_HEADS, false, false}, KernelArch::Sm90, fault);
}

template <ModelType MT> void sm100Head64(const SparseAttnDecodeParams& p) {
  const std::string name = std::string("sm100::decode::head64::run_flash_splitkv_mla_fp8_sparse_kernel<") + modelName(MT) + ">";
  const char* l = name.c_str();
  constexpr FailStyle T = FailStyle::Throw;
  constexpr int rowBytes = MT == V32 ? 656 : 576;  // TMA row of the cache
  require(T, p.topk % kBlock == 0, l, "params.topk % B_TOPK == 0");
  require(T, p.extra_topk % kBlock == 0, l, "params.extra_topk % B_TOPK == 0");
  require(T, p.h_q == 64, l, "params.h_q == 64");
  require(T, p.h_kv == 1, l, "params.h_kv == 1");
  require(T, p.d_qk == (MT == V32 ? 576 : 512), l, "params.d_qk == D_QK");
  require(T, p.d_v == kDv, l, "params.d_v == D_V");
  if constexpr (MT == MODEL1) require(T, p.stride_kv_row == 584, l, "params.stride_kv_row == 584");
  require(T, aligned16(p.kv), l, "(int64_t)params.kv % 16 == 0");
  require(T, p.stride_kv_block % rowBytes == 0, l, "params.stride_kv_block % TMA_K_STRIDE == 0");
  if (p.extra_topk > 0) {
    require(T, aligned16(p.extra_kv), l, "(int64_t)params.extra_kv % 16 == 0");
    require(T, p.stride_extra_kv_block % rowBytes == 0, l, "params.stride_extra_kv_block % TMA_K_STRIDE == 0");
  }
  DeviceFault fault;
  const bool qOk = tmaEncodable(p.q, 2, {p.stride_q_b, p.stride_q_s_q, p.stride_q_h_q});
  const bool oOk = tmaEncodable(p.out, 2, {p.stride_o_b, p.stride_o_s_q, p.stride_o_h_q});
  if (!qOk || !oOk) logLine("Error: Failed to initialize the TMA descriptor (" + name + ")");
  fault.add(!qOk, "TMA load through an invalid tensor map (q)");
  fault.add(!oOk, "TMA store through an invalid tensor map (out)");
  runSparse(p, l, SparseVariant{"flash_fwd_splitkv_mla_fp8_sparse_kernel", MT, 64, true, true}, KernelArch::Sm100, fault);
}

void sm100Head128(const SparseAttnDecodeParams& p) {
  const char* l = "sm100::fwd_for_small_topk::head128::run_fwd_for_small_topk_phase1_kernel<DecodeWithSplitKV,512>";
  constexpr FailStyle T = FailStyle::Throw;
  require(T, p.h_kv == 1, l, "params.h_kv == 1");
  require(T, p.topk % kBlock == 0, l, "params.topk % B_TOPK == 0");
  require(T, p.h_q == 128, l, "params.h_q == 128");
  require(T, p.d_qk == 512, l, "params.d_qk == D_QK");
  // Computed for real: a zero stride_q_s_q is an integer division by zero (docs/flashmla-interface.md#launcher-gaps).
  if (p.stride_q_s_q == 0) {
    logLine(std::string("[flashmla-emu] ") + l + ": integer division by zero in stride_q_b % stride_q_s_q (SIGFPE)");
    std::raise(SIGFPE);
  }
  require(T, p.stride_q_b % p.stride_q_s_q == 0, l, "params.stride_q_b % params.stride_q_s_q == 0");
  require(T, aligned16(p.kv), l, "(int64_t)params.kv % 16 == 0");
  require(T, p.stride_kv_block % 576 == 0, l, "params.stride_kv_block % 576 == 0");
  if (p.extra_kv != nullptr) {
    require(T, aligned16(p.extra_kv), l, "(int64_t)params.extra_kv % 16 == 0");
    require(T, p.stride_extra_kv_block % 576 == 0, l, "params.stride_extra_kv_block % 576 == 0");
  }
  // Its q/out maps come from ku::make_tensor_map, which throws on an encoding failure (docs/flashmla-interface.md#tma-alignment).
  require(T, tmaEncodable(p.q, 2, {p.stride_q_b, p.stride_q_s_q, p.stride_q_h_q}), l, "cuTensorMapEncodeTiled(q) == CUDA_SUCCESS");
  require(T, tmaEncodable(p.out, 2, {p.stride_o_b, p.stride_o_s_q, p.stride_o_h_q}), l,
          "cuTensorMapEncodeTiled(out) == CUDA_SUCCESS");
  runSparse(p, l, SparseVariant{"flash_fwd_for_small_topk_phase1_kernel", MODEL1, 128, true, false}, KernelArch::Sm100, DeviceFault{});
}

}  // namespace
}  // namespace emu

namespace sm90::decode::sparse_fp8 {
template <ModelType MODEL_TYPE, int NUM_HEADS>
void run_flash_splitkv_mla_fp8_sparse_kernel(const SparseAttnDecodeParams& params) {
  emu::sm90Sparse<MODEL_TYPE, NUM_HEADS>(params);
}
template void run_flash_splitkv_mla_fp8_sparse_kernel<V32, 64>(const SparseAttnDecodeParams& params);
template void run_flash_splitkv_mla_fp8_sparse_kernel<V32, 128>(const SparseAttnDecodeParams& params);
template void run_flash_splitkv_mla_fp8_sparse_kernel<MODEL1, 64>(const SparseAttnDecodeParams& params);
template void run_flash_splitkv_mla_fp8_sparse_kernel<MODEL1, 128>(const SparseAttnDecodeParams& params);
}  // namespace sm90::decode::sparse_fp8

namespace sm100::decode::head64 {
template <ModelType MODEL_TYPE> void run_flash_splitkv_mla_fp8_sparse_kernel(const SparseAttnDecodeParams& params) {
  emu::sm100Head64<MODEL_TYPE>(params);
}
template void run_flash_splitkv_mla_fp8_sparse_kernel<V32>(const SparseAttnDecodeParams& params);
template void run_flash_splitkv_mla_fp8_sparse_kernel<MODEL1>(const SparseAttnDecodeParams& params);
}  // namespace sm100::decode::head64

namespace sm100::fwd_for_small_topk::head128 {
template <SparseAttnFwdMode FWD_MODE, int D_QK>
void run_fwd_for_small_topk_phase1_kernel(const SparseFwdArgT<FWD_MODE>& params) {
  // The <Prefill, 512> launcher is an explicit specialization in prefill.cc.
  static_assert(is_decode_v<FWD_MODE> && D_QK == 512, "this definition serves the decode instantiation only");
  emu::sm100Head128(params);
}
template void run_fwd_for_small_topk_phase1_kernel<SparseAttnFwdMode::DecodeWithSplitKV, 512>(
    const SparseFwdArgT<SparseAttnFwdMode::DecodeWithSplitKV>& params);
}  // namespace sm100::fwd_for_small_topk::head128
