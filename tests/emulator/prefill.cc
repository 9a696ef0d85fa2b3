// The nine sparse prefill launchers (docs/flashmla-interface.md#sparse-prefill): sm90::fwd
// <D_QK, HAVE_TOPK_LENGTH>, sm100::fwd::head64 <D_QK>, sm100::fwd::head128 <D_QK> and the sm100
// head128 small-topk kernel in prefill mode. One emulated kernel body serves all four kernels,
// following what each reads, how each masks, rescales and normalises (upstream
// csrc/sm90/prefill/sparse/phase1.cuh, csrc/sm100/prefill/sparse/fwd/head64/phase1.cuh,
// csrc/sm100/prefill/sparse/fwd/head128/phase1.cuh,
// csrc/sm100/prefill/sparse/fwd_for_small_topk/head128/phase1.cuh and common_subroutine.h at
// FlashMLA 9241ae3):
//   - index t at position pos of query token s is used iff 0 <= t < s_kv and pos < topk_length[s]
//     (topk when absent; the sm90 <·, false> kernels never read topk_length);
//   - logits x = (q·k)·sm_scale_div_log2 in fp32, online base-2 softmax per block of positions, the
//     running max starting at -1e30; P rounded to bf16 before P·V, L summing the fp32 P;
//   - out = O / (L + 2^(sink·log2 e − m)), 0 when L == 0; max_logits = m·ln 2 and
//     lse = ln L + m·ln 2, −inf / +inf when L == 0.
// What differs per kernel: sm90 rescales at every block and loads only used tokens (cp.async
// zero-fills the others); the sm100 kernels rescale lazily (only when some row of a 32-head group
// gains more than 6 in base 2, so m may trail the true max that max_logits reports) and gather every
// in-range index of a block (TMA fills out-of-range rows with zeros), so a NaN token beyond
// topk_length still reaches O through P = 0.
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

constexpr int kDv = 512;
constexpr float kMaxInit = -1e30f;  // MAX_INIT_VAL: keeps exp2(m_old − m_new) away from −inf − (−inf)
constexpr float kLazyRescale = 6.0f;  // sm100: O and L are rescaled only past this growth of the max
constexpr int kRescaleGroup = 32;     // sm100: rows that decide the lazy rescale together (one warp's)

enum class Kind { Sm90, Head64, Head128, SmallTopk };

struct PrefillVariant {
  const char* kernel;  // the __global__ function, for fault reports
  const char* image;   // launcher key in kernel_images.h (binding/flashmla_symbols.h)
  Kind kind;
  int dqk;                // D_QK of the instantiation
  bool readsTopkLength;  // sm90: HAVE_TOPK_LENGTH; sm100: whenever the pointer is set
};

// Positions per block: the unit of topk_length rounding and of the online softmax.
int blockSize(Kind kind) { return kind == Kind::Head128 ? 128 : 64; }

// ku::ceil_div on int, wrapping like the device's 32-bit arithmetic.
int ceilDiv(int a, int b) { return static_cast<int>(static_cast<unsigned>(a) + static_cast<unsigned>(b - 1)) / b; }

