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

// FP8 token layouts (docs/flashmla-interface.md#v32-cache, docs/flashmla-interface.md#model1-cache): e4m3 tiles from byte 0 of the record, then bf16 RoPE.
struct Fp8Shape {
  int dim, tiles, tile, ropeAt, recordBytes, scaleBytes;
  bool e8m0;  // MODEL1: one e8m0 byte per tile; V32: one float32 (LE) per tile
};
constexpr Fp8Shape kV32{576, 4, 128, 528, 656, 16, false};
constexpr Fp8Shape kModel1{512, 7, 64, 448, 576, 7, true};
const Fp8Shape& ShapeOf(Fp8Layout l) { return l == Fp8Layout::V32 ? kV32 : kModel1; }

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
  static FMLA_INLINE void Softmax(const TileBuffers& b, int tokens, float scale) {
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
        *p = x;
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

  static FMLA_INLINE void Step(const TileBuffers& b, int tokens, float scaleLog2) {
    Qk(b, tokens);
    Softmax(b, tokens, scaleLog2);
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
FMLA_AVX512 void Step512(const TileBuffers& b, int tokens, float scale) { K512::Step(b, tokens, scale); }

FMLA_AVX2 void Reset256(const TileBuffers& b) { K256::Reset(b); }
FMLA_AVX2 void CvtBf16_256(const TileBuffers& b, const uint16_t* s, int64_t ld, int n) { K256::CvtBf16(b, s, ld, n); }
FMLA_AVX2 void DqFp8_256(const TileBuffers& b, const uint8_t* s, int u0, int u1, Fp8Layout l) { K256::DqFp8(b, s, u0, u1, l); }
FMLA_AVX2 void Step256(const TileBuffers& b, int tokens, float scale) { K256::Step(b, tokens, scale); }

const TileKernels kAvx512{Reset512, CvtBf16_512, DqFp8_512, Step512};
const TileKernels kAvx2{Reset256, CvtBf16_256, DqFp8_256, Step256};
#endif

const char* IsaName(Isa isa) { return isa == Isa::Avx512 ? "avx512" : isa == Isa::Avx2 ? "avx2" : nullptr; }

constexpr std::size_t kAlign = 64;
std::size_t AlignUp(std::size_t n) { return (n + kAlign - 1) & ~(kAlign - 1); }

// JavaScript handle of one workspace: the buffers are 64-byte-aligned regions of one ArrayBuffer
// that JavaScript views with typed arrays (no copy per call). V8 allocated it (no external
// buffer, so it also works where those are refused) and never moves its backing store; this
// object keeps it alive.
class TileWrap : public Napi::ObjectWrap<TileWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "CpuTile",
                       {InstanceMethod("reset", &TileWrap::Reset), InstanceMethod("bf16", &TileWrap::Bf16),
                        InstanceMethod("fp8", &TileWrap::Fp8), InstanceMethod("step", &TileWrap::Step)});
  }

  // new Tile(rows, dim, dv, isa?) with rows ≥ 1, dim and dv multiples of 16, dv ≤ dim.
  explicit TileWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TileWrap>(info) {
    Napi::Env env = info.Env();
    const int64_t rows = Int(info, 0), dim = Int(info, 1), dv = Int(info, 2);
    if (rows < 1 || rows > 4096 || dim < 16 || dim > 4096 || dim % 16 != 0 || dv < 16 || dv > dim || dv % 16 != 0) {
      throw Napi::RangeError::New(env, "CpuTile(rows, dim, dv): rows in 1…4096, dim and dv multiples of 16, dv ≤ dim ≤ 4096");
    }
    isa_ = BestIsa();
    if (info.Length() > 3 && !info[3].IsUndefined()) {
      const std::string want = info[3].As<Napi::String>().Utf8Value();
      if (want == "avx2" && isa_ != Isa::None) isa_ = Isa::Avx2;
      else if (want != "avx512" || isa_ != Isa::Avx512) throw Napi::Error::New(env, "CpuTile: this CPU does not run isa " + want);
    }
    if (isa_ == Isa::None) throw Napi::Error::New(env, "CpuTile: this CPU lacks AVX2 and FMA");
    kernels_ = &KernelsFor(isa_);

    TileBuffers& b = b_;
    b.rows = static_cast<int>(rows);
    b.rowsPad = (b.rows + RowLanes(isa_) - 1) / RowLanes(isa_) * RowLanes(isa_);
    b.dim = static_cast<int>(dim);
    b.dv = static_cast<int>(dv);
    const std::size_t R = b.rowsPad, D = dim, T = kTile;
    // Bytes of q, qT, k, sT, m, l, alpha, o (float), vis (int32), rec, scl (double).
    const std::size_t sizes[] = {R * D, D * R, T * D, T * R, R, R, R, R * dv, R, 2 * T, 2 * T};
    std::size_t at[std::size(sizes)], end = 0;
    for (std::size_t i = 0; i < std::size(sizes); i++) {
      at[i] = end;
      end = AlignUp(end + 4 * sizes[i]);
    }
    // Zero-filled by V8; the regions start at the first 64-byte boundary inside it.
    Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(env, end + kAlign);
    char* data = static_cast<char*>(buffer.Data());
    const std::size_t skip = AlignUp(reinterpret_cast<std::uintptr_t>(data)) - reinterpret_cast<std::uintptr_t>(data);
    char* base = data + skip;
    float** floats[] = {&b.q, &b.qT, &b.k, &b.sT, &b.m, &b.l, &b.alpha, &b.o};
    for (std::size_t i = 0; i < std::size(floats); i++) *floats[i] = reinterpret_cast<float*>(base + at[i]);
    b.vis = reinterpret_cast<int32_t*>(base + at[8]);
    b.rec = reinterpret_cast<double*>(base + at[9]);
    b.scl = reinterpret_cast<double*>(base + at[10]);
    buffer_ = Napi::Persistent(buffer);
    Napi::Object self = info.This().As<Napi::Object>();
    self.Set("buffer", buffer);
    self.Set("isa", IsaName(isa_));
    self.Set("rowsPad", b.rowsPad);
    Napi::Object layout = Napi::Object::New(env);
    const char* names[] = {"q", "qT", "k", "sT", "m", "l", "alpha", "o", "vis", "rec", "scl"};
    for (std::size_t i = 0; i < std::size(names); i++) layout.Set(names[i], static_cast<double>(skip + at[i]));
    self.Set("layout", layout);
  }

 private:
  static int64_t Int(const Napi::CallbackInfo& info, std::size_t i) {
    if (!info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), "CpuTile: argument " + std::to_string(i) + " must be a number");
    return info[i].As<Napi::Number>().Int64Value();
  }

  template <class T>
  static Napi::TypedArrayOf<T> Source(const Napi::CallbackInfo& info, napi_typedarray_type type) {
    if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != type) {
      throw Napi::TypeError::New(info.Env(), "CpuTile: wrong source array type");
    }
    return info[0].As<Napi::TypedArrayOf<T>>();
  }

  static int Tokens(const Napi::CallbackInfo& info, std::size_t i) {
    const int64_t n = Int(info, i);
    if (n < 0 || n > kTile) throw Napi::RangeError::New(info.Env(), "CpuTile: a tile holds 0…64 tokens");
    return static_cast<int>(n);
  }

  Napi::Value Reset(const Napi::CallbackInfo&) {
    kernels_->reset(b_);
    return Napi::Value();
  }

  // bf16(src: Uint16Array, at, ld, tokens): the tile ← tokens rows of dim values at src[at + u·ld].
  Napi::Value Bf16(const Napi::CallbackInfo& info) {
    Napi::TypedArrayOf<uint16_t> src = Source<uint16_t>(info, napi_uint16_array);
    const int64_t at = Int(info, 1), ld = Int(info, 2);
    const int tokens = Tokens(info, 3);
    // at + (tokens − 1)·ld + dim ≤ n without forming the sum: at and ld are any int64 from
    // JavaScript, and a wrapped sum (ld = 2^62, tokens = 3) would pass and read far outside src.
    const int64_t room = static_cast<int64_t>(src.ElementLength()) - b_.dim;
    if (tokens > 0 && (at < 0 || ld < 0 || at > room || (tokens > 1 && ld > (room - at) / (tokens - 1)))) {
      throw Napi::RangeError::New(info.Env(), "CpuTile.bf16: the tile reaches past the source");
    }
    if (tokens > 0) kernels_->cvtBf16(b_, src.Data() + at, ld, tokens);
    return Napi::Value();
  }

  // fp8(src: Uint8Array, u0, u1, layout): tile slots [u0, u1) ← the tokens whose records and
  // scales start at rec[u], scl[u] (bytes of src); layout 0 = V32, 1 = MODEL1.
  Napi::Value Fp8(const Napi::CallbackInfo& info) {
    Napi::TypedArrayOf<uint8_t> src = Source<uint8_t>(info, napi_uint8_array);
    const int64_t u0 = Int(info, 1), u1 = Int(info, 2), kind = Int(info, 3);
    if (u0 < 0 || u1 > kTile || u0 > u1 || (kind != 0 && kind != 1)) throw Napi::RangeError::New(info.Env(), "CpuTile.fp8: bad slots or layout");
    const Fp8Layout layout = static_cast<Fp8Layout>(kind);
    const Fp8Shape& s = ShapeOf(layout);
    if (b_.dim != s.dim) throw Napi::RangeError::New(info.Env(), "CpuTile.fp8: the workspace dim does not match the layout");
    const int64_t n = static_cast<int64_t>(src.ElementLength());
    for (int64_t u = u0; u < u1; u++) {
      // Whole numbers in range (NaN fails every comparison).
      const double r = b_.rec[u], c = b_.scl[u];
      if (!(r >= 0 && r + s.recordBytes <= n && r == std::floor(r) && c >= 0 && c + s.scaleBytes <= n && c == std::floor(c))) {
        throw Napi::RangeError::New(info.Env(), "CpuTile.fp8: a token reaches past the source");
      }
    }
    kernels_->dqFp8(b_, src.Data(), static_cast<int>(u0), static_cast<int>(u1), layout);
    return Napi::Value();
  }

  // step(tokens, scaleLog2)
  Napi::Value Step(const Napi::CallbackInfo& info) {
    const int tokens = Tokens(info, 0);
    if (!info[1].IsNumber()) throw Napi::TypeError::New(info.Env(), "CpuTile.step: scaleLog2 must be a number");
    if (tokens > 0) kernels_->step(b_, tokens, info[1].As<Napi::Number>().FloatValue());
    return Napi::Value();
  }

  TileBuffers b_;
  Isa isa_ = Isa::None;
  const TileKernels* kernels_ = nullptr;
  Napi::Reference<Napi::ArrayBuffer> buffer_;
};

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

