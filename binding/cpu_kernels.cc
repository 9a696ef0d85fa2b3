// The SIMD kernels of the reference's native tier and their run-time dispatch (cpu_tile.h).
#include "cpu_tile.h"

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>

// The kernels are written once against GCC vector extensions, whose operations take the width of
// the function they are inlined into: the same always_inline body becomes AVX-512 (zmm, 32
// registers) inside a target("avx512f,…") entry point and AVX2 inside a target("avx2,fma") one.
// Vector values never cross a non-inlined call, so no vector ABI depends on the build flags.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace fmla::cpu {
namespace {

#define FMLA_INLINE inline __attribute__((always_inline))

// Register blocking. Zen 4 issues one 512-bit (two 256-bit) FMA per cycle, Zen 5 two 512-bit;
// with 4 cycles of latency, every block keeps at least 16 independent accumulators.
// Q·Kᵀ: QRB row vectors × QT tokens of accumulators (rows in lanes, so no horizontal sums);
// P·V: PR rows × PX column vectors of o held in registers over the whole tile.
struct Avx512Shape {
  static constexpr int N = 16, QRB = 3, QT = 8, PR = 6, PX = 4;
};
struct Avx2Shape {
  static constexpr int N = 8, QRB = 3, QT = 4, PR = 6, PX = 2;
};

// Vector types of N lanes and their lane conversions. One explicit specialisation per width:
// GCC 12 rejects __builtin_convertvector on vector types that depend on a template parameter.
template <int N>
struct Lanes;

#define FMLA_LANES(n)                                                                            \
  template <>                                                                                    \
  struct Lanes<n> {                                                                              \
    typedef float F __attribute__((vector_size(4 * n), aligned(4), may_alias));                  \
    typedef int32_t I __attribute__((vector_size(4 * n), aligned(4), may_alias));                \
    typedef uint32_t U __attribute__((vector_size(4 * n), aligned(4), may_alias));               \
    typedef uint16_t H __attribute__((vector_size(2 * n), aligned(2), may_alias));               \
    typedef uint8_t B __attribute__((vector_size(n), aligned(1), may_alias));                    \
    static FMLA_INLINE U Widen(H h) { return __builtin_convertvector(h, U); }                    \
    static FMLA_INLINE U Widen(B b) { return __builtin_convertvector(b, U); }                    \
    static FMLA_INLINE I Truncate(F f) { return __builtin_convertvector(f, I); }                 \
  };
FMLA_LANES(16)
FMLA_LANES(8)
#undef FMLA_LANES

template <class S>
struct Kernels {
  static constexpr int N = S::N;
  using L = Lanes<N>;
  using F = typename L::F;
  using I = typename L::I;
  using U = typename L::U;
  using H = typename L::H;
  using B = typename L::B;

  static FMLA_INLINE F Splat(float x) { return F{} + x; }
  static FMLA_INLINE U SplatU(uint32_t x) { return U{} + x; }
  static FMLA_INLINE F Max(F a, F b) { return a > b ? a : b; }

  static FMLA_INLINE void Reset(const TileBuffers& b) {
    for (int d = 0; d < b.dim; d++) {
      for (int r = 0; r < b.rowsPad; r++) b.qT[d * b.rowsPad + r] = b.q[r * b.dim + d];
    }
    for (int r = 0; r < b.rowsPad; r += N) {
      *reinterpret_cast<F*>(b.m + r) = Splat(-std::numeric_limits<float>::infinity());
      *reinterpret_cast<F*>(b.l + r) = F{};
    }
    std::memset(b.o, 0, sizeof(float) * b.rowsPad * b.dv);
  }

  // bf16 → fp32 is a 16-bit shift (dim % N == 0).
  static FMLA_INLINE void Bf16Row(const uint16_t* src, int n, float* dst) {
    for (int d = 0; d < n; d += N) {
      *reinterpret_cast<U*>(dst + d) = L::Widen(*reinterpret_cast<const H*>(src + d)) << 16;
    }
  }

  // A dense page usually comes from memory, not cache: each token row is fetched 8 rows ahead
  // (with few query rows per page, h_q = 16, the load is a third of the tile's time).
  static FMLA_INLINE void CvtBf16(const TileBuffers& b, const uint16_t* src, int64_t ld, int tokens) {
    for (int u = 0; u < tokens; u++) {
      if (u + 8 < tokens) {
        for (int d = 0; d < b.dim; d += 32) __builtin_prefetch(src + (u + 8) * ld + d);
      }
      Bf16Row(src + u * ld, b.dim, b.k + u * b.dim);
    }
  }

