// The buffer layout of a native-tier tile workspace (cpu_tile.h TileLayout), shared by the
// JavaScript-owned workspaces (cpu_tile_wrap.cc) and the runner's per-thread ones (cpu_runner.cc).
#include <iterator>

#include "cpu_tile.h"

namespace fmla::cpu {

namespace {
constexpr std::size_t kAlign = 64;
std::size_t AlignUp(std::size_t n) { return (n + kAlign - 1) & ~(kAlign - 1); }
}  // namespace

TileLayout LayoutOf(Isa isa, int rows, int dim, int dv) {
  TileLayout out{};
  out.rowsPad = (rows + RowLanes(isa) - 1) / RowLanes(isa) * RowLanes(isa);
  const std::size_t R = out.rowsPad, D = dim, T = kTile, V = dv;
  // 4-byte units of q, qT, k, sT, m, l, alpha, o (float), vis (int32), rec, scl (double).
  const std::size_t sizes[TileLayout::kBuffers] = {R * D, D * R, T * D, T * R, R, R, R, R * V, R, 2 * T, 2 * T};
  std::size_t end = 0;
  for (std::size_t i = 0; i < std::size(sizes); i++) {
    out.at[i] = end;
    end = AlignUp(end + 4 * sizes[i]);
  }
  out.bytes = end;
  return out;
}

void BindBuffers(TileBuffers& b, const TileLayout& layout, char* base, int rows, int dim, int dv) {
  b.rows = rows;
  b.rowsPad = layout.rowsPad;
  b.dim = dim;
  b.dv = dv;
  float** floats[] = {&b.q, &b.qT, &b.k, &b.sT, &b.m, &b.l, &b.alpha, &b.o};
  for (std::size_t i = 0; i < std::size(floats); i++) *floats[i] = reinterpret_cast<float*>(base + layout.at[i]);
  b.vis = reinterpret_cast<int32_t*>(base + layout.at[8]);
  b.rec = reinterpret_cast<double*>(base + layout.at[9]);
  b.scl = reinterpret_cast<double*>(base + layout.at[10]);
}

}  // namespace fmla::cpu
