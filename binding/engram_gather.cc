// The row gathers of engram_gather.h and their run-time choice of instruction set.
#include "engram_gather.h"

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "fp8_dequant.h"

namespace fmla::engram {
namespace {

#define FMLA_INLINE inline __attribute__((always_inline))

// Rows ahead whose cache lines are prefetched: random rows of a table far larger than the caches
// miss every time, and a few misses in flight hide most of the latency
// (docs/engram-native.md#gathers).
constexpr std::size_t kAhead = 8;
constexpr uint64_t kLine = 64;
// The L1-resident buffer fp8 rows are copied to before they are dequantised (half a 32 KiB L1).
constexpr std::size_t kStageBytes = 16384;

FMLA_INLINE void PrefetchSpan(const uint8_t* p, uint64_t bytes) {
  for (uint64_t o = 0; o < bytes; o += kLine) __builtin_prefetch(p + o, 0, 3);
  __builtin_prefetch(p + bytes - 1, 0, 3);  // the last line when the span starts mid-line
}

// Where row `id`'s weights and scales start.
struct Row {
  const uint8_t* weights;
  const uint8_t* scales;
};

FMLA_INLINE Row RowAt(const uint8_t* base, const Geometry& g, int32_t id) {
  const uint64_t i = static_cast<uint64_t>(id);
  return {base + g.weightOffset + i * g.weightStride, base + g.scaleOffset + i * g.scaleStride};
}

FMLA_INLINE void Prefetch(const uint8_t* base, const Geometry& g, bool packed, int32_t id) {
  const Row r = RowAt(base, g, id);
  if (packed) {
    PrefetchSpan(r.weights, g.recordBytes());
  } else {
    PrefetchSpan(r.weights, g.weightBytes());
    PrefetchSpan(r.scales, g.scaleBytes());
  }
}

// Calls emit(i, row) for each id, with the rows kAhead places later prefetched.
template <class Emit>
FMLA_INLINE void ForRows(const uint8_t* base, const Geometry& g, const int32_t* ids, std::size_t n, Emit& emit) {
  const bool packed = g.packed();
  const std::size_t warm = n < kAhead ? n : kAhead;
  for (std::size_t i = 0; i < warm; i++) Prefetch(base, g, packed, ids[i]);
  for (std::size_t i = 0; i < n; i++) {
    if (i + kAhead < n) Prefetch(base, g, packed, ids[i + kAhead]);
    emit(i, RowAt(base, g, ids[i]));
  }
}

// 32 bytes at any address, as one vector (two with SSE2).
typedef uint8_t Bytes32 __attribute__((vector_size(32), aligned(1), may_alias));

// A V4.1 row (256 e4m3 bytes + 8 scales, packed) as eight 32-byte and one 8-byte move: a
// fixed-size memcpy of 264 bytes becomes `rep movsq` in GCC, whose start-up cost exceeds the copy.
struct CopyPacked264 {
  uint8_t* out;
  FMLA_INLINE void operator()(std::size_t i, Row r) {
    uint8_t* o = out + i * 264;
    for (int k = 0; k < 8; k++) *reinterpret_cast<Bytes32*>(o + 32 * k) = *reinterpret_cast<const Bytes32*>(r.weights + 32 * k);
    std::memcpy(o + 256, r.weights + 256, 8);
  }
};

struct CopyPacked {
  uint8_t* out;
  uint64_t bytes;
  FMLA_INLINE void operator()(std::size_t i, Row r) { std::memcpy(out + i * bytes, r.weights, bytes); }
};

struct CopySplit {
  uint8_t* out;
  uint64_t weightBytes, scaleBytes;
  FMLA_INLINE void operator()(std::size_t i, Row r) {
    uint8_t* o = out + i * (weightBytes + scaleBytes);
    std::memcpy(o, r.weights, weightBytes);
    std::memcpy(o + weightBytes, r.scales, scaleBytes);
  }
};

// 32 values of one scale in portable C++: a fixed trip count and no branch, which GCC turns into
// one vector loop for whatever instruction set the entry point is compiled for (SSE2 baseline).
struct PortableGroup {
  template <class O>
  static FMLA_INLINE void Run(const uint8_t* __restrict w, uint8_t s, typename O::T* __restrict o) {
    const float scale = ScaleOf(s);
    const uint32_t scaleNan = ScaleNanMask(s);
    for (uint32_t j = 0; j < 32; j++) o[j] = O::Exact(DequantBits(w[j], scale, scaleNan));
  }
  template <class O>
  static FMLA_INLINE void Row(const uint8_t* w, const uint8_t* s, uint32_t groups, typename O::T* o) {
    for (uint32_t g = 0; g < groups; g++) Run<O>(w + 32 * g, s[g], o + 32 * g);
  }
};

#if defined(__x86_64__)
#define FMLA_AVX2 __attribute__((target("avx2,f16c")))
// The same 32 values through float16 (docs/engram-native.md#vectorisation): e4m3fn S.EEEE.MMM
// placed at float16 bits 7…14 (sign at 15) is a float16 with the same exponent field and bias 15
// instead of 7, subnormals included, i.e. exactly e4m3 · 2^-8; vcvtph2ps widens 8 of them to
// float32 in one instruction, exactly and without the subnormal assist. The float16 words are
// built with byte operations and interleaved (high byte: sign and the top 6 magnitude bits, low
// byte: the last magnitude bit at bit 7); the e4m3 NaN code becomes the float16 quiet NaN 0x7E00
// with its sign, which widens to kQuietNan. One multiply by 2^(s − 119) (a normal float32 for
// s ≤ 246) then gives e4m3 · 2^(s − 127) exactly, as in DequantBits; s in 247…254 takes two
// multiplies (2^8, then the scale) and s = 255 gives NaN with the weight's sign. That choice is
// made once per 32 values (a branch on the scale byte, not on any weight byte).
struct F16cGroup {
  template <class O>
  static FMLA_AVX2 FMLA_INLINE void Run(const uint8_t* __restrict w, uint8_t s, typename O::T* __restrict o) {
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
    const __m256i sign = _mm256_and_si256(b, _mm256_set1_epi8(static_cast<char>(0x80)));
    const __m256i nan = _mm256_cmpeq_epi8(_mm256_and_si256(b, _mm256_set1_epi8(0x7F)), _mm256_set1_epi8(0x7F));
    // 16-bit shifts move bits across the bytes of a word; the masks keep each byte's own.
    const __m256i top = _mm256_or_si256(sign, _mm256_and_si256(_mm256_srli_epi16(b, 1), _mm256_set1_epi8(0x3F)));
    const __m256i high = _mm256_blendv_epi8(top, _mm256_or_si256(sign, _mm256_set1_epi8(0x7E)), nan);
    const __m256i low = _mm256_andnot_si256(nan, _mm256_and_si256(_mm256_slli_epi16(b, 7), _mm256_set1_epi8(static_cast<char>(0x80))));
    // unpack works within 128-bit halves: lo holds values 0…7 and 16…23, hi 8…15 and 24…31.
    const __m256i lo = _mm256_unpacklo_epi8(low, high), hi = _mm256_unpackhi_epi8(low, high);
    const __m256 x[4] = {_mm256_cvtph_ps(_mm256_castsi256_si128(lo)), _mm256_cvtph_ps(_mm256_castsi256_si128(hi)),
                         _mm256_cvtph_ps(_mm256_extracti128_si256(lo, 1)), _mm256_cvtph_ps(_mm256_extracti128_si256(hi, 1))};
    __m256 v[4];
    if (s <= 246) {
      const __m256 scale = _mm256_set1_ps(std::bit_cast<float>(static_cast<uint32_t>(s + 8) << 23));  // 2^(s − 119)
      for (int k = 0; k < 4; k++) v[k] = _mm256_mul_ps(x[k], scale);
      // Every product is a multiple of 2^(s − 136) with at most 4 significant bits: for s ≥ 3 that
      // is a bf16 value (normal, or a multiple of 2^-133 below 2^-126), so bf16 is the top half.
      if (s >= 3) return O::Store(v, o, true);
    } else if (s != 255) {
      const __m256 two8 = _mm256_set1_ps(0x1p8f), scale = _mm256_set1_ps(ScaleOf(s));
      for (int k = 0; k < 4; k++) v[k] = _mm256_mul_ps(_mm256_mul_ps(x[k], two8), scale);
    } else {
      const __m256 signBit = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(0x80000000u)));
      const __m256 quiet = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(kQuietNan)));
      for (int k = 0; k < 4; k++) v[k] = _mm256_or_ps(_mm256_and_ps(x[k], signBit), quiet);
    }
    O::Store(v, o, false);
  }
  // A whole row per call: not forced inline, since code of the default target (the row loop) may
  // call it but not inline AVX2 code.
  template <class O>
  static FMLA_AVX2 void Row(const uint8_t* w, const uint8_t* s, uint32_t groups, typename O::T* o) {
    for (uint32_t g = 0; g < groups; g++) Run<O>(w + 32 * g, s[g], o + 32 * g);
  }
};
#endif

