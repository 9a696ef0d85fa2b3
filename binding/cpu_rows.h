// The row arithmetic of a call's last steps, shared by the calling thread's helpers
// (cpu_helpers.cc `merge`, `bf16Rows`) and the runner's finishing of merged rows (cpu_runner.cc),
// so both give the bits of the TypeScript they stand for: src/reference/partial.ts `mergeIntoJs`,
// src/formats/bf16.ts `f32ToBf16`, src/formats/fp16.ts `f32ToFp16` (docs/reference-backend.md#native-runner).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace fmla::cpu {

// Folds row (sm, sl, so) into row (dm, dl, dO) by LSE (docs/flashmla-interface.md#split-kv):
// both rescaled to the larger max, in double as `mergeIntoJs` computes with JavaScript numbers.
inline void MergeRow(float* dm, float* dl, float* dO, const float* sm, const float* sl, const float* sO, int64_t dv) {
  const double ms = *sm;
  if (ms == -std::numeric_limits<double>::infinity()) return;
  const double md = *dm;
  const double M = ms > md ? ms : md;
  const double ad = std::exp2(md - M), as = std::exp2(ms - M);
  *dl = static_cast<float>(*dl * ad + *sl * as);
  for (int64_t x = 0; x < dv; x++) dO[x] = static_cast<float>(dO[x] * ad + sO[x] * as);
  *dm = static_cast<float>(M);
}

inline uint32_t BitsOf(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  return bits;
}

inline float FloatOf(uint32_t bits) {
  float v;
  std::memcpy(&v, &bits, 4);
  return v;
}

// bf16 bits of float v by round-to-nearest-even; NaN → quiet NaN with its sign (`f32ToBf16`).
inline uint16_t Bf16Of(float v) {
  const uint32_t bits = BitsOf(v);
  return (bits & 0x7fffffffu) > 0x7f800000u ? static_cast<uint16_t>(((bits >> 16) & 0x8000u) | 0x7fc0u)
                                            : static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

// fp16 bits of float v by round-to-nearest-even with subnormals; |v| ≥ 65520 → ±Inf, NaN → 0x7E00
// with its sign (`f32ToFp16`, step for step).
inline uint16_t Fp16Of(float v) {
  const uint32_t bits = BitsOf(v);
  const uint32_t sign = (bits >> 16) & 0x8000u, abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);
  // Below 2^-14: the float adder rounds |v| + 0.5 to a multiple of 2^-24 (fp16's subnormal step).
  if (abs < 0x38800000u) return static_cast<uint16_t>(sign | (BitsOf(FloatOf(abs) + 0.5f) - 0x3f000000u));
  return static_cast<uint16_t>(sign | ((abs - 0x38000000u + 0xfffu + ((abs >> 13) & 1u)) >> 13));
}

// Whether src/reference/partial.ts `rowLse` gives +Infinity for a row with max m and sum l,
// (m + log2 l)·ln 2: for l = 0 (no key seen, a lonely row, docs/flashmla-interface.md#empty-rows),
// and for a sum that overflows, which needs m or l = +Infinity (no log2 needed to tell).
inline bool LseIsInfinite(float m, float l) {
  constexpr float inf = std::numeric_limits<float>::infinity();
  return l == 0 || (l > 0 && m == inf) || (l == inf && m > -inf);
}

}  // namespace fmla::cpu
