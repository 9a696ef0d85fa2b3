// Preconditions of a TMA descriptor (cuTensorMapEncodeTiled): 16-byte-aligned base, every
// outer stride a multiple of 16 bytes and below 2^40 (docs/flashmla-interface.md#tma-alignment). FlashMLA builds some
// descriptors with CuTe, whose checks compile away under -DNDEBUG (a silent failure that ends as a
// device fault), and some with ku::make_tensor_map, which throws.
#pragma once

#include <cstdint>
#include <initializer_list>

namespace emu {

inline bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// `strides`: the outer dims' strides in elements of `elemBytes` bytes (the innermost dim is the
// contiguous one and is not listed). A descriptor takes every outer stride, including those of
// size-1 dims, so a stride of 1 there is not encodable either.
inline bool tmaEncodable(const void* base, int elemBytes, std::initializer_list<std::int64_t> strides) {
  if (!aligned16(base)) return false;
  for (std::int64_t s : strides) {
    std::int64_t bytes = s * elemBytes;
    if (bytes % 16 != 0 || bytes < 0 || bytes >= (std::int64_t(1) << 40)) return false;
  }
  return true;
}

}  // namespace emu