// fp32 q·k with eight partial sums (the tensor cores' summation order is not modelled; this form
// lets the compiler vectorise the emulator's hottest loop). d is a multiple of 64.
float dot8(const float* a, const float* b, int d) {
  float acc[8] = {};
  for (int i = 0; i < d; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

struct RowState {
  float m = kMaxInit;       // the max P is taken against (the kernels' mi)
  float l = 0.0f;           // Σ P in fp32
  float realM = -INFINITY;  // sm100: the true running max of the scaled logits
  float o[kDv] = {};        // Σ round(P)·v
};

// One block of positions as loaded: tokens (zeros where nothing was loaded) and which were loaded.
struct Block {
  const std::vector<float>& keys;  // [size][D_QK]
  const std::vector<char>& loaded;
  int size;
};

struct PrefillKernel {
  KernelScope& k;
  const SparseAttnFwdParams& p;
  PrefillVariant v;

  bool sm90() const { return v.kind == Kind::Sm90; }

  void run() {
    for (int s = 0; s < p.s_q; ++s) token(s);
  }

  int blocksOf(int topkLength) const {
    const int b = blockSize(v.kind);
    if (!sm90()) return std::max(ceilDiv(topkLength, b), 1);  // "num_k_blocks always >= 1"
    const int n = v.readsTopkLength ? ceilDiv(topkLength, b) : static_cast<int>(static_cast<unsigned>(p.topk) / unsigned(b));
    return n <= 0 ? 0 : (n + 1) / 2 * 2;  // two warpgroups take blocks in pairs
  }

  void token(int s) {
    const int d = v.dqk, heads = p.h_q, B = blockSize(v.kind);
    const int topkLength = v.readsTopkLength ? k.load<int>(p.topk_length + s) : p.topk;
    const int nBlocks = blocksOf(topkLength);

    // sm90's Q descriptor spans params.d_qk columns: beyond them the TMA box reads zeros.
    const int qCols = sm90() ? std::clamp(p.d_qk, 0, d) : d;
    std::vector<float> q(static_cast<std::size_t>(heads) * d, 0.0f);
    std::vector<std::uint16_t> raw16(static_cast<std::size_t>(d));
    for (int h = 0; h < heads; ++h) {
      k.read(p.q + static_cast<std::int64_t>(s) * p.stride_q_s_q + static_cast<std::int64_t>(h) * p.stride_q_h_q,
             sizeof(std::uint16_t) * qCols, raw16.data());
      for (int c = 0; c < qCols; ++c) q[static_cast<std::size_t>(h) * d + c] = bf16ToFloat(raw16[c]);
    }

    const int* idxRow = p.indices + static_cast<std::int64_t>(s) * p.stride_indices_s_q;
    // sm100 reads a block's indices with 256-bit loads (KU_LDG_256).
    if (!sm90() && reinterpret_cast<std::uintptr_t>(idxRow) % 32 != 0) {
      k.illegalAddress("misaligned address: 256-bit load of indices (indices + s·stride_indices_s_q)");
    }
    std::vector<RowState> rows(static_cast<std::size_t>(heads));
    std::vector<int> idx(static_cast<std::size_t>(B));
    std::vector<char> used(static_cast<std::size_t>(B)), loaded(static_cast<std::size_t>(B));
    std::vector<float> keys(static_cast<std::size_t>(B) * d);
    std::vector<float> logits(static_cast<std::size_t>(heads) * B);
    for (int b = 0; b < nBlocks; ++b) {
      k.read(idxRow + static_cast<std::int64_t>(b) * B, sizeof(int) * B, idx.data());
      for (int u = 0; u < B; ++u) {
        const bool inRange = idx[u] >= 0 && idx[u] < p.s_kv;
        used[u] = inRange && b * B + u < topkLength;
        float* key = &keys[static_cast<std::size_t>(u) * d];
        loaded[u] = sm90() ? used[u] : inRange;
        if (loaded[u]) loadToken(idx[u], key);
        else std::fill(key, key + d, 0.0f);
      }
      for (int h = 0; h < heads; ++h) {
        for (int u = 0; u < B; ++u) {
          logits[static_cast<std::size_t>(h) * B + u] =
              used[u] ? dot8(&q[static_cast<std::size_t>(h) * d], &keys[static_cast<std::size_t>(u) * d], d) : -INFINITY;
        }
      }
      const Block block{keys, loaded, B};
      if (sm90()) eagerBlock(rows, logits, block);
      else lazyBlock(rows, logits, block, b);
    }
    finish(s, rows);
  }

  void loadToken(int index, float* dst) {
    const cutlass::bfloat16_t* row = p.kv + static_cast<std::int64_t>(index) * p.stride_kv_s_kv;
    // sm90 copies tokens with 16-byte cp.async.
    if (sm90() && !aligned16(row)) k.illegalAddress("misaligned address: 128-bit cp.async from kv (kv + index·stride_kv_s_kv)");
    std::uint16_t raw[576];
    k.read(row, sizeof(std::uint16_t) * v.dqk, raw);
    for (int c = 0; c < v.dqk; ++c) dst[c] = bf16ToFloat(raw[c]);
  }

  // Adds round(P)·V of one block to O against `newMax` and returns Σ P (fp32). V of position u is
  // the first 512 dims of its token as loaded.
  float accumulate(RowState& r, const float* logits, const Block& blk, float newMax) {
    const float scale = p.sm_scale_div_log2;
    float sum = 0.0f;
    for (int u = 0; u < blk.size; ++u) {
      const float pu = sm90() ? std::exp2(logits[u] * scale - newMax) : std::exp2(std::fma(logits[u], scale, -newMax));
      sum += pu;
      const float pr = roundBf16(pu);
      // A position with nothing loaded has V = 0: a finite P adds exactly nothing.
      if (!blk.loaded[u] && std::isfinite(pr)) continue;
      const float* vu = &blk.keys[static_cast<std::size_t>(u) * v.dqk];
      for (int c = 0; c < kDv; ++c) r.o[c] += pr * vu[c];
    }
    return sum;
  }

  static float rowMax(const float* logits, int B, float scale) {
    float mx = -INFINITY;
    for (int u = 0; u < B; ++u) mx = std::fmax(mx, logits[u]);
    return mx * scale;  // the kernels scale the raw maximum
  }

  // sm90: rescale O and L to the new max at every block.
  void eagerBlock(std::vector<RowState>& rows, const std::vector<float>& logits, const Block& blk) {
    for (std::size_t h = 0; h < rows.size(); ++h) {
      RowState& r = rows[h];
      const float* x = &logits[h * blk.size];
      const float newMax = std::fmax(r.m, rowMax(x, blk.size, p.sm_scale_div_log2));
      const float f = std::exp2(r.m - newMax);
      for (float& o : r.o) o *= f;
      r.l = r.l * f + accumulate(r, x, blk, newMax);
      r.m = newMax;
    }
  }

  // sm100: keep the old max unless some row of the 32-row group grew by more than 6.
  void lazyBlock(std::vector<RowState>& rows, const std::vector<float>& logits, const Block& blk, int b) {
    const std::size_t n = rows.size();
    std::vector<float> cur(n);
    for (std::size_t h = 0; h < n; ++h) {
      cur[h] = rowMax(&logits[h * blk.size], blk.size, p.sm_scale_div_log2);
      rows[h].realM = std::fmax(rows[h].realM, cur[h]);
    }
    for (std::size_t g = 0; g < n; g += kRescaleGroup) {
      const std::size_t end = std::min(n, g + kRescaleGroup);
      bool rescale = false;
      for (std::size_t h = g; h < end; ++h) rescale = rescale || cur[h] - rows[h].m > kLazyRescale;
      for (std::size_t h = g; h < end; ++h) {
        RowState& r = rows[h];
        const float newMax = rescale ? std::fmax(cur[h], r.m) : r.m;
        const float f = rescale ? std::exp2(r.m - newMax) : 1.0f;
        // O is first written by block 0's P·V, so only later blocks rescale it.
        if (b > 0 && rescale) {
          for (float& o : r.o) o *= f;
        }
        r.l = std::fma(r.l, f, accumulate(r, &logits[h * blk.size], blk, newMax));
        r.m = newMax;
      }
    }
  }

  void finish(int s, std::vector<RowState>& rows) {
    const std::int64_t base = static_cast<std::int64_t>(s) * p.h_q;
    for (std::size_t g = 0; g < rows.size(); g += kRescaleGroup) {
      const std::size_t end = std::min(rows.size(), g + kRescaleGroup);
      // sm100 head64/head128 skip reading O for a group whose rows all have L == 0.
      bool groupHasKeys = false;
      for (std::size_t h = g; h < end; ++h) {
        RowState& r = rows[h];
        if (!sm90() && r.realM == -INFINITY) {  // no used index: L := 0, m := −inf
          r.l = 0.0f;
          r.m = -INFINITY;
        }
        groupHasKeys = groupHasKeys || r.l != 0.0f;
      }
      for (std::size_t h = g; h < end; ++h) {
        RowState& r = rows[h];
        const float sink = p.attn_sink == nullptr ? -INFINITY : k.load<float>(p.attn_sink + h);
        float outScale;
        float maxLogits, lse;
        if (sm90()) {
          outScale = r.l == 0.0f ? 0.0f : 1.0f / (r.l + std::exp2(sink * kLog2e - r.m));
          maxLogits = r.l == 0.0f ? -INFINITY : r.m * kLn2;
          lse = r.l == 0.0f ? INFINITY : std::log(r.l) + r.m * kLn2;
        } else {
          if (v.kind == Kind::SmallTopk) {
            outScale = r.l == 0.0f ? 0.0f : 1.0f / (r.l + std::exp2(std::fma(sink, kLog2e, -r.m)));
          } else if (groupHasKeys) {
            outScale = 1.0f / (r.l + std::exp2(sink * kLog2e - r.m));
          } else {
            std::fill(std::begin(r.o), std::end(r.o), 0.0f);
            outScale = 1.0f;
          }
          maxLogits = r.realM * kLn2;
          lse = v.kind == Kind::Head128 ? std::log(r.l) + r.m * kLn2 : std::fma(r.m, kLn2, std::log(r.l));
          if (lse == -INFINITY) lse = INFINITY;
        }
        std::uint16_t out[kDv];
        for (int c = 0; c < kDv; ++c) out[c] = floatToBf16(r.o[c] * outScale);
        const std::int64_t row = base + static_cast<std::int64_t>(h);
        k.write(p.out + row * kDv, sizeof out, out);
        k.store<float>(p.max_logits + row, maxLogits);
        k.store<float>(p.lse + row, lse);
      }
    }
  }
};

// Preconditions of cuTensorMapEncodeTiled beyond tma.h's: every dimension non-zero.
bool dimsNonZero(std::initializer_list<std::int64_t> dims) {
  return std::all_of(dims.begin(), dims.end(), [](std::int64_t x) { return x > 0; });
}

void runPrefill(const SparseAttnFwdParams& p, const std::string& launcher, const PrefillVariant& v, KernelArch arch,
                long long gridBlocks, const std::string& descriptorFault) {
  LaunchSpec spec{launcher.c_str(), v.kernel, v.image, FailStyle::Throw, arch, p.stream, gridBlocks};
  launch(spec, [=](KernelScope& k) {  // by value: a captured launch runs later
    if (!descriptorFault.empty()) k.illegalAddress(descriptorFault);
    PrefillKernel{k, p, v}.run();
  });
}

// A CuTe-built descriptor that fails to encode is only printed (docs/flashmla-interface.md#silent-tma-failures);
// the kernel then faults on it.
void silentDescriptor(bool ok, const std::string& launcher, const char* what, std::string& fault) {
  if (ok || !fault.empty()) return;
  logLine("Error: Failed to initialize the TMA descriptor (" + launcher + ")");
  fault = std::string("TMA access through an invalid tensor map (") + what + ")";
}

// The kv tensor map of the sm100 kernels: {D, s_kv} bf16 rows of stride_kv_s_kv elements.
bool kvMapEncodable(const SparseAttnFwdParams& p) {
  return tmaEncodable(p.kv, 2, {p.stride_kv_s_kv}) && dimsNonZero({p.s_kv});
}

template <int D_QK, bool HAVE_TOPK_LENGTH> void sm90Prefill(const SparseAttnFwdParams& p) {
  const std::string l = "sm90::fwd::run_fwd_phase1_kernel<" + std::to_string(D_QK) + "," + (HAVE_TOPK_LENGTH ? "true" : "false") + ">";
  constexpr FailStyle T = FailStyle::Throw;
  require(T, p.h_kv == 1, l.c_str(), "params.h_kv == 1");
  require(T, p.topk % 128 == 0, l.c_str(), "params.topk % (2*B_TOPK) == 0");
  require(T, p.topk > 0, l.c_str(), "params.topk > 0");
  require(T, p.h_q % 64 == 0, l.c_str(), "params.h_q % B_H == 0");
  std::string fault;
  silentDescriptor(tmaEncodable(p.q, 2, {p.stride_q_h_q, p.stride_q_s_q}) && dimsNonZero({p.h_q, p.d_qk, p.s_q}), l, "q", fault);
  // The output map is encoded by hand and checked: out is (s_q, h_q, 512) contiguous.
  require(T, tmaEncodable(p.out, 2, {kDv, static_cast<std::int64_t>(kDv) * p.h_q}) && dimsNonZero({p.h_q, p.s_q}), l.c_str(),
          "res == CUresult::CUDA_SUCCESS (output tensor map)");
  static constexpr const char* kImages[2][2] = {{"sm90_prefill_k512", "sm90_prefill_k512_topklen"},
                                                {"sm90_prefill_k576", "sm90_prefill_k576_topklen"}};
  const PrefillVariant v{"sparse_attn_fwd_kernel", kImages[D_QK == 576][HAVE_TOPK_LENGTH], Kind::Sm90, D_QK, HAVE_TOPK_LENGTH};
  runPrefill(p, l, v, KernelArch::Sm90, static_cast<long long>(p.h_q / 64) * p.s_q, fault);
}

template <int D_QK> void sm100Head64Prefill(const SparseAttnFwdParams& p) {
  const std::string l = "sm100::fwd::head64::run_fwd_phase1_kernel<" + std::to_string(D_QK) + ">";
  constexpr FailStyle T = FailStyle::Throw;
  require(T, p.h_kv == 1, l.c_str(), "params.h_kv == 1");
  require(T, p.topk % 64 == 0, l.c_str(), "params.topk % B_TOPK == 0");
  require(T, p.h_q == 64, l.c_str(), "params.h_q == B_H");
  require(T, p.d_qk == D_QK, l.c_str(), "params.d_qk == D_QK");
  std::string fault;
  silentDescriptor(tmaEncodable(p.q, 2, {p.stride_q_h_q, p.stride_q_s_q}) && dimsNonZero({p.s_q}), l, "q", fault);
  silentDescriptor(tmaEncodable(p.out, 2, {kDv, static_cast<std::int64_t>(kDv) * p.h_q}) && dimsNonZero({p.s_q}), l, "out", fault);
  require(T, kvMapEncodable(p), l.c_str(), "res == CUresult::CUDA_SUCCESS (kv tensor map)");
  const PrefillVariant v{"sparse_attn_fwd_kernel", D_QK == 576 ? "sm100_prefill_h64_k576" : "sm100_prefill_h64_k512", Kind::Head64, D_QK,
                         p.topk_length != nullptr};
  runPrefill(p, l, v, KernelArch::Sm100, p.s_q, fault);
}

template <int D_QK> void sm100Head128Prefill(const SparseAttnFwdParams& p) {
  const std::string l = "sm100::fwd::head128::run_fwd_phase1_kernel<" + std::to_string(D_QK) + ">";
  constexpr FailStyle T = FailStyle::Throw;
  require(T, p.h_kv == 1, l.c_str(), "params.h_kv == 1");
  require(T, p.topk % 128 == 0, l.c_str(), "params.topk % Kernel::B_TOPK == 0");
  require(T, p.h_q == 128, l.c_str(), "params.h_q == Kernel::B_H");
  require(T, p.d_qk == D_QK, l.c_str(), "params.d_qk == D_QK");
  std::string fault;
  silentDescriptor(tmaEncodable(p.q, 2, {p.stride_q_h_q, p.stride_q_s_q}) && dimsNonZero({p.s_q}), l, "q", fault);
  silentDescriptor(tmaEncodable(p.out, 2, {kDv, static_cast<std::int64_t>(kDv) * p.h_q}) && dimsNonZero({p.s_q}), l, "out", fault);
  require(T, kvMapEncodable(p), l.c_str(), "res == CUresult::CUDA_SUCCESS (kv tensor map)");
  const PrefillVariant v{"sparse_attn_fwd_kernel", D_QK == 576 ? "sm100_prefill_h128_k576" : "sm100_prefill_h128_k512", Kind::Head128,
                         D_QK, p.topk_length != nullptr};
  runPrefill(p, l, v, KernelArch::Sm100, 2LL * p.s_q, fault);  // a cluster of 2 CTAs per query token
}

void sm100SmallTopkPrefill(const SparseAttnFwdParams& p) {
  const std::string l = "sm100::fwd_for_small_topk::head128::run_fwd_for_small_topk_phase1_kernel<Prefill,512>";
  constexpr FailStyle T = FailStyle::Throw;
  require(T, p.h_kv == 1, l.c_str(), "params.h_kv == 1");
  require(T, p.topk % 64 == 0, l.c_str(), "params.topk % B_TOPK == 0");
  require(T, p.h_q == 128, l.c_str(), "params.h_q == H_Q");
  require(T, p.d_qk == 512, l.c_str(), "params.d_qk == D_QK");
  // All three maps come from ku::make_tensor_map, which asserts on an encoding failure.
  require(T, tmaEncodable(p.q, 2, {p.stride_q_h_q, 256, 64, p.stride_q_s_q}) && dimsNonZero({p.s_q}), l.c_str(),
          "cuTensorMapEncodeTiled(q) == CUDA_SUCCESS");
  require(T, kvMapEncodable(p), l.c_str(), "cuTensorMapEncodeTiled(kv) == CUDA_SUCCESS");
  require(T, tmaEncodable(p.out, 2, {kDv, 64, static_cast<std::int64_t>(kDv) * p.h_q, static_cast<std::int64_t>(kDv) * p.h_q}) &&
                 dimsNonZero({p.s_q}),
          l.c_str(), "cuTensorMapEncodeTiled(out) == CUDA_SUCCESS");
  const PrefillVariant v{"sparse_attn_fwd_for_small_topk_kernel", "sm100_prefill_small_topk", Kind::SmallTopk, 512, p.topk_length != nullptr};
  runPrefill(p, l, v, KernelArch::Sm100, 2LL * p.s_q, "");
}

}  // namespace
}  // namespace emu