// The output of a dequantised value given by its float32 bits: as is, or rounded to bf16.
struct F32Out {
  using T = float;
  static FMLA_INLINE float Exact(uint32_t bits) { return std::bit_cast<float>(bits); }
#if defined(__x86_64__)
  static FMLA_AVX2 FMLA_INLINE void Store(const __m256 (&v)[4], float* o, bool) {
    for (int k = 0; k < 4; k++) _mm256_storeu_ps(o + 8 * k, v[k]);
  }
#endif
};
struct Bf16Out {
  using T = uint16_t;
  static FMLA_INLINE uint16_t Exact(uint32_t bits) { return Bf16OfExact(bits); }
#if defined(__x86_64__)
  // Bf16OfExact on 8 lanes; Store packs 16 lanes to words (packus works within 128-bit halves, the
  // permute puts the quarters back in order), rounding unless the caller knows the low halves are 0.
  static FMLA_AVX2 FMLA_INLINE __m256i Round(__m256 x) {
    const __m256i f = _mm256_castps_si256(x);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(f, 16), _mm256_set1_epi32(1));
    return _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(f, _mm256_set1_epi32(0x7FFF)), lsb), 16);
  }
  static FMLA_AVX2 FMLA_INLINE void Store(const __m256 (&v)[4], uint16_t* o, bool exact) {
    for (int k = 0; k < 2; k++) {
      const __m256i a = exact ? _mm256_srli_epi32(_mm256_castps_si256(v[2 * k]), 16) : Round(v[2 * k]);
      const __m256i b = exact ? _mm256_srli_epi32(_mm256_castps_si256(v[2 * k + 1]), 16) : Round(v[2 * k + 1]);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 16 * k), _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xD8));
    }
  }
