// The `native` tier of the reference backend (src/reference/tile-native.ts): one 64-token attention
// tile in C++ with AVX-512 or AVX2 + FMA, chosen at run time (the addon itself is built with the
// baseline x86-64 flags, so it loads on any x86-64; elsewhere the tier is unavailable). Same
// operations and numerics as wasm/tile.wat: bf16 and FP8 tile conversion (docs/flashmla-interface.md#kv-caches), Q·Kᵀ,
// base-2 online softmax with the same exp2 polynomial (docs/flashmla-interface.md#split-kv), P·V.
#pragma once

#include <napi.h>

#include <cstddef>
#include <cstdint>

namespace fmla::cpu {

/** Tokens per tile: a dense page (docs/flashmla-interface.md#dense-cache), a 64-index block of the sparse kernels (docs/flashmla-interface.md#sparse-block-ranges). */
constexpr int kTile = 64;

enum class Isa { None, Avx2, Avx512 };

/** The widest instruction set this CPU (and OS) runs, None off x86-64 or without AVX2 + FMA. */
Isa BestIsa();

/** Query rows per vector: the row count is padded to a multiple of it. */
int RowLanes(Isa isa);

/**
 * The buffers of one tile workspace, all in one 64-byte-aligned block. Row-major unless named
 * otherwise; rowsPad = rows rounded up to RowLanes, padded rows have zero queries and vis 0.
 */
struct TileBuffers {
  int rows = 0, rowsPad = 0, dim = 0, dv = 0;
  float* q = nullptr;      // rowsPad × dim, filled by JavaScript
  float* qT = nullptr;     // dim × rowsPad: q transposed at Reset, rows in vector lanes
  float* k = nullptr;      // kTile × dim: the fp32 KV tile (V = its first dv columns)
  float* sT = nullptr;     // kTile × rowsPad: logits, then probabilities, token-major
  float* m = nullptr;      // rowsPad: running base-2 max
  float* l = nullptr;      // rowsPad: running sum
  float* alpha = nullptr;  // rowsPad: this tile's rescale of o, 2^(m_old − m_new)
  float* o = nullptr;      // rowsPad × dv: unnormalised output
  int32_t* vis = nullptr;  // rowsPad: visible leading tokens of the tile per row
  double* rec = nullptr;   // kTile: byte offset of each gathered FP8 token record in its source
  double* scl = nullptr;   // kTile: byte offset of that token's scales (doubles: caches over 2 GB)
};

/**
 * Where each buffer of a (rows, dim, dv) workspace lies in its block: byte offsets from a 64-byte
 * boundary, in TileBuffers' order q, qT, k, sT, m, l, alpha, o, vis, rec, scl; `bytes` is the
 * size from that boundary. One layout for the JavaScript-owned workspaces (cpu_tile_wrap.cc) and
 * the runner's (cpu_runner.cc).
 */
struct TileLayout {
  static constexpr int kBuffers = 11;
  std::size_t at[kBuffers];
  std::size_t bytes;
  int rowsPad;
};

/** The layout of a workspace for `isa` (rows ≥ 1; dim, dv multiples of 16). */
TileLayout LayoutOf(Isa isa, int rows, int dim, int dv);

/** b ← the buffers of `layout` in the 64-byte-aligned block at `base`. */
void BindBuffers(TileBuffers& b, const TileLayout& layout, char* base, int rows, int dim, int dv);

/** FP8 token layouts (docs/flashmla-interface.md#v32-cache V32, docs/flashmla-interface.md#model1-cache MODEL1). */
enum class Fp8Layout { V32 = 0, Model1 = 1 };

/** An FP8 token layout: e4m3 tiles from byte 0 of the record, then bf16 RoPE (docs/flashmla-interface.md#v32-cache, docs/flashmla-interface.md#model1-cache). */
struct Fp8Shape {
  int dim, tiles, tile, ropeAt, recordBytes, scaleBytes;
  bool e8m0;  // MODEL1: one e8m0 byte per tile; V32: one float32 (LE) per tile
};
inline constexpr Fp8Shape kV32{576, 4, 128, 528, 656, 16, false};
inline constexpr Fp8Shape kModel1{512, 7, 64, 448, 576, 7, true};
inline const Fp8Shape& ShapeOf(Fp8Layout l) { return l == Fp8Layout::V32 ? kV32 : kModel1; }

/** The per-ISA kernels. */
struct TileKernels {
  /** qT ← qᵀ; m ← −∞, l ← 0, o ← 0. */
  void (*reset)(const TileBuffers& b);
  /** k[u][d] ← f32(bf16 src[u·ld + d]) for u < tokens, d < dim. */
  void (*cvtBf16)(const TileBuffers& b, const uint16_t* src, int64_t ld, int tokens);
  /** k[u] ← dequantised token u (u0 ≤ u < u1) of `src`, record at rec[u], scales at scl[u]. */
  void (*dqFp8)(const TileBuffers& b, const uint8_t* src, int u0, int u1, Fp8Layout layout);
  /** k[u][d] ← f32(bf16 rows[u][d]) for u < tokens, d < dim: a gathered tile (sparse prefill's kv rows). */
  void (*rowsBf16)(const TileBuffers& b, const uint16_t* const* rows, int tokens);
  /**
   * One tile: Q·Kᵀ, logits × scaleLog2 masked by vis, online softmax, o ← o·alpha + P·V. With
   * roundP, P·V takes the probabilities rounded to bf16 while l sums them unrounded, as the sparse
   * prefill kernels do (docs/reference-backend.md#prefill).
   */
  void (*step)(const TileBuffers& b, int tokens, float scaleLog2, bool roundP);
};

/** The kernels of `isa` (not None). */
const TileKernels& KernelsFor(Isa isa);

/** `cpuTile` of the addon's exports: { isa: 'avx512' | 'avx2' | null, Tile }. */
Napi::Object CpuTileExports(Napi::Env env);

}  // namespace fmla::cpu