namespace {

// merge(dm, dl, do, sm, sl, so, rows, dv): folds the partial (sm, sl, so) into (dm, dl, do) by LSE
// (docs/flashmla-interface.md#split-kv), in double as src/reference/partial.ts `mergeInto` computes it, so both give the same
// floats; here the caller's serial merges of 2-thread calls cost ~10 µs instead of ~85 µs.
Napi::Value MergePartial(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  float* a[6];
  std::size_t n[6];
  for (std::size_t i = 0; i < 6; i++) {
    if (!info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
      throw Napi::TypeError::New(env, "cpuTile.merge: arguments 0–5 must be Float32Arrays");
    }
    Napi::Float32Array t = info[i].As<Napi::Float32Array>();
    a[i] = t.Data();
    n[i] = t.ElementLength();
  }
  if (!info[6].IsNumber() || !info[7].IsNumber()) throw Napi::TypeError::New(env, "cpuTile.merge: rows and dv must be numbers");
  const int64_t rows = info[6].As<Napi::Number>().Int64Value(), dv = info[7].As<Napi::Number>().Int64Value();
  const auto fits = [&](std::size_t i, int64_t want) { return want >= 0 && static_cast<int64_t>(n[i]) >= want; };
  // rows·dv ≤ n by division: the product of two int64 from JavaScript can wrap (4 · 2^62 → 0).
  const auto fitsRows = [&](std::size_t i) { return dv == 0 || rows <= static_cast<int64_t>(n[i]) / dv; };
  if (!(fits(0, rows) && fits(1, rows) && fits(3, rows) && fits(4, rows) && dv >= 0 && fitsRows(2) && fitsRows(5))) {
    throw Napi::RangeError::New(env, "cpuTile.merge: arrays shorter than rows (m, l) or rows × dv (o)");
  }
  float *dm = a[0], *dl = a[1], *dO = a[2];
  const float *sm = a[3], *sl = a[4], *sO = a[5];
  for (int64_t r = 0; r < rows; r++) {
    const double ms = sm[r];
    if (ms == -std::numeric_limits<double>::infinity()) continue;
    const double md = dm[r];
    const double M = ms > md ? ms : md;
    const double ad = std::exp2(md - M), as = std::exp2(ms - M);
    dl[r] = static_cast<float>(dl[r] * ad + sl[r] * as);
    float* o = dO + r * dv;
    const float* so = sO + r * dv;
    for (int64_t x = 0; x < dv; x++) o[x] = static_cast<float>(o[x] * ad + so[x] * as);
    dm[r] = static_cast<float>(M);
  }
  return Napi::Value();
}

// bf16Rows(o, factors, dst, at, rows, dv): dst[at[r] + x] ← bf16(o[r·dv + x] · factors[r]) for
// x < dv, rows with at[r] < 0 skipped. The product is taken in double and rounded to float, then
// to bf16 by round-to-nearest-even (NaN → quiet NaN, sign kept), as src/formats/bf16.ts
// `f32ToBf16` does: the calling thread's final rounding of a group costs ~15 µs, not ~150 µs.
Napi::Value Bf16Rows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const auto is = [&](std::size_t i, napi_typedarray_type t) {
    return info[i].IsTypedArray() && info[i].As<Napi::TypedArray>().TypedArrayType() == t;
  };
  if (!is(0, napi_float32_array) || !is(1, napi_float64_array) || !is(2, napi_uint16_array) || !is(3, napi_float64_array) ||
      !info[4].IsNumber() || !info[5].IsNumber()) {
    throw Napi::TypeError::New(env, "cpuTile.bf16Rows(o: Float32Array, factors: Float64Array, dst: Uint16Array, at: Float64Array, rows, dv)");
  }
  Napi::Float32Array o = info[0].As<Napi::Float32Array>();
  Napi::Float64Array factors = info[1].As<Napi::Float64Array>(), at = info[3].As<Napi::Float64Array>();
  Napi::Uint16Array dst = info[2].As<Napi::Uint16Array>();
  const int64_t rows = info[4].As<Napi::Number>().Int64Value(), dv = info[5].As<Napi::Number>().Int64Value();
  // rows·dv ≤ length(o) by division: the product of two int64 from JavaScript can wrap.
  if (rows < 0 || dv < 0 || static_cast<int64_t>(factors.ElementLength()) < rows || static_cast<int64_t>(at.ElementLength()) < rows ||
      (dv > 0 && rows > static_cast<int64_t>(o.ElementLength()) / dv)) {
    throw Napi::RangeError::New(env, "cpuTile.bf16Rows: arrays shorter than rows (factors, at) or rows × dv (o)");
  }
  const double n = static_cast<double>(dst.ElementLength());
  for (int64_t r = 0; r < rows; r++) {
    const double a = at[r];
    if (a < 0) continue;
    if (!(a == std::floor(a) && a + static_cast<double>(dv) <= n)) throw Napi::RangeError::New(env, "cpuTile.bf16Rows: a row reaches past dst");
  }
  for (int64_t r = 0; r < rows; r++) {
    if (at[r] < 0) continue;
    uint16_t* out = dst.Data() + static_cast<int64_t>(at[r]);
    const float* src = o.Data() + r * dv;
    const double f = factors[r];
    for (int64_t x = 0; x < dv; x++) {
      const float v = static_cast<float>(src[x] * f);
      uint32_t bits;
      std::memcpy(&bits, &v, 4);
      out[x] = (bits & 0x7fffffffu) > 0x7f800000u ? static_cast<uint16_t>(((bits >> 16) & 0x8000u) | 0x7fc0u)
                                                  : static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
    }
  }
  return Napi::Value();
}