#endif
};

template <class O, class Group>
struct DequantFp8 {
  typename O::T* out;
  uint32_t headDim;
  FMLA_INLINE void operator()(std::size_t i, Row r) {
    Group::template Row<O>(r.weights, r.scales, headDim / 32, out + i * headDim);
  }
};

// An fp32 row (little-endian, at any byte offset) as float32: a copy.
struct CopyF32 {
  float* out;
  uint32_t headDim;
  FMLA_INLINE void operator()(std::size_t i, Row r) { std::memcpy(out + i * headDim, r.weights, 4ull * headDim); }
};

// A float32 word at any byte address.
typedef uint32_t UnalignedU32 __attribute__((aligned(1), may_alias));

// An fp32 row as bf16.
struct RoundF32 {
  uint16_t* out;
  uint32_t headDim;
  FMLA_INLINE void operator()(std::size_t i, Row r) { RoundRow(reinterpret_cast<const UnalignedU32*>(r.weights), out + i * headDim, headDim); }
  static FMLA_INLINE void RoundRow(const UnalignedU32* __restrict w, uint16_t* __restrict o, uint32_t n) {
    for (uint32_t j = 0; j < n; j++) o[j] = Bf16Of(w[j]);
  }
};

FMLA_INLINE void RawBody(const uint8_t* base, const Geometry& g, const int32_t* ids, std::size_t n, uint8_t* out) {
  if (g.packed() && g.recordBytes() == 264) {
    CopyPacked264 emit{out};
    ForRows(base, g, ids, n, emit);
  } else if (g.packed()) {
    CopyPacked emit{out, g.recordBytes()};
    ForRows(base, g, ids, n, emit);
  } else {
    CopySplit emit{out, g.weightBytes(), g.scaleBytes()};
    ForRows(base, g, ids, n, emit);
  }
}

template <class O, class Fp32Row, class Group>
FMLA_INLINE void ValuesBody(const uint8_t* base, const Geometry& g, const int32_t* ids, std::size_t n, typename O::T* out) {
  const std::size_t perChunk = kStageBytes / g.recordBytes();
  if (g.fp8 && perChunk > 0) {
    // Copy a few rows into a buffer that stays in L1 (the copies' cache misses overlap as in
    // GatherRaw), then dequantise them there: dequantising straight from the mapping stalls the
    // vector code on every miss (docs/engram-native.md#gathers).
    alignas(64) uint8_t stage[kStageBytes];
    const uint64_t record = g.recordBytes();
    for (std::size_t at = 0; at < n; at += perChunk) {
      const std::size_t k = n - at < perChunk ? n - at : perChunk;
      RawBody(base, g, ids + at, k, stage);
      DequantFp8<O, Group> emit{out + at * g.headDim, g.headDim};
      for (std::size_t i = 0; i < k; i++) emit(i, Row{stage + i * record, stage + i * record + g.headDim});
    }
  } else if (g.fp8) {
    DequantFp8<O, Group> emit{out, g.headDim};
    ForRows(base, g, ids, n, emit);
  } else {
    Fp32Row emit{out, g.headDim};
    ForRows(base, g, ids, n, emit);
  }
}