  // A gathered tile: token u's bf16 row at rows[u], each fetched 4 rows ahead (kv rows of a sparse
  // prefill lie anywhere in kv).
  static FMLA_INLINE void RowsBf16(const TileBuffers& b, const uint16_t* const* rows, int tokens) {
    for (int u = 0; u < tokens; u++) {
      if (u + 4 < tokens) {
        for (int d = 0; d < b.dim; d += 32) __builtin_prefetch(rows[u + 4] + d);
      }
      Bf16Row(rows[u], b.dim, b.k + u * b.dim);
    }
  }

  // e4m3fn codes × scale, rounded to bf16 (docs/flashmla-interface.md#quantization: the kernels dequantise to bf16), exactly as
  // wasm/tile.wat: the magnitude bits at bit 20 form a float32 2^120 too small (subnormals
  // included), 0x7F is NaN, then round-to-nearest-even to bf16 kept as float32 bits.
  static FMLA_INLINE void E4m3(const uint8_t* codes, int n, float scale, float* dst) {
    for (int i = 0; i < n; i += N) {
      U c = L::Widen(*reinterpret_cast<const B*>(codes + i));
      U mag = c & 0x7f;
      F x = reinterpret_cast<F>(mag << 20) * 0x1p120f;
      x = mag == 0x7f ? reinterpret_cast<F>(SplatU(0x7fc00000u)) : x;
      x = reinterpret_cast<F>(reinterpret_cast<U>(x) | ((c & 0x80) << 24)) * scale;
      U bits = reinterpret_cast<U>(x);
      *reinterpret_cast<U*>(dst + i) = (bits + 0x7fff + ((bits >> 16) & 1)) & 0xffff0000u;
    }
  }

  static FMLA_INLINE void DqFp8(const TileBuffers& b, const uint8_t* src, int u0, int u1, Fp8Layout layout) {
    const Fp8Shape& s = ShapeOf(layout);
    for (int u = u0; u < u1; u++) {
      const uint8_t* rec = src + static_cast<int64_t>(b.rec[u]);
      const uint8_t* scl = src + static_cast<int64_t>(b.scl[u]);
      float* dst = b.k + u * b.dim;
      for (int j = 0; j < s.tiles; j++) {
        float scale;
        if (s.e8m0) {
          // e8m0: 2^(e − 127), 0xFF is NaN (docs/flashmla-interface.md#model1-cache).
          scale = scl[j] == 0xff ? std::numeric_limits<float>::quiet_NaN() : std::ldexp(1.0f, scl[j] - 127);
        } else {
          std::memcpy(&scale, scl + 4 * j, sizeof scale);
        }
        E4m3(rec + j * s.tile, s.tile, scale, dst + j * s.tile);
      }
      uint16_t rope[64];
      std::memcpy(rope, rec + s.ropeAt, sizeof rope);
      Bf16Row(rope, s.dim - s.tiles * s.tile, dst + s.tiles * s.tile);
    }
  }

  // sT[t][r] = Σ_d q[r][d]·k[t][d] for RB row vectors from qT and T tokens from k.
  template <int RB, int T>
  static FMLA_INLINE void QkBlock(const float* qT, int ld, const float* k, int dim, float* sT) {
    F acc[RB][T];
#pragma GCC unroll 8
    for (int i = 0; i < RB; i++) {
#pragma GCC unroll 16
      for (int j = 0; j < T; j++) acc[i][j] = F{};
    }
    for (int d = 0; d < dim; d++) {
      F q[RB];
#pragma GCC unroll 8
      for (int i = 0; i < RB; i++) q[i] = *reinterpret_cast<const F*>(qT + d * ld + i * N);
#pragma GCC unroll 16
      for (int j = 0; j < T; j++) {
        const float kv = k[j * dim + d];
#pragma GCC unroll 8
        for (int i = 0; i < RB; i++) acc[i][j] += q[i] * kv;
      }
    }
#pragma GCC unroll 16
    for (int j = 0; j < T; j++) {
#pragma GCC unroll 8
      for (int i = 0; i < RB; i++) *reinterpret_cast<F*>(sT + j * ld + i * N) = acc[i][j];
    }
  }

  template <int RB, int T>
  static FMLA_INLINE void QkRows(const TileBuffers& b, int v, int t) {
    QkBlock<RB, T>(b.qT + v * N, b.rowsPad, b.k + t * b.dim, b.dim, b.sT + t * b.rowsPad + v * N);
  }

