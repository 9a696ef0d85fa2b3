// The row gathers of engram_gather.h and their run-time choice of instruction set.
#include "engram_gather.h"

#include <cstring>

#include "fp8_dequant.h"

namespace fmla::engram {
namespace {

#define FMLA_INLINE inline __attribute__((always_inline))

// Rows ahead whose cache lines are prefetched: random rows of a table far larger than the caches
// miss every time, and a few misses in flight hide most of the latency
// (docs/engram-native.md#gathers).
constexpr std::size_t kAhead = 8;
constexpr uint64_t kLine = 64;

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

// A V4.1 row (256 e4m3 bytes + 8 scales, packed): one copy of a size the compiler knows.
struct CopyPacked264 {
  uint8_t* out;
  FMLA_INLINE void operator()(std::size_t i, Row r) { std::memcpy(out + i * 264, r.weights, 264); }
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

// The output of a dequantised value given by its float32 bits: as is, or rounded to bf16.
struct F32Out {
  using T = float;
  static FMLA_INLINE float Exact(uint32_t bits) { return std::bit_cast<float>(bits); }
};
struct Bf16Out {
  using T = uint16_t;
  static FMLA_INLINE uint16_t Exact(uint32_t bits) { return Bf16OfExact(bits); }
};

// 32 values of one scale: a fixed trip count and no branch, so one vector loop.
template <class O>
FMLA_INLINE void DequantGroup(const uint8_t* __restrict w, uint8_t s, typename O::T* __restrict o) {
  const float scale = ScaleOf(s);
  const uint32_t scaleNan = ScaleNanMask(s);
  for (uint32_t j = 0; j < 32; j++) o[j] = O::Exact(DequantBits(w[j], scale, scaleNan));
}

template <class O>
struct DequantFp8 {
  typename O::T* out;
  uint32_t headDim;
  FMLA_INLINE void operator()(std::size_t i, Row r) {
    for (uint32_t g = 0; g < headDim / 32; g++) DequantGroup<O>(r.weights + 32 * g, r.scales[g], out + i * headDim + 32 * g);
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

template <class O, class Fp32Row>
FMLA_INLINE void ValuesBody(const uint8_t* base, const Geometry& g, const int32_t* ids, std::size_t n, typename O::T* out) {
  if (g.fp8) {
    DequantFp8<O> emit{out, g.headDim};
    ForRows(base, g, ids, n, emit);
  } else {
    Fp32Row emit{out, g.headDim};
    ForRows(base, g, ids, n, emit);
  }
}

// The same bodies compiled twice: for the baseline x86-64 (SSE2) and, where the CPU has it,
// AVX2 (wider integer widening and blends). Chosen once per process with libgcc's CPU check, as
// binding/cpu_kernels.cc does, so no ifunc support is needed from the C library.
#if defined(__x86_64__)
#define FMLA_AVX2 __attribute__((target("avx2")))
FMLA_AVX2 void RawAvx2(const uint8_t* b, const Geometry& g, const int32_t* ids, std::size_t n, uint8_t* out) { RawBody(b, g, ids, n, out); }
FMLA_AVX2 void F32Avx2(const uint8_t* b, const Geometry& g, const int32_t* ids, std::size_t n, float* out) {
  ValuesBody<F32Out, CopyF32>(b, g, ids, n, out);
}
FMLA_AVX2 void Bf16Avx2(const uint8_t* b, const Geometry& g, const int32_t* ids, std::size_t n, uint16_t* out) {
  ValuesBody<Bf16Out, RoundF32>(b, g, ids, n, out);
}

bool HasAvx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
}
const bool kAvx2 = HasAvx2();
#else
constexpr bool kAvx2 = false;
#endif

void RawDefault(const uint8_t* b, const Geometry& g, const int32_t* ids, std::size_t n, uint8_t* out) { RawBody(b, g, ids, n, out); }
void F32Default(const uint8_t* b, const Geometry& g, const int32_t* ids, std::size_t n, float* out) { ValuesBody<F32Out, CopyF32>(b, g, ids, n, out); }
void Bf16Default(const uint8_t* b, const Geometry& g, const int32_t* ids, std::size_t n, uint16_t* out) {
  ValuesBody<Bf16Out, RoundF32>(b, g, ids, n, out);
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
  if (kAvx2) return RawAvx2(base, g, ids, n, out);
#endif
  RawDefault(base, g, ids, n, out);
}

void GatherF32(const uint8_t* base, const Geometry& g, const int32_t* ids, std::size_t n, float* out) {
#if defined(__x86_64__)
  if (kAvx2) return F32Avx2(base, g, ids, n, out);
#endif
  F32Default(base, g, ids, n, out);
}

void GatherBf16(const uint8_t* base, const Geometry& g, const int32_t* ids, std::size_t n, uint16_t* out) {
#if defined(__x86_64__)
  if (kAvx2) return Bf16Avx2(base, g, ids, n, out);
#endif
  Bf16Default(base, g, ids, n, out);
}

}  // namespace fmla::engram