// gather(src: Uint8Array, dst: Uint8Array, runs: Float64Array, count): for each of count runs
// (srcAt, dstAt, bytes) in `runs`, dst[dstAt …] ← src[srcAt …]. The staging of sparse tokens for
// worker threads (src/reference/share.ts): one call per item instead of a JavaScript copy per
// 656-byte token, ~4× less of the calling thread's time.
Napi::Value Gather(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const auto is = [&](std::size_t i, napi_typedarray_type t) {
    return info[i].IsTypedArray() && info[i].As<Napi::TypedArray>().TypedArrayType() == t;
  };
  if (!is(0, napi_uint8_array) || !is(1, napi_uint8_array) || !is(2, napi_float64_array) || !info[3].IsNumber()) {
    throw Napi::TypeError::New(env, "cpuTile.gather(src: Uint8Array, dst: Uint8Array, runs: Float64Array, count)");
  }
  Napi::Uint8Array src = info[0].As<Napi::Uint8Array>(), dst = info[1].As<Napi::Uint8Array>();
  Napi::Float64Array runs = info[2].As<Napi::Float64Array>();
  const int64_t count = info[3].As<Napi::Number>().Int64Value();
  // 3·count ≤ length(runs) by division: 3·count wraps for count ≥ 2^62 and would pass.
  if (count < 0 || count > static_cast<int64_t>(runs.ElementLength()) / 3) throw Napi::RangeError::New(env, "cpuTile.gather: count exceeds runs");
  const double ns = static_cast<double>(src.ElementLength()), nd = static_cast<double>(dst.ElementLength());
  for (int64_t r = 0; r < count; r++) {
    const double a = runs[3 * r], b = runs[3 * r + 1], n = runs[3 * r + 2];
    // Whole numbers in range (NaN fails every comparison).
    if (!(a >= 0 && b >= 0 && n >= 0 && a == std::floor(a) && b == std::floor(b) && n == std::floor(n) && a + n <= ns && b + n <= nd)) {
      throw Napi::RangeError::New(env, "cpuTile.gather: a run reaches past src or dst");
    }
  }
  for (int64_t r = 0; r < count; r++) {
    std::memcpy(dst.Data() + static_cast<int64_t>(runs[3 * r + 1]), src.Data() + static_cast<int64_t>(runs[3 * r]),
                static_cast<std::size_t>(runs[3 * r + 2]));
  }
  return Napi::Value();
}

}  // namespace

Napi::Object CpuTileExports(Napi::Env env) {
  Napi::Object o = Napi::Object::New(env);
  const char* isa = IsaName(BestIsa());
  o.Set("isa", isa != nullptr ? Napi::Value(Napi::String::New(env, isa)) : env.Null());
  o.Set("Tile", TileWrap::Define(env));
  o.Set("merge", Napi::Function::New(env, MergePartial, "merge"));
  o.Set("bf16Rows", Napi::Function::New(env, Bf16Rows, "bf16Rows"));
  o.Set("gather", Napi::Function::New(env, Gather, "gather"));
  return o;
}

}  // namespace fmla::cpu
