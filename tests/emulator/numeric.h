// Number formats as the GPU converts them: bf16/fp16 round-to-nearest-even (NaN -> 0x7FFF like
// __float2bfloat16_rn / __float2half_rn), float8_e4m3fn and e8m0 decoding (docs/flashmla-interface.md#quantization), and the
// sm100 float32 -> e8m0 scale conversion with round-toward-zero (docs/flashmla-interface.md#v32-cache).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "abi.h"

namespace emu {

inline std::uint32_t floatBits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bitsFloat(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float bf16ToFloat(std::uint16_t b) { return bitsFloat(std::uint32_t(b) << 16); }

inline std::uint16_t floatToBf16(float f) {
  std::uint32_t u = floatBits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FFF;
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}

inline float roundBf16(float f) { return bf16ToFloat(floatToBf16(f)); }

inline float halfToFloat(std::uint16_t h) {
  std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
  std::uint32_t e = (h >> 10) & 0x1Fu;
  std::uint32_t m = h & 0x3FFu;
  if (e == 0x1F) return bitsFloat(sign | 0x7F800000u | (m << 13));
  if (e == 0) {
    float v = std::ldexp(static_cast<float>(m), -24);
    return sign != 0 ? -v : v;
  }
  return bitsFloat(sign | ((e + 112u) << 23) | (m << 13));
}

inline std::uint16_t floatToHalf(float f) {
  std::uint32_t u = floatBits(f);
  std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  std::uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return 0x7FFF;
  if (a >= 0x477FF000u) return sign | 0x7C00u;  // >= 65520 rounds to infinity
  if (a < 0x38800000u) {                        // below 2^-14: subnormal, units of 2^-24
    float scaled = bitsFloat(a) * 16777216.0f;  // exact (power-of-two scaling)
    return sign | static_cast<std::uint16_t>(std::nearbyint(scaled));  // RNE
  }
  std::uint32_t r = a + 0x0FFFu + ((a >> 13) & 1u) - (112u << 23);
  return sign | static_cast<std::uint16_t>(r >> 13);
}

inline float e4m3ToFloat(std::uint8_t b) {
  int e = (b >> 3) & 0xF;
  int m = b & 7;
  float v;
  if (e == 0xF && m == 7) v = NAN;
  else if (e == 0) v = std::ldexp(static_cast<float>(m), -9);
  else v = std::ldexp(static_cast<float>(8 + m), e - 10);
  return (b & 0x80) != 0 ? -v : v;
}

inline float e8m0ToFloat(std::uint8_t b) { return b == 0xFF ? NAN : std::ldexp(1.0f, int(b) - 127); }

// float32 scale -> e8m0, round toward zero: the biased exponent (sign ignored); NaN/Inf -> 0xFF.
inline std::uint8_t floatToE8m0Rz(float f) { return static_cast<std::uint8_t>((floatBits(f) >> 23) & 0xFFu); }

// The 16-bit element types of the dense/combine launchers.
template <class T> struct Elem;
template <> struct Elem<cutlass::bfloat16_t> {
  static constexpr const char* name = "bf16";
  static float toFloat(std::uint16_t b) { return bf16ToFloat(b); }
  static std::uint16_t fromFloat(float f) { return floatToBf16(f); }
};
template <> struct Elem<cutlass::half_t> {
  static constexpr const char* name = "fp16";
  static float toFloat(std::uint16_t b) { return halfToFloat(b); }
  static std::uint16_t fromFloat(float f) { return floatToHalf(f); }
};

inline constexpr float kLog2e = 1.44269504f;  // FlashMLA's LOG_2_E
inline constexpr float kLn2 = 0.693147180559945309f;

}  // namespace emu
