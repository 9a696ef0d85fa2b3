// Reading and dequantising one token of an FP8 sparse KV cache (docs/flashmla-interface.md#v32-cache, docs/flashmla-interface.md#model1-cache), through the
// kernel's checked accessor, with each architecture's scale handling.
#pragma once

#include <cstdint>

#include "launch.h"
#include "numeric.h"

namespace emu {

// V32 keeps float32 scales; sm90 rounds them to bf16, sm100 to e8m0 toward zero (docs/flashmla-interface.md#v32-cache).
enum class V32Scale { Bf16, E8m0TowardZero };

struct KvCache {
  const void* base;
  std::int64_t strideBlock;  // bytes
  int pageBlockSize;
};

inline constexpr int kV32TokenBytes = 656;
inline constexpr int kModel1RecordBytes = 576;
inline constexpr int kModel1ScaleBytes = 8;

// V32 token (block n, row t) at n·stride0 + t·656: 512 fp8 NoPE, 4 float32 scales (one per 128
// dims), 64 bf16 RoPE. Writes the 576 dequantised dims.
inline void loadTokenV32(KernelScope& k, const KvCache& c, std::int64_t block, std::int64_t row, V32Scale rule, float* out) {
  std::uint8_t raw[kV32TokenBytes];
  k.read(byteAt(c.base, block * c.strideBlock + row * kV32TokenBytes), sizeof raw, raw);
  float scale[4];
  for (int j = 0; j < 4; ++j) {
    float s;
    std::memcpy(&s, raw + 512 + 4 * j, 4);
    scale[j] = rule == V32Scale::Bf16 ? roundBf16(s) : e8m0ToFloat(floatToE8m0Rz(s));
  }
  for (int d = 0; d < 512; ++d) out[d] = roundBf16(e4m3ToFloat(raw[d]) * scale[d / 128]);
  for (int d = 0; d < 64; ++d) out[512 + d] = bf16ToFloat(static_cast<std::uint16_t>(raw[528 + 2 * d] | (raw[529 + 2 * d] << 8)));
}

// MODEL1 token (block n, row t): a 576-byte record at n·stride0 + t·576 (448 fp8 NoPE, 64 bf16
// RoPE) and an 8-byte scale record at n·stride0 + B·576 + t·8 (7 e8m0 scales, one per 64 dims).
// Writes the 512 dequantised dims.
inline void loadTokenModel1(KernelScope& k, const KvCache& c, std::int64_t block, std::int64_t row, float* out) {
  std::uint8_t rec[kModel1RecordBytes];
  std::uint8_t scales[kModel1ScaleBytes];
  const std::int64_t blockBase = block * c.strideBlock;
  k.read(byteAt(c.base, blockBase + row * kModel1RecordBytes), sizeof rec, rec);
  k.read(byteAt(c.base, blockBase + std::int64_t(c.pageBlockSize) * kModel1RecordBytes + row * kModel1ScaleBytes),
         sizeof scales, scales);
  for (int d = 0; d < 448; ++d) out[d] = roundBf16(e4m3ToFloat(rec[d]) * e8m0ToFloat(scales[d / 64]));
  for (int d = 0; d < 64; ++d) out[448 + d] = bf16ToFloat(static_cast<std::uint16_t>(rec[448 + 2 * d] | (rec[449 + 2 * d] << 8)));
}

}  // namespace emu