  // Tokens are computed in groups of 2·QT up to 64: the tile's unused k rows hold finite leftovers
  // whose logits the softmax never reads. Row vectors go QRB at a time; a remainder of one after
  // at least one full block is done as two blocks of two, and a lone row vector takes 2·QT tokens
  // at once, so every block has at least 2·QT accumulators.
  static FMLA_INLINE void Qk(const TileBuffers& b, int tokens) {
    static_assert(kTile % (2 * S::QT) == 0 && S::QRB == 3, "Qk's remainders assume blocks of 3 row vectors");
    const int nv = b.rowsPad / N;
    for (int t = 0; t < tokens; t += 2 * S::QT) {
      if (nv == 1) {
        QkRows<1, 2 * S::QT>(b, 0, t);
        continue;
      }
      const int full = nv % 3 == 1 ? nv / 3 - 1 : nv / 3;
      int v = 0;
      for (; v < 3 * full; v += 3) {
        QkRows<3, S::QT>(b, v, t);
        QkRows<3, S::QT>(b, v, t + S::QT);
      }
      for (; v < nv; v += 2) {
        QkRows<2, S::QT>(b, v, t);
        QkRows<2, S::QT>(b, v, t + S::QT);
      }
    }
  }

  // 2^x per lane: wasm/tile.wat's Cephes exp2f polynomial (~2e-7 relative) on the fraction around
  // the nearest integer; 0 below −126, so −∞ (masked logits, an empty running max) gives exact 0.
  static FMLA_INLINE F Exp2(F x) {
    const F xc = x < -127.0f ? Splat(-127.0f) : x;
    // Round to nearest even by the 1.5·2^23 shift (|xc| ≤ 2^22 here), as f32x4.nearest.
    const F n = (xc + 0x1.8p23f) - 0x1.8p23f;
    const F f = xc - n;
    F p = f * 1.535336188319500e-4f + 1.339887440266574e-3f;
    p = f * p + 9.618437357674640e-3f;
    p = f * p + 5.550332471162809e-2f;
    p = f * p + 2.402264791363012e-1f;
    p = f * p + 6.931472028550421e-1f;
    p = f * p + 1.0f;
    p = p * reinterpret_cast<F>((L::Truncate(n) + 127) << 23);
    return x < -126.0f ? F{} : p;
  }

  // Online softmax (base 2, docs/flashmla-interface.md#split-kv) for N rows at a time (rows in lanes): logits × scale for
  // t < vis[r], −∞ otherwise; p = 2^(s − m_new); l ← l·alpha + Σ p with alpha = 2^(m_old − m_new);
  // o is rescaled by alpha in Pv. A row with nothing visible so far gets p = 0 and alpha = 1.
  // With roundP, the p that Pv reads are rounded to bf16 (nearest even; p is finite and ≥ 0) and l
  // sums them unrounded (docs/reference-backend.md#prefill).
  static FMLA_INLINE void Softmax(const TileBuffers& b, int tokens, float scale, bool roundP) {
    const F ninf = Splat(-std::numeric_limits<float>::infinity());
    for (int r = 0; r < b.rowsPad; r += N) {
      const I lim = *reinterpret_cast<const I*>(b.vis + r);
      F mx = ninf;
      for (int t = 0; t < tokens; t++) {
        F* p = reinterpret_cast<F*>(b.sT + t * b.rowsPad + r);
        const F x = (I{} + t) < lim ? *p * scale : ninf;
        *p = x;
        mx = Max(mx, x);
      }
      F* m = reinterpret_cast<F*>(b.m + r);
      const F mOld = *m;
      const F mNew = Max(mOld, mx);
      const I dead = mNew == ninf;
      F sum{};
      for (int t = 0; t < tokens; t++) {
        F* p = reinterpret_cast<F*>(b.sT + t * b.rowsPad + r);
        const F x = dead ? F{} : Exp2(*p - mNew);
        const U bits = reinterpret_cast<U>(x);
        *p = roundP ? reinterpret_cast<F>((bits + 0x7fff + ((bits >> 16) & 1)) & 0xffff0000u) : x;
        sum += x;
      }
      const F alpha = dead ? Splat(1.0f) : Exp2(mOld - mNew);
      F* l = reinterpret_cast<F*>(b.l + r);
      *l = *l * alpha + sum;
      *m = mNew;
      *reinterpret_cast<F*>(b.alpha + r) = alpha;
    }
  }