// The same bodies compiled twice: for the baseline x86-64 (SSE2, the portable dequantisation) and,
// where the CPU has them, AVX2 + F16C (wider copies, the float16 dequantisation). Chosen once per
// process with libgcc's CPU check, as binding/cpu_kernels.cc does, so no ifunc support is needed
// from the C library.
#if defined(__x86_64__)
FMLA_AVX2 void RawAvx2(const uint8_t* b, const Geometry& g, const int32_t* ids, std::size_t n, uint8_t* out) { RawBody(b, g, ids, n, out); }
FMLA_AVX2 void F32Avx2(const uint8_t* b, const Geometry& g, const int32_t* ids, std::size_t n, float* out) {
  ValuesBody<F32Out, CopyF32, F16cGroup>(b, g, ids, n, out);
}
FMLA_AVX2 void Bf16Avx2(const uint8_t* b, const Geometry& g, const int32_t* ids, std::size_t n, uint16_t* out) {
  ValuesBody<Bf16Out, RoundF32, F16cGroup>(b, g, ids, n, out);
}

// FLASHMLA_ENGRAM_ISA=portable keeps the baseline kernels on any CPU (docs/engram-native.md#vectorisation:
// how the tests check both).
bool HasAvx2F16c() {
  const char* isa = std::getenv("FLASHMLA_ENGRAM_ISA");
  if (isa != nullptr && std::strcmp(isa, "portable") == 0) return false;
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
}
const bool kAvx2F16c = HasAvx2F16c();
#else
constexpr bool kAvx2F16c = false;
#endif

void RawDefault(const uint8_t* b, const Geometry& g, const int32_t* ids, std::size_t n, uint8_t* out) { RawBody(b, g, ids, n, out); }
void F32Default(const uint8_t* b, const Geometry& g, const int32_t* ids, std::size_t n, float* out) { ValuesBody<F32Out, CopyF32, PortableGroup>(b, g, ids, n, out); }
void Bf16Default(const uint8_t* b, const Geometry& g, const int32_t* ids, std::size_t n, uint16_t* out) {
  ValuesBody<Bf16Out, RoundF32, PortableGroup>(b, g, ids, n, out);
}

}  // namespace

void GatherBaseline(const uint8_t* base, const Geometry& g, const int32_t* ids, std::size_t n, uint8_t* out) {
  const uint64_t wb = g.weightBytes(), sb = g.scaleBytes();
  for (std::size_t i = 0; i < n; i++) {
    const uint64_t id = static_cast<uint64_t>(ids[i]);
    uint8_t* o = out + i * (wb + sb);
    std::memcpy(o, base + g.weightOffset + id * g.weightStride, wb);
    std::memcpy(o + wb, base + g.scaleOffset + id * g.scaleStride, sb);
  }
}

void GatherRaw(const uint8_t* base, const Geometry& g, const int32_t* ids, std::size_t n, uint8_t* out) {
#if defined(__x86_64__)
  if (kAvx2F16c) return RawAvx2(base, g, ids, n, out);
#endif
  RawDefault(base, g, ids, n, out);
}

void GatherF32(const uint8_t* base, const Geometry& g, const int32_t* ids, std::size_t n, float* out) {
#if defined(__x86_64__)
  if (kAvx2F16c) return F32Avx2(base, g, ids, n, out);
#endif
  F32Default(base, g, ids, n, out);
}

const char* KernelIsa() { return kAvx2F16c ? "avx2-f16c" : "portable"; }

void GatherBf16(const uint8_t* base, const Geometry& g, const int32_t* ids, std::size_t n, uint16_t* out) {
#if defined(__x86_64__)
  if (kAvx2F16c) return Bf16Avx2(base, g, ids, n, out);
#endif
  Bf16Default(base, g, ids, n, out);
}

}  // namespace fmla::engram