namespace sm90::fwd {
template <int D_QK, bool HAVE_TOPK_LENGTH> void run_fwd_phase1_kernel(const SparseAttnFwdParams& params) {
  emu::sm90Prefill<D_QK, HAVE_TOPK_LENGTH>(params);
}
template void run_fwd_phase1_kernel<512, false>(const SparseAttnFwdParams& params);
template void run_fwd_phase1_kernel<512, true>(const SparseAttnFwdParams& params);
template void run_fwd_phase1_kernel<576, false>(const SparseAttnFwdParams& params);
template void run_fwd_phase1_kernel<576, true>(const SparseAttnFwdParams& params);
}  // namespace sm90::fwd

namespace sm100::fwd::head64 {
template <int D_QK> void run_fwd_phase1_kernel(const SparseAttnFwdParams& params) { emu::sm100Head64Prefill<D_QK>(params); }
template void run_fwd_phase1_kernel<512>(const SparseAttnFwdParams& params);
template void run_fwd_phase1_kernel<576>(const SparseAttnFwdParams& params);
}  // namespace sm100::fwd::head64

namespace sm100::fwd::head128 {
template <int D_QK> void run_fwd_phase1_kernel(const SparseAttnFwdParams& params) { emu::sm100Head128Prefill<D_QK>(params); }
template void run_fwd_phase1_kernel<512>(const SparseAttnFwdParams& params);
template void run_fwd_phase1_kernel<576>(const SparseAttnFwdParams& params);
}  // namespace sm100::fwd::head128

namespace sm100::fwd_for_small_topk::head128 {
// The prefill instantiation of the template whose decode instantiation sparse.cc defines.
template <>
void run_fwd_for_small_topk_phase1_kernel<SparseAttnFwdMode::Prefill, 512>(const SparseFwdArgT<SparseAttnFwdMode::Prefill>& params) {
  emu::sm100SmallTopkPrefill(params);
}
}  // namespace sm100::fwd_for_small_topk::head128
