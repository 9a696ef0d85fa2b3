// Row gathers out of a mapped Engram table (docs/engram-native.md#gathers). Plain functions of a
// base pointer, the table's geometry and row ids that the caller has already checked
// (0 ≤ id < rows, every row inside the mapping): nothing here validates, allocates or throws,
// so they run on the JavaScript thread and on the libuv pool alike.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fmla::engram {

// Where rows lie in the file (binding/engram_mapping.cc checks that all of them fit it).
struct Geometry {
  uint64_t rows = 0;
  uint32_t headDim = 0;        // values per row
  bool fp8 = true;             // e4m3 weights + one e8m0 scale per 32 values; else little-endian float32
  uint64_t weightOffset = 0;   // file byte of row 0's weights
  uint64_t weightStride = 0;   // bytes between consecutive rows' weights
  uint64_t scaleOffset = 0;    // fp8: file byte of row 0's scales
  uint64_t scaleStride = 0;    // fp8: bytes between consecutive rows' scales

  uint64_t weightBytes() const { return fp8 ? headDim : 4ull * headDim; }
  uint64_t scaleBytes() const { return fp8 ? headDim / 32 : 0; }
  // One gatherRaw record: the weights, then (fp8) the scales.
  uint64_t recordBytes() const { return weightBytes() + scaleBytes(); }
  // Scales right behind the weights, row after row at one stride: a record is one span of the file.
  bool packed() const { return !fp8 || (scaleOffset == weightOffset + headDim && scaleStride == weightStride); }
};

// Records (Geometry::recordBytes each) of rows ids[0…n) into out, one memcpy per region of a row:
// the bench's reference point.
void GatherBaseline(const uint8_t* base, const Geometry& g, const int32_t* ids, std::size_t n, uint8_t* out);

// The same bytes as GatherBaseline, with the copies of later rows prefetched and fixed-size copies
// for the V4.1 row (headDim 256).
void GatherRaw(const uint8_t* base, const Geometry& g, const int32_t* ids, std::size_t n, uint8_t* out);

// headDim float32 values per row: fp8 rows dequantised exactly, fp32 rows copied.
void GatherF32(const uint8_t* base, const Geometry& g, const int32_t* ids, std::size_t n, float* out);

// headDim bf16 values per row: the float32 values of GatherF32 rounded to nearest even.
void GatherBf16(const uint8_t* base, const Geometry& g, const int32_t* ids, std::size_t n, uint16_t* out);

// Which kernels the gathers run: "avx2-f16c" or "portable" (the baseline build's auto-vectorised
// loops; also where FLASHMLA_ENGRAM_ISA=portable is set).
const char* KernelIsa();

}  // namespace fmla::engram
