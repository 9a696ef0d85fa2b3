// Exact, branch-free dequantisation of one e4m3fn weight by one e8m0 block scale
// (docs/engram-native.md#dequantisation): the portable kernels of engram_gather.cc. Every step is a
// lane-wise integer or float operation with no data-dependent branch, so GCC vectorises the loops
// that call these for the baseline x86-64 (SSE2) at -O2 and -O3.
#pragma once

#include <bit>
#include <cstdint>

namespace fmla::engram {

// The float32 2^(s − 127) of an e8m0 code s < 255, exactly: s = 0 is 2^-127, a float32 subnormal
// (only mantissa bit 22 set); 1 ≤ s ≤ 254 is a normal number whose biased exponent is s. For
// s = 255 (NaN) the value is 1 and ScaleNanMask says NaN instead.
inline float ScaleOf(uint8_t s) {
  const uint32_t normal = static_cast<uint32_t>(s) << 23;
  const uint32_t bits = s == 0 ? 0x00400000u : s == 255 ? 0x3F800000u : normal;
  return std::bit_cast<float>(bits);
}

// All ones when e8m0 code s is NaN (0xFF), else 0.
inline uint32_t ScaleNanMask(uint8_t s) { return 0u - static_cast<uint32_t>(s == 255); }

// The quiet NaN every NaN output becomes: the weight's sign, quiet bit, zero payload. Its low
// 16 bits are 0, so Bf16OfExact keeps it a quiet bf16 NaN (sign | 0x7FC0).
constexpr uint32_t kQuietNan = 0x7FC00000u;

// float32 bits of e4m3fn(b) · scale (scale = ScaleOf(s), scaleNan = ScaleNanMask(s)).
// The e4m3 magnitude is rebuilt as a normal float32 by integer arithmetic, never through a
// float32 subnormal (x86 takes a slow microcode assist on every subnormal operand or result, and a
// random table has a subnormal weight in almost every vector):
// - exponent E ≥ 1: the 7 magnitude bits placed at float32 bits 20…26 hold E and the 3 mantissa
//   bits m; adding 120 to the exponent field gives (1 + m/8)·2^(E − 7) exactly;
// - E = 0 (the subnormal m·2^-9): with 121 added instead the float32 is 2^-6 + m·2^-9, and
//   subtracting 2^-6 leaves m·2^-9 exactly (both operands within a factor of 2: Sterbenz).
// A mask picks one of the two; the sign is ORed in afterwards (so 0x80 gives −0).
// The product with the scale is exact too: |e4m3| has 4 significant bits between 2^-9 and 448,
// so the product lies on a multiple of 2^-136 (coarser than the float32 subnormal step 2^-149);
// only overflow (e.g. 448 · 2^127) rounds, to ±Inf, which is the correctly rounded float32 value.
// e4m3fn NaN (S.1111.111) and a NaN scale give kQuietNan with the weight's sign.
inline uint32_t DequantBits(uint32_t b, float scale, uint32_t scaleNan) {
  const uint32_t sign = (b & 0x80u) << 24;
  const uint32_t magnitude = b & 0x7Fu;
  const uint32_t normal = (magnitude << 20) + (120u << 23);
  const uint32_t subnormal = std::bit_cast<uint32_t>(std::bit_cast<float>((magnitude << 20) + (121u << 23)) - 0x1p-6f);
  const uint32_t isSubnormal = 0u - static_cast<uint32_t>(magnitude < 8u);
  const uint32_t e4m3 = sign | (normal & ~isSubnormal) | (subnormal & isSubnormal);
  const float value = std::bit_cast<float>(e4m3) * scale;
  const uint32_t nan = scaleNan | (0u - static_cast<uint32_t>(magnitude == 0x7Fu));
  return (std::bit_cast<uint32_t>(value) & ~nan) | (nan & (sign | kQuietNan));
}

// bf16 bits of float32 bits f by round-to-nearest-even, for f that is not a NaN or is
// kQuietNan with a sign (as DequantBits returns): adding 0x7FFF plus the kept LSB rounds half to
// even, and a carry out of the mantissa moves into the exponent (max finite → Inf, as RNE does).
inline uint16_t Bf16OfExact(uint32_t f) { return static_cast<uint16_t>((f + 0x7FFFu + ((f >> 16) & 1u)) >> 16); }

// bf16 bits of any float32 bits f (an fp32 table's values): RNE, and every NaN becomes the quiet
// bf16 NaN with f's sign, as src/formats/bf16.ts f32ToBf16 does.
inline uint16_t Bf16Of(uint32_t f) {
  const uint32_t nan = 0u - static_cast<uint32_t>((f & 0x7FFFFFFFu) > 0x7F800000u);
  const uint32_t rounded = (f + 0x7FFFu + ((f >> 16) & 1u)) >> 16;  // wraps only for NaN, which is masked out
  return static_cast<uint16_t>((rounded & ~nan) | (nan & (((f >> 16) & 0x8000u) | (kQuietNan >> 16))));
}

}  // namespace fmla::engram