  // o[r][x…] ← o·alpha[r] + Σ_t p[r][t]·v[t][x…] for R rows × X column vectors held in registers.
  template <int R, int X>
  static FMLA_INLINE void PvBlock(const TileBuffers& b, int r, int x, int tokens) {
    F acc[R][X];
#pragma GCC unroll 8
    for (int i = 0; i < R; i++) {
      const float a = b.alpha[r + i];
#pragma GCC unroll 8
      for (int j = 0; j < X; j++) acc[i][j] = *reinterpret_cast<const F*>(b.o + (r + i) * b.dv + x + j * N) * a;
    }
    for (int t = 0; t < tokens; t++) {
      F v[X];
#pragma GCC unroll 8
      for (int j = 0; j < X; j++) v[j] = *reinterpret_cast<const F*>(b.k + t * b.dim + x + j * N);
      const float* p = b.sT + t * b.rowsPad + r;
#pragma GCC unroll 8
      for (int i = 0; i < R; i++) {
        const float pi = p[i];
#pragma GCC unroll 8
        for (int j = 0; j < X; j++) acc[i][j] += pi * v[j];
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < R; i++) {
#pragma GCC unroll 8
      for (int j = 0; j < X; j++) *reinterpret_cast<F*>(b.o + (r + i) * b.dv + x + j * N) = acc[i][j];
    }
  }

  template <int X>
  static FMLA_INLINE void PvColumns(const TileBuffers& b, int x, int tokens) {
    static_assert(S::PR <= 6, "PvColumns covers every remainder of PR ≤ 6");
    int r = 0;
    for (; r + S::PR <= b.rows; r += S::PR) PvBlock<S::PR, X>(b, r, x, tokens);
    switch (b.rows - r) {
      case 5: PvBlock<5, X>(b, r, x, tokens); break;
      case 4: PvBlock<4, X>(b, r, x, tokens); break;
      case 3: PvBlock<3, X>(b, r, x, tokens); break;
      case 2: PvBlock<2, X>(b, r, x, tokens); break;
      case 1: PvBlock<1, X>(b, r, x, tokens); break;
      default: break;
    }
  }

  // Column strips outer, rows inner: one strip of the V tile (64 × PX·N floats) stays in L1 while
  // every row passes over it.
  static FMLA_INLINE void Pv(const TileBuffers& b, int tokens) {
    int x = 0;
    for (; x + S::PX * N <= b.dv; x += S::PX * N) PvColumns<S::PX>(b, x, tokens);
    for (; x < b.dv; x += N) PvColumns<1>(b, x, tokens);
  }

  static FMLA_INLINE void Step(const TileBuffers& b, int tokens, float scaleLog2, bool roundP) {
    Qk(b, tokens);
    Softmax(b, tokens, scaleLog2, roundP);
    Pv(b, tokens);
  }
};

#if defined(__x86_64__)
#define FMLA_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma")))
#define FMLA_AVX2 __attribute__((target("avx2,fma")))
using K512 = Kernels<Avx512Shape>;
using K256 = Kernels<Avx2Shape>;

FMLA_AVX512 void Reset512(const TileBuffers& b) { K512::Reset(b); }
FMLA_AVX512 void CvtBf16_512(const TileBuffers& b, const uint16_t* s, int64_t ld, int n) { K512::CvtBf16(b, s, ld, n); }
FMLA_AVX512 void DqFp8_512(const TileBuffers& b, const uint8_t* s, int u0, int u1, Fp8Layout l) { K512::DqFp8(b, s, u0, u1, l); }
FMLA_AVX512 void RowsBf16_512(const TileBuffers& b, const uint16_t* const* rows, int n) { K512::RowsBf16(b, rows, n); }
FMLA_AVX512 void Step512(const TileBuffers& b, int tokens, float scale, bool roundP) { K512::Step(b, tokens, scale, roundP); }

FMLA_AVX2 void Reset256(const TileBuffers& b) { K256::Reset(b); }
FMLA_AVX2 void CvtBf16_256(const TileBuffers& b, const uint16_t* s, int64_t ld, int n) { K256::CvtBf16(b, s, ld, n); }
FMLA_AVX2 void DqFp8_256(const TileBuffers& b, const uint8_t* s, int u0, int u1, Fp8Layout l) { K256::DqFp8(b, s, u0, u1, l); }
FMLA_AVX2 void RowsBf16_256(const TileBuffers& b, const uint16_t* const* rows, int n) { K256::RowsBf16(b, rows, n); }
FMLA_AVX2 void Step256(const TileBuffers& b, int tokens, float scale, bool roundP) { K256::Step(b, tokens, scale, roundP); }

const TileKernels kAvx512{Reset512, CvtBf16_512, DqFp8_512, RowsBf16_512, Step512};
const TileKernels kAvx2{Reset256, CvtBf16_256, DqFp8_256, RowsBf16_256, Step256};
#endif

}  // namespace

Isa BestIsa() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  // libgcc's checks include the OS's saving of the vector registers (XCR0).
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("fma")) {
    return Isa::Avx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
#endif
  return Isa::None;
}

int RowLanes(Isa isa) { return isa == Isa::Avx512 ? 16 : 8; }

const TileKernels& KernelsFor(Isa isa) {
#if defined(__x86_64__)
  if (isa == Isa::Avx512) return kAvx512;
  if (isa == Isa::Avx2) return kAvx2;
#endif
  std::abort();  // callers check BestIsa() first
}

}  // namespace fmla::cpu
