// The native tier's item runner (cpu_runner.h): a call's work items run on the calling thread and
// the addon's own helper threads, reading the caller's arrays where they are. The call is
// synchronous for JavaScript (docs/reference-backend.md#native-runner): no JavaScript runs until it
// returns, so no buffer can be detached, transferred or collected while a helper reads it, and the
// helpers run no JavaScript, so none can be terminated mid-item. Each item does what
// src/reference/dense.ts `attendDense` / sparse.ts `attendSparse` do with a NativeWorkspace, through
// the same kernels in the same order, so the partials have the same bits; a sparse prefill's items
// (`RunPrefill`) do what src/reference/prefill-item.ts `attendPrefill` does. The same threads then
// fold each group's partials and write its out rows (`Finish`), and q is checked for NaN/±Infinity
// as its rows load (`QScan`), so little of a call stays on the calling thread alone.
#include "cpu_runner.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "cpu_rows.h"
#include "cpu_tile.h"
#include "js_errors.h"

namespace fmla::cpu {
namespace {

// ---- checked index arithmetic: every offset comes from JavaScript numbers -------------------

// a + b·c without int64 overflow; false on overflow.
bool MulAdd(int64_t a, int64_t b, int64_t c, int64_t& out) {
  int64_t p;
  return !__builtin_mul_overflow(b, c, &p) && !__builtin_add_overflow(a, p, &out);
}

// [at, at + n) inside [0, length).
bool Inside(int64_t at, int64_t n, int64_t length) { return at >= 0 && n >= 0 && at <= length && n <= length - at; }

// Whole doubles in int64 range, as JavaScript numbers arrive.
bool WholeInt(double x, int64_t& out) {
  if (!(x >= -9007199254740991.0 && x <= 9007199254740991.0) || x != static_cast<double>(static_cast<int64_t>(x))) return false;
  out = static_cast<int64_t>(x);
  return true;
}

// The float32 bits of fp16 code h, exact (src/formats/fp16.ts `fp16BitsToF32Bits`).
uint32_t Fp16Bits(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0x1f) return sign | 0x7f800000u | (mant << 13);
  if (exp != 0) return sign | ((exp + 112) << 23) | (mant << 13);
  if (mant == 0) return sign;
  uint32_t e = 113, m = mant;
  while ((m & 0x400u) == 0) {
    m <<= 1;
    e--;
  }
  return sign | (e << 23) | ((m & 0x3ffu) << 13);
}

// ---- per-thread workspaces --------------------------------------------------------------------

struct Workspace {
  int rows, dim, dv;
  std::unique_ptr<char, decltype(&std::free)> block{nullptr, &std::free};
  TileBuffers b;
  // Which query rows q holds (dense.ts / sparse.ts `qLoaded`): consecutive items of one row group
  // convert q once.
  uint64_t call = 0;
  int64_t group = -1, r0 = -1;
};

// A few shapes per thread: a call uses one or two (dense row blocks of different heights).
constexpr std::size_t kCachedShapes = 4;

Workspace& WorkspaceFor(int rows, int dim, int dv) {
  thread_local std::vector<std::unique_ptr<Workspace>> cache;
  for (auto& w : cache) {
    if (w->rows == rows && w->dim == dim && w->dv == dv) return *w;
  }
  if (cache.size() == kCachedShapes) cache.erase(cache.begin());
  const Isa isa = BestIsa();
  const TileLayout layout = LayoutOf(isa, rows, dim, dv);
  auto w = std::make_unique<Workspace>();
  w->rows = rows;
  w->dim = dim;
  w->dv = dv;
  w->block.reset(static_cast<char*>(std::aligned_alloc(64, layout.bytes)));
  if (!w->block) throw std::bad_alloc();
  // Zero: padded rows keep zero queries and vis 0 (cpu_tile.h TileBuffers).
  std::memset(w->block.get(), 0, layout.bytes);
  BindBuffers(w->b, layout, w->block.get(), rows, dim, dv);
  cache.push_back(std::move(w));
  return *cache.back();
}

// ---- the calls' inputs ------------------------------------------------------------------------

template <class T>
struct Span {
  const T* data = nullptr;
  int64_t length = 0;
};

struct View {
  int64_t offset = 0, s0 = 0, s1 = 0, s2 = 0;
};

struct DenseCall {
  bool fp16;
  int64_t b, sQ, hQ, hK, dQK, dV;
  bool causal;
  float scaleLog2;
  Span<uint16_t> q, kc;
  Span<int32_t> bt, seqlens;
  View qv, kv, btv;
};

struct Scope {
  Span<uint8_t> cache;
  Span<int32_t> indices, lengths;  // lengths.data null: no topk_length
  int64_t topk, B;
  View cv, iv;  // cv.s0: bytes per block, cv.s1: bytes per token row (V3.2)
};

struct SparseCall {
  Fp8Layout layout;
  int64_t b, sQ, hQ, dQK, dV;
  float scaleLog2;
  Span<uint16_t> q;
  View qv;
  Scope scopes[2];
  int nScopes;
};

/** A sparse prefill (docs/reference-backend.md#prefill): q (s_q, h_q, d_qk) and kv (s_kv, 1, d_qk) bf16. */
struct PrefillCall {
  int64_t sQ, hQ, dQK, dV, sKv, topk;
  float scaleLog2;
  Span<uint16_t> q, kv;
  Span<int32_t> indices, lengths;  // lengths.data null: no topk_length
  View qv, kv_, iv;
};

constexpr int kItem = 6;  // int32 per item (src/reference/items.ts ITEM)

/** What one item needs beyond the call: its fields and where its partial goes. */
struct Out {
  float* m;
  float* l;
  float* o;
};

/** Thrown (inside the runner only) when an item would read or write outside its arrays. */
struct OutOfRange {
  const char* what;
};

void Require(bool ok, const char* what) {
  if (!ok) throw OutOfRange{what};
}

/**
 * The first element of q, in (b, s_q, h_q, d_qk) order, that is NaN or ±Infinity among the rows
 * the items read: the check of src/validate/common.ts `expectFiniteValues`, made here as the
 * threads load q rows (every row of q is loaded by some item) instead of before the call on the
 * calling thread alone (docs/reference-backend.md#native-runner).
 */
struct QScan {
  std::atomic<int64_t> first{INT64_MAX};

  /** Records the flat index ((i·s_q + s)·h_q + h)·d_qk + d of a non-finite element. */
  void Note(int64_t i, int64_t s, int64_t h, int64_t d, int64_t sQ, int64_t hQ, int64_t dQK) {
    int64_t at;
    Require(MulAdd(s, i, sQ, at) && MulAdd(h, at, hQ, at) && MulAdd(d, at, dQK, at), "q index past int64");
    for (int64_t v = first.load(); at < v && !first.compare_exchange_weak(v, at);) {
    }
  }
};

// q row → float32 bits (bf16 shifted, fp16 widened); returns the first d whose element has an
// all-ones exponent (NaN or ±Infinity), or −1. The flag is an OR in the loop, so it stays vectorised.
int64_t LoadQRow(const uint16_t* from, uint32_t* to, int64_t n, bool fp16) {
  const uint32_t mask = fp16 ? 0x7c00u : 0x7f80u;
  uint32_t bad = 0;
  if (fp16) {
    for (int64_t d = 0; d < n; d++) {
      to[d] = Fp16Bits(from[d]);
      bad |= (from[d] & mask) == mask;
    }
  } else {
    for (int64_t d = 0; d < n; d++) {
      to[d] = static_cast<uint32_t>(from[d]) << 16;
      bad |= (from[d] & mask) == mask;
    }
  }
  if (bad == 0) return -1;
  for (int64_t d = 0; d < n; d++) {
    if ((from[d] & mask) == mask) return d;
  }
  return -1;
}

void Store(const TileBuffers& b, int rows, int64_t dv, const Out& out) {
  std::memcpy(out.m, b.m, sizeof(float) * rows);
  std::memcpy(out.l, b.l, sizeof(float) * rows);
  std::memcpy(out.o, b.o, sizeof(float) * rows * dv);
}

void RunDense(const DenseCall& c, const int32_t* it, uint64_t call, const Out& out, QScan& scan) {
  const int64_t i = it[0], k = it[1], t1 = it[3], r0 = it[4], r1 = it[5];
  const int64_t hpk = c.hQ / c.hK;
  Require(i >= 0 && i < c.b && k >= 0 && k < c.hK && r0 >= 0 && r1 > r0 && r1 <= c.sQ * hpk && r1 - r0 <= 4096 && it[2] >= 0,
          "dense item out of range");
  const int rows = static_cast<int>(r1 - r0);
  Workspace& ws = WorkspaceFor(rows, static_cast<int>(c.dQK), static_cast<int>(c.dV));
  const TileBuffers& b = ws.b;
  const TileKernels& kn = KernelsFor(BestIsa());
  const int64_t group = i * c.hK + k;
  if (!(ws.call == call && ws.group == group && ws.r0 == r0)) {
    ws.call = call, ws.group = group, ws.r0 = r0;
    uint32_t* q32 = reinterpret_cast<uint32_t*>(b.q);
    for (int r = 0; r < rows; r++) {
      const int64_t s = (r0 + r) / hpk, j = (r0 + r) % hpk;
      int64_t src;
      Require(MulAdd(c.qv.offset, i, c.qv.s0, src) && MulAdd(src, s, c.qv.s1, src) && MulAdd(src, k * hpk + j, c.qv.s2, src) &&
                  Inside(src, c.dQK, c.q.length),
              "q row past its array");
      const int64_t d = LoadQRow(c.q.data + src, q32 + r * c.dQK, c.dQK, c.fp16);
      if (d >= 0) scan.Note(i, s, k * hpk + j, d, c.sQ, c.hQ, c.dQK);
    }
  }
  kn.reset(b);
  const int64_t L = c.seqlens.data[i];
  const int64_t end = t1 < L ? t1 : L;
  for (int64_t t0 = it[2]; t0 < end; t0 += kTile - (t0 % kTile)) {
    const int64_t page = t0 / kTile, first = t0 % kTile;
    const int tokens = static_cast<int>(kTile - first < end - t0 ? kTile - first : end - t0);
    int64_t btAt;
    Require(MulAdd(c.btv.offset, i, c.btv.s0, btAt) && MulAdd(btAt, page, c.btv.s1, btAt) && Inside(btAt, 1, c.bt.length),
            "block table entry past its array");
    const int64_t block = c.bt.data[btAt];
    int64_t at, last;
    Require(MulAdd(c.kv.offset, block, c.kv.s0, at) && MulAdd(at, first, c.kv.s1, at) && MulAdd(at, k, c.kv.s2, at) &&
                MulAdd(at, tokens - 1, c.kv.s1, last) && c.kv.s1 >= 0 && Inside(at, 0, c.kc.length) && Inside(last, c.dQK, c.kc.length),
            "KV page past the cache");
    if (c.fp16) {
      for (int u = 0; u < tokens; u++) {
        const uint16_t* from = c.kc.data + at + u * c.kv.s1;
        uint32_t* to = reinterpret_cast<uint32_t*>(b.k) + u * c.dQK;
        for (int64_t d = 0; d < c.dQK; d++) to[d] = Fp16Bits(from[d]);
      }
    } else {
      kn.cvtBf16(b, c.kc.data + at, c.kv.s1, tokens);
    }
    // Causal: row (s, j) sees keys up to L − s_q + s (dense.ts).
    for (int r = 0; r < rows; r++) {
      int64_t v = tokens;
      if (c.causal) {
        v = L - c.sQ + (r0 + r) / hpk - t0 + 1;
        v = v < 0 ? 0 : v > tokens ? tokens : v;
      }
      b.vis[r] = static_cast<int32_t>(v);
    }
    kn.step(b, tokens, c.scaleLog2, false);
  }
  Store(b, rows, c.dV, out);
}

// Loads the h_q bf16 rows of query token s of request i into ws (once per token and call, as
// src/reference/qmemo.ts `qLoaded`), noting non-finite elements: sparse decode and prefill items.
void LoadQRows(const Span<uint16_t>& q, const View& qv, int64_t i, int64_t s, int64_t sQ, int64_t hQ, int64_t dQK, Workspace& ws,
               uint64_t call, QScan& scan) {
  const int64_t group = i * sQ + s;
  if (ws.call == call && ws.group == group && ws.r0 == 0) return;
  ws.call = call, ws.group = group, ws.r0 = 0;
  uint32_t* q32 = reinterpret_cast<uint32_t*>(ws.b.q);
  for (int64_t h = 0; h < hQ; h++) {
    int64_t src;
    Require(MulAdd(qv.offset, i, qv.s0, src) && MulAdd(src, s, qv.s1, src) && MulAdd(src, h, qv.s2, src) && Inside(src, dQK, q.length),
            "q row past its array");
    const int64_t d = LoadQRow(q.data + src, q32 + h * dQK, dQK, false);
    if (d >= 0) scan.Note(i, s, h, d, sQ, hQ, dQK);
  }
}

void RunSparse(const SparseCall& c, const int32_t* it, uint64_t call, const Out& out, QScan& scan) {
  const int64_t i = it[0], s = it[1], p0 = it[2], p1 = it[3];
  Require(i >= 0 && i < c.b && s >= 0 && s < c.sQ && p0 >= 0 && p1 >= p0 && it[4] == 0 && it[5] == c.hQ, "sparse item out of range");
  const int rows = static_cast<int>(c.hQ);
  Workspace& ws = WorkspaceFor(rows, static_cast<int>(c.dQK), static_cast<int>(c.dV));
  const TileBuffers& b = ws.b;
  const TileKernels& kn = KernelsFor(BestIsa());
  LoadQRows(c.q, c.qv, i, s, c.sQ, c.hQ, c.dQK, ws, call, scan);
  kn.reset(b);
  const Fp8Shape& shape = ShapeOf(c.layout);
  const uint8_t* srcs[kTile];
  int filled = 0;
  const auto flush = [&](int tokens) {
    // One dequantisation per run of slots from the same cache (tile-native.ts `endTokens`).
    for (int u0 = 0; u0 < tokens;) {
      int u1 = u0 + 1;
      while (u1 < tokens && srcs[u1] == srcs[u0]) u1++;
      kn.dqFp8(b, srcs[u0], u0, u1, c.layout);
      u0 = u1;
    }
    for (int r = 0; r < rows; r++) b.vis[r] = tokens;
    kn.step(b, tokens, c.scaleLog2, false);
  };
  int64_t base = 0;
  for (int n = 0; n < c.nScopes; n++) {
    const Scope& sc = c.scopes[n];
    int64_t lo = p0 - base, hi = p1 - base;
    lo = lo < 0 ? 0 : lo;
    if (sc.lengths.data != nullptr) {
      Require(i < sc.lengths.length, "topk length past its array");
      hi = hi < sc.lengths.data[i] ? hi : sc.lengths.data[i];
    }
    hi = hi < sc.topk ? hi : sc.topk;
    for (int64_t p = lo; p < hi; p++) {
      int64_t at;
      Require(MulAdd(sc.iv.offset, i, sc.iv.s0, at) && MulAdd(at, s, sc.iv.s1, at) && MulAdd(at, p, sc.iv.s2, at) &&
                  Inside(at, 1, sc.indices.length),
              "index past its array");
      const int64_t index = sc.indices.data[at];
      if (index == -1) continue;
      Require(index >= 0, "negative index");
      const int64_t row = index % sc.B;
      int64_t blockAt, rec, scl;
      Require(MulAdd(sc.cv.offset, index / sc.B, sc.cv.s0, blockAt), "token past the cache");
      if (c.layout == Fp8Layout::V32) {
        Require(MulAdd(blockAt, row, sc.cv.s1, rec), "token past the cache");
        scl = rec + shape.tiles * shape.tile;
      } else {
        Require(MulAdd(blockAt, row, shape.recordBytes, rec) && MulAdd(blockAt, sc.B, shape.recordBytes, scl) && MulAdd(scl, row, 8, scl),
                "token past the cache");
      }
      Require(Inside(rec, shape.recordBytes, sc.cache.length) && Inside(scl, shape.scaleBytes, sc.cache.length), "token past the cache");
      b.rec[filled] = static_cast<double>(rec);
      b.scl[filled] = static_cast<double>(scl);
      srcs[filled] = sc.cache.data;
      if (++filled == kTile) {
        flush(filled);
        filled = 0;
      }
    }
    base += sc.topk;
  }
  if (filled > 0) flush(filled);
  Store(b, rows, c.dV, out);
}

/** The running max every prefill row starts from (FlashMLA's sparse prefill kernels; docs/reference-backend.md#prefill). */
constexpr float kPrefillMaxInit = -1e30f;

// src/reference/prefill-item.ts `attendPrefill`: the used kv rows of positions [p0, p1) of query
// token s (position < topk_length[s], index in [0, s_kv)) gathered 64 at a time, converted once
// and served to all h_q heads; the running max starts at −1e30 and P is rounded to bf16 for P·V.
void RunPrefill(const PrefillCall& c, const int32_t* it, uint64_t call, const Out& out, QScan& scan) {
  const int64_t s = it[1], p0 = it[2];
  Require(it[0] == 0 && s >= 0 && s < c.sQ && p0 >= 0 && it[3] >= p0 && it[4] == 0 && it[5] == c.hQ, "prefill item out of range");
  const int rows = static_cast<int>(c.hQ);
  Workspace& ws = WorkspaceFor(rows, static_cast<int>(c.dQK), static_cast<int>(c.dV));
  const TileBuffers& b = ws.b;
  const TileKernels& kn = KernelsFor(BestIsa());
  // q is (s_q, h_q, d_qk): its view's first stride is the token's (no request dimension).
  LoadQRows(c.q, View{c.qv.offset, 0, c.qv.s0, c.qv.s1}, 0, s, c.sQ, c.hQ, c.dQK, ws, call, scan);
  kn.reset(b);
  for (int r = 0; r < b.rowsPad; r++) b.m[r] = kPrefillMaxInit;
  int64_t p1 = it[3] < c.topk ? it[3] : c.topk;
  if (c.lengths.data != nullptr) {
    Require(s < c.lengths.length, "topk length past its array");
    p1 = p1 < c.lengths.data[s] ? p1 : c.lengths.data[s];
  }
  const uint16_t* tile[kTile];
  int filled = 0;
  const auto flush = [&](int tokens) {
    kn.rowsBf16(b, tile, tokens);
    for (int r = 0; r < rows; r++) b.vis[r] = tokens;
    kn.step(b, tokens, c.scaleLog2, true);
  };
  for (int64_t p = p0; p < p1; p++) {
    int64_t at;
    Require(MulAdd(c.iv.offset, s, c.iv.s0, at) && MulAdd(at, p, c.iv.s2, at) && Inside(at, 1, c.indices.length), "index past its array");
    const int64_t index = c.indices.data[at];
    if (index < 0 || index >= c.sKv) continue;
    int64_t row;
    Require(MulAdd(c.kv_.offset, index, c.kv_.s0, row) && Inside(row, c.dQK, c.kv.length), "kv row past its array");
    tile[filled] = c.kv.data + row;
    if (++filled == kTile) {
      flush(filled);
      filled = 0;
    }
  }
  if (filled > 0) flush(filled);
  Store(b, rows, c.dV, out);
}

// ---- finishing: merged rows into out and lse -------------------------------------------------

/**
 * Where a call's rows go once its items are done (src/reference/index.ts `runOnRunner`): each
 * group's partials (consecutive items of one request × KV head × row block, or request × query
 * token) fold in item order, as the `merger` of src/reference/index.ts folds them, and its rows
 * are written: out rounded to bf16 or fp16, and the merged max and sum into lseM and lseL, from
 * which JavaScript takes the natural-log LSE (one log per row; docs/reference-backend.md#native-runner).
 * A call's items may come in waves: the fold of a group that a wave leaves open goes to carryOut,
 * and the next wave's first group goes on from there (its carryIn). Two buffers, not one: a wave's
 * first group may still read carryIn while its last group writes carryOut.
 */
struct Finish {
  uint16_t* out;
  float *lseM, *lseL, *carryIn, *carryOut;
  int64_t outLength, lseLength;
  bool fromCarry;  // the first group's fold so far is in carryIn (it began in an earlier wave)
  bool open;       // the last group goes on in the next wave: its fold goes to carryOut, no rows written
  bool fp16;
  int64_t b, sQ, hQ, dv;
  int64_t hpk;  // dense: query heads per KV head; sparse: 0 (an item's rows are the heads of its token)
};

/** Items [first, last) of a wave that fold into one group of `rows` rows. */
struct Group {
  int64_t first, last, rows;
};

/** Rows [r0, r1) of group g: the unit of finishing work a thread claims. */
struct Task {
  int64_t g, r0, r1;
};

/** Rows per finishing task: 16 rows × 512 floats, a few µs each, so every thread gets a share. */
constexpr int64_t kTaskRows = 16;

using Clock = std::chrono::steady_clock;

/** `micros` µs from now. */
Clock::time_point In(int64_t micros) { return Clock::now() + std::chrono::microseconds(micros); }

/**
 * Spins until done() holds or `until` passes; returns done(). A call's waits (for another
 * thread's last item of a group, for the helpers' last items: up to 100 µs) are often shorter than
 * that, and a thread that sleeps instead gives its core away: on a busy machine it then waits to
 * be scheduled again, which is serial time of the call.
 */
template <class Done>
bool SpinUntil(Done done, Clock::time_point until) {
  for (int k = 0;; k++) {
    if (done()) return true;
    if ((k & 63) == 63 && Clock::now() > until) return done();
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
}

// ---- the helper threads -----------------------------------------------------------------------

/**
 * One call's items, claimed from the front by every thread that joins it; then, with `finish`,
 * its finishing tasks, claimed the same way, each once all items of its group are done.
 */
struct Job {
  const int32_t* items;
  int64_t count;
  float* results;
  int64_t slot, dv;
  uint64_t call;
  const DenseCall* dense;
  const SparseCall* sparse;
  const PrefillCall* prefill;
  const Finish* finish = nullptr;
  std::vector<int64_t> groupOf;  // item → group (with finish)
  std::vector<Group> groups;
  std::vector<Task> tasks;
  // Items of each group not yet done; −1 once the call failed (waiters then leave).
  std::unique_ptr<std::atomic<int32_t>[]> pending;
  std::atomic<int64_t> next{0}, nextTask{0};
  QScan qScan;
  std::atomic<bool> failed{false};
  std::mutex errorMu;
  std::string error;

  void Fail(const std::string& why) {
    {
      std::lock_guard<std::mutex> lk(errorMu);
      if (error.empty()) error = why;
    }
    failed.store(true);
    for (std::size_t g = 0; finish != nullptr && g < groups.size(); g++) {
      pending[g].store(-1);
      pending[g].notify_all();
    }
  }

  void Work() {
    try {
      for (int64_t j = next.fetch_add(1); j < count && !failed.load(std::memory_order_relaxed); j = next.fetch_add(1)) {
        const int32_t* it = items + kItem * j;
        const int64_t rows = static_cast<int64_t>(it[5]) - it[4];
        float* at = results + j * slot;
        const Out out{at, at + rows, at + 2 * rows};
        if (dense) RunDense(*dense, it, call, out, qScan);
        else if (sparse) RunSparse(*sparse, it, call, out, qScan);
        else RunPrefill(*prefill, it, call, out, qScan);
        if (finish != nullptr) {
          std::atomic<int32_t>& left = pending[groupOf[j]];
          if (left.fetch_sub(1, std::memory_order_acq_rel) == 1) left.notify_all();
        }
      }
      if (finish == nullptr) return;
      for (int64_t t = nextTask.fetch_add(1); t < static_cast<int64_t>(tasks.size()) && !failed.load(std::memory_order_relaxed);
           t = nextTask.fetch_add(1)) {
        std::atomic<int32_t>& left = pending[tasks[t].g];
        SpinUntil([&] { return left.load(std::memory_order_acquire) <= 0; }, In(100));
        for (int32_t v = left.load(std::memory_order_acquire); v != 0; v = left.load(std::memory_order_acquire)) {
          if (v < 0) return;
          left.wait(v, std::memory_order_acquire);
        }
        FinishRows(tasks[t]);
      }
    } catch (const OutOfRange& e) {
      Fail(e.what);
    } catch (const std::bad_alloc&) {
      Fail("out of memory for a tile workspace");
    } catch (...) {
      Fail("an item failed");
    }
  }

  /** Folds rows [r0, r1) of a group's partials in item order, then writes them (or carries them on). */
  void FinishRows(const Task& t) const {
    const Finish& f = *finish;
    const Group& g = groups[t.g];
    const int64_t R = g.rows;
    const bool fromCarry = f.fromCarry && t.g == 0;
    const bool toCarry = f.open && t.g + 1 == static_cast<int64_t>(groups.size());
    float* acc = fromCarry ? f.carryIn : results + g.first * slot;
    for (int64_t j = fromCarry ? g.first : g.first + 1; j < g.last; j++) {
      const float* p = results + j * slot;
      for (int64_t r = t.r0; r < t.r1; r++) MergeRow(acc + r, acc + R + r, acc + 2 * R + r * dv, p + r, p + R + r, p + 2 * R + r * dv, dv);
    }
    if (toCarry) {
      std::memcpy(f.carryOut + t.r0, acc + t.r0, sizeof(float) * (t.r1 - t.r0));
      std::memcpy(f.carryOut + R + t.r0, acc + R + t.r0, sizeof(float) * (t.r1 - t.r0));
      std::memcpy(f.carryOut + 2 * R + t.r0 * dv, acc + 2 * R + t.r0 * dv, sizeof(float) * (t.r1 - t.r0) * dv);
      return;
    }
    const int32_t* it = items + kItem * g.first;
    const int64_t i = it[0];
    for (int64_t r = t.r0; r < t.r1; r++) {
      // Dense rows are (s, head of KV head it[1]) (docs/flashmla-interface.md#dense-host-layer); sparse rows are the heads of token it[1].
      const int64_t s = f.hpk > 0 ? (it[4] + r) / f.hpk : it[1];
      const int64_t h = f.hpk > 0 ? it[1] * f.hpk + (it[4] + r) % f.hpk : r;
      // lse (b, h_q, s_q) at (i, h, s); out (b, s_q, h_q, d_v) at (i, s, h, 0).
      int64_t ih, is, lseAt, outAt;
      Require(MulAdd(h, i, f.hQ, ih) && MulAdd(s, ih, f.sQ, lseAt) && Inside(lseAt, 1, f.lseLength) && MulAdd(s, i, f.sQ, is) &&
                  MulAdd(h, is, f.hQ, outAt) && MulAdd(0, outAt, f.dv, outAt) && Inside(outAt, f.dv, f.outLength),
              "an output row past out or lse");
      const float m = acc[r], l = acc[R + r];
      f.lseM[lseAt] = m;
      f.lseL[lseAt] = l;
      uint16_t* to = f.out + outAt;
      if (LseIsInfinite(m, l)) {
        std::memset(to, 0, sizeof(uint16_t) * dv);
        continue;
      }
      // src/reference/finalize.ts `writeRows`: the product in double, rounded to float, then to q's dtype.
      const double factor = 1.0 / static_cast<double>(l);
      const float* o = acc + 2 * R + r * dv;
      if (f.fp16) for (int64_t x = 0; x < dv; x++) to[x] = Fp16Of(static_cast<float>(o[x] * factor));
      else for (int64_t x = 0; x < dv; x++) to[x] = Bf16Of(static_cast<float>(o[x] * factor));
    }
  }
};

/**
 * The helpers: started on demand (warm-up or the first call that wants them), then kept, asleep
 * on a condition variable between calls. One call at a time uses them (`busy`); a call that finds
 * them busy (another worker thread's call) runs alone on its own thread: same items, same bits.
 * Never destroyed: helpers are detached and may still be asleep when the process exits.
 */
class Helpers {
 public:
  static Helpers& Get() {
    static Helpers* h = new Helpers();
    return *h;
  }

  /** Starts helpers until there are at least n (fewer if the system refuses threads); returns how many there are. */
  int Grow(int n) {
    std::lock_guard<std::mutex> lk(mu_);
    try {
      for (; started_ < n; started_++) std::thread([this] { Loop(); }).detach();
    } catch (const std::system_error&) {
      // Calls run with the helpers there are (or on the calling thread alone): same items, same bits.
    }
    return started_;
  }

  /**
   * Wakes the helpers (starting up to n) to spin for the next job until `micros` µs from now:
   * a call primes them as it starts, so that waking them (~0.1 ms, more on a busy machine)
   * overlaps its validation instead of delaying its items (docs/reference-backend.md#native-runner).
   */
  void Prime(int n, int64_t micros) {
    Grow(n);
    {
      std::lock_guard<std::mutex> lk(mu_);
      primedUntil_ = In(micros);
      primes_++;
    }
    wake_.notify_all();
  }

  /** Runs `job` on the calling thread and up to `helpers` helpers; returns when every item is done. */
  void Run(Job& job, int helpers) {
    std::unique_lock<std::mutex> own(busy_, std::try_to_lock);
    if (!own.owns_lock() || helpers == 0) {
      job.Work();
      return;
    }
    Grow(helpers);
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_ = &job;
      generation_++;
      wanted_ = helpers;
      joined_ = 0;
    }
    wake_.notify_all();
    job.Work();
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_ = nullptr;  // no helper joins after this
    }
    if (SpinUntil([this] { return active_.load() == 0; }, In(100))) return;
    std::unique_lock<std::mutex> lk(mu_);
    idle_.wait(lk, [this] { return active_.load() == 0; });
  }

 private:
  void Loop() {
    uint64_t seen = 0, primed = 0;
    std::unique_lock<std::mutex> lk(mu_);
    const auto joinable = [&] { return job_ != nullptr && generation_ != seen && joined_ < wanted_; };
    for (;;) {
      wake_.wait(lk, [&] { return joinable() || primes_ != primed; });
      if (!joinable()) {
        // Primed: spin, without the lock, until a job is posted or the priming ends; then join it or sleep.
        primed = primes_;
        const Clock::time_point until = primedUntil_;
        const uint64_t posted = generation_;
        lk.unlock();
        SpinUntil([&] { return generation_.load() != posted; }, until);
        lk.lock();
        continue;
      }
      seen = generation_;
      joined_++;
      active_++;
      Job* job = job_;
      lk.unlock();
      job->Work();
      lk.lock();
      if (--active_ == 0) idle_.notify_all();
    }
  }

  std::mutex busy_;
  std::mutex mu_;
  std::condition_variable wake_, idle_;
  Job* job_ = nullptr;
  // Jobs posted: changed under mu_, read without it by primed helpers.
  std::atomic<uint64_t> generation_{0};
  uint64_t primes_ = 0;
  Clock::time_point primedUntil_{};
  int wanted_ = 0, joined_ = 0, started_ = 0;
  // Helpers in a job: changed under mu_ (idle_ waits on it), read without it while the caller spins.
  std::atomic<int> active_{0};
};

std::atomic<uint64_t> calls{0};

// ---- JavaScript arguments ---------------------------------------------------------------------

[[noreturn]] void Bad(Napi::Env env, const std::string& what) { throwError(env, "E_INTERNAL", "cpuTile.run: " + what); }

template <class T>
Span<T> SpanOf(Napi::Env env, const Napi::Value& v, napi_typedarray_type type, const char* name, bool optional = false) {
  if (optional && (v.IsNull() || v.IsUndefined())) return {};
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type) Bad(env, std::string(name) + " has the wrong array type");
  Napi::TypedArrayOf<T> a = v.As<Napi::TypedArrayOf<T>>();
  return {a.Data(), static_cast<int64_t>(a.ElementLength())};
}

/** The numbers of a Float64Array parameter block, each a whole number unless `real`. */
struct Params {
  Napi::Env env;
  const double* p;
  std::size_t n, at = 0;
  int64_t Int(int64_t lo, int64_t hi, const char* name) {
    int64_t v;
    if (at >= n || !WholeInt(p[at++], v) || v < lo || v > hi) Bad(env, std::string("parameter ") + name + " out of range");
    return v;
  }
  double Real(const char* name) {
    if (at >= n) Bad(env, std::string("parameter ") + name + " missing");
    return p[at++];
  }
  View ViewOf() {
    constexpr int64_t kMax = 9007199254740991LL;
    View v;
    v.offset = Int(0, kMax, "offset");
    v.s0 = Int(0, kMax, "stride");
    v.s1 = Int(0, kMax, "stride");
    v.s2 = Int(0, kMax, "stride");
    return v;
  }
};

Params ParamsOf(const Napi::CallbackInfo& info) {
  if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) Bad(info.Env(), "params must be a Float64Array");
  Napi::Float64Array a = info[0].As<Napi::Float64Array>();
  return {info.Env(), a.Data(), a.ElementLength()};
}

/**
 * The finishing arguments from argument `at` on (out, lse, lseL, carryIn, carryOut, flags; out null: none) into
 * `f` (whose call fields are set); groups and tasks of the job's items. Every group's rows, lse
 * and out places are checked again when written; here the arrays' sizes against the call.
 */
bool FinishOf(const Napi::CallbackInfo& info, std::size_t at, Finish& f, Job& job) {
  Napi::Env env = info.Env();
  if (info[at].IsNull() || info[at].IsUndefined()) return false;
  const Span<uint16_t> out = SpanOf<uint16_t>(env, info[at], napi_uint16_array, "out");
  const Span<float> lseM = SpanOf<float>(env, info[at + 1], napi_float32_array, "lse");
  const Span<float> lseL = SpanOf<float>(env, info[at + 2], napi_float32_array, "lseL");
  const Span<float> carryIn = SpanOf<float>(env, info[at + 3], napi_float32_array, "carryIn");
  const Span<float> carryOut = SpanOf<float>(env, info[at + 4], napi_float32_array, "carryOut");
  int64_t flags;
  if (!info[at + 5].IsNumber() || !WholeInt(info[at + 5].As<Napi::Number>().DoubleValue(), flags) || flags < 0 || flags > 3) {
    Bad(env, "flags out of range");
  }
  int64_t rows, outs;
  if (!(MulAdd(0, f.b, f.sQ, rows) && MulAdd(0, rows, f.hQ, rows) && MulAdd(0, rows, f.dv, outs)) || out.length < outs ||
      lseM.length < rows || lseL.length < rows) {
    Bad(env, "out or lse shorter than the call");
  }
  f.out = const_cast<uint16_t*>(out.data);
  f.lseM = const_cast<float*>(lseM.data);
  f.lseL = const_cast<float*>(lseL.data);
  f.carryIn = const_cast<float*>(carryIn.data);
  f.carryOut = const_cast<float*>(carryOut.data);
  f.outLength = out.length;
  f.lseLength = lseM.length < lseL.length ? lseM.length : lseL.length;
  f.fromCarry = (flags & 1) != 0;
  f.open = (flags & 2) != 0;
  if (carryIn.data < carryOut.data + carryOut.length && carryOut.data < carryIn.data + carryIn.length) Bad(env, "carryIn and carryOut overlap");
  // Groups as the merger of src/reference/index.ts tells them: consecutive items with the same
  // request, head or token, and first row.
  const int32_t* it = job.items;
  job.groupOf.resize(job.count);
  for (int64_t j = 0; j < job.count; j++) {
    const int32_t* a = it + kItem * j;
    const int32_t* p = a - kItem;
    if (j > 0 && a[0] == p[0] && a[1] == p[1] && a[4] == p[4]) {
      if (a[5] != p[5]) Bad(env, "items of one group with different rows");
      job.groups.back().last = j + 1;
    } else {
      job.groups.push_back({j, j + 1, static_cast<int64_t>(a[5]) - a[4]});
    }
    job.groupOf[j] = static_cast<int64_t>(job.groups.size()) - 1;
  }
  const auto carries = [&](const Span<float>& carry, const Group& g) { return g.rows <= carry.length / (f.dv + 2); };
  if ((f.fromCarry || f.open) && job.groups.empty()) Bad(env, "a carry without items");
  if ((f.fromCarry && !carries(carryIn, job.groups.front())) || (f.open && !carries(carryOut, job.groups.back()))) {
    Bad(env, "carry shorter than its group");
  }
  job.pending.reset(new std::atomic<int32_t>[job.groups.size()]);
  for (std::size_t g = 0; g < job.groups.size(); g++) {
    const Group& gr = job.groups[g];
    job.pending[g].store(static_cast<int32_t>(gr.last - gr.first));
    for (int64_t r = 0; r < gr.rows; r += kTaskRows) job.tasks.push_back({static_cast<int64_t>(g), r, r + kTaskRows < gr.rows ? r + kTaskRows : gr.rows});
  }
  return true;
}

/**
 * items, count, results, slot, threads from argument `first` on, then the finishing arguments
 * (FinishOf; `f` holds the call's fields); runs the job; throws its error. Returns the flat index
 * of the first non-finite q element the items read (QScan), or −1.
 */
int64_t RunJob(const Napi::CallbackInfo& info, std::size_t first, const DenseCall* dense, const SparseCall* sparse, const PrefillCall* prefill,
               Finish& f) {
  Napi::Env env = info.Env();
  const int64_t dv = f.dv;
  const Span<int32_t> items = SpanOf<int32_t>(env, info[first], napi_int32_array, "items");
  Span<float> results = SpanOf<float>(env, info[first + 2], napi_float32_array, "results");
  const auto number = [&](std::size_t k, int64_t lo, int64_t hi, const char* name) {
    int64_t v;
    if (!info[k].IsNumber() || !WholeInt(info[k].As<Napi::Number>().DoubleValue(), v) || v < lo || v > hi) Bad(env, std::string(name) + " out of range");
    return v;
  };
  const int64_t count = number(first + 1, 0, items.length / kItem, "count");
  const int64_t slot = number(first + 3, dv + 2, INT64_MAX / 4, "slot");
  const int64_t threads = number(first + 4, 1, 256, "threads");
  // Every slot fits results and every item's partial (rows·(dv + 2) floats) fits its slot.
  if (count > results.length / slot) Bad(env, "results shorter than count × slot");
  for (int64_t j = 0; j < count; j++) {
    const int64_t rows = static_cast<int64_t>(items.data[kItem * j + 5]) - items.data[kItem * j + 4];
    if (rows < 1 || rows > slot / (dv + 2)) Bad(env, "an item's rows exceed its slot");
  }
  Job job;
  job.items = items.data;
  job.count = count;
  job.results = const_cast<float*>(results.data);
  job.slot = slot;
  job.dv = dv;
  job.call = ++calls;
  job.dense = dense;
  job.sparse = sparse;
  job.prefill = prefill;
  if (FinishOf(info, first + 5, f, job)) job.finish = &f;
  // Finishing tasks are work for the helpers too: a call of one item still has its group's rows.
  const int64_t units = count > static_cast<int64_t>(job.tasks.size()) ? count : static_cast<int64_t>(job.tasks.size());
  const int64_t helpers = threads - 1 < units - 1 ? threads - 1 : units - 1;
  Helpers::Get().Run(job, helpers > 0 ? static_cast<int>(helpers) : 0);
  if (job.failed.load()) Bad(env, job.error);
  const int64_t bad = job.qScan.first.load();
  return bad == INT64_MAX ? -1 : bad;
}

}  // namespace

// runDense(params, q, kCache, blockTable, seqlens, items, count, results, slot, threads, out, lse, lseL, carryIn, carryOut, flags)
Napi::Value RunDenseItems(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Params p = ParamsOf(info);
  DenseCall c{};
  c.fp16 = p.Int(0, 1, "fp16") == 1;
  c.b = p.Int(1, INT32_MAX, "b");
  c.sQ = p.Int(1, INT32_MAX, "s_q");
  c.hQ = p.Int(1, 4096, "h_q");
  c.hK = p.Int(1, c.hQ, "h_k");
  c.dQK = p.Int(16, 4096, "d_qk");
  c.dV = p.Int(16, c.dQK, "d_v");
  c.causal = p.Int(0, 1, "causal") == 1;
  c.scaleLog2 = static_cast<float>(p.Real("scaleLog2"));
  c.qv = p.ViewOf();
  c.kv = p.ViewOf();
  const int64_t btOffset = p.Int(0, INT64_MAX / 2, "offset"), bt0 = p.Int(0, INT64_MAX / 2, "stride"), bt1 = p.Int(0, INT64_MAX / 2, "stride");
  c.btv = {btOffset, bt0, bt1, 0};
  if (c.hQ % c.hK != 0 || c.dQK % 16 != 0 || c.dV % 16 != 0) Bad(env, "h_q must be a multiple of h_k, d_qk and d_v of 16");
  c.q = SpanOf<uint16_t>(env, info[1], napi_uint16_array, "q");
  c.kc = SpanOf<uint16_t>(env, info[2], napi_uint16_array, "kCache");
  c.bt = SpanOf<int32_t>(env, info[3], napi_int32_array, "blockTable");
  c.seqlens = SpanOf<int32_t>(env, info[4], napi_int32_array, "seqlens");
  if (c.seqlens.length < c.b) Bad(env, "seqlens shorter than b");
  Finish f{};
  f.fp16 = c.fp16, f.b = c.b, f.sQ = c.sQ, f.hQ = c.hQ, f.dv = c.dV, f.hpk = c.hQ / c.hK;
  return Napi::Number::New(env, static_cast<double>(RunJob(info, 5, &c, nullptr, nullptr, f)));
}

// runSparse(params, q, cache0, indices0, lengths0, cache1, indices1, lengths1, items, count, results, slot, threads, out, lse, lseL, carryIn, carryOut, flags)
Napi::Value RunSparseItems(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Params p = ParamsOf(info);
  SparseCall c{};
  c.layout = p.Int(0, 1, "layout") == 0 ? Fp8Layout::V32 : Fp8Layout::Model1;
  c.b = p.Int(1, INT32_MAX, "b");
  c.sQ = p.Int(1, INT32_MAX, "s_q");
  c.hQ = p.Int(1, 4096, "h_q");
  c.dQK = ShapeOf(c.layout).dim;
  c.dV = p.Int(16, c.dQK, "d_v");
  if (c.dV % 16 != 0) Bad(env, "d_v must be a multiple of 16");
  c.scaleLog2 = static_cast<float>(p.Real("scaleLog2"));
  c.qv = p.ViewOf();
  c.nScopes = static_cast<int>(p.Int(1, 2, "scopes"));
  c.q = SpanOf<uint16_t>(env, info[1], napi_uint16_array, "q");
  for (int n = 0; n < c.nScopes; n++) {
    Scope& s = c.scopes[n];
    s.topk = p.Int(0, INT32_MAX, "topk");
    s.B = p.Int(1, INT32_MAX, "page block size");
    s.cv = p.ViewOf();
    s.iv = p.ViewOf();
    s.cache = SpanOf<uint8_t>(env, info[2 + 3 * n], napi_uint8_array, "cache");
    s.indices = SpanOf<int32_t>(env, info[3 + 3 * n], napi_int32_array, "indices");
    s.lengths = SpanOf<int32_t>(env, info[4 + 3 * n], napi_int32_array, "lengths", true);
  }
  Finish f{};
  f.fp16 = false, f.b = c.b, f.sQ = c.sQ, f.hQ = c.hQ, f.dv = c.dV, f.hpk = 0;
  return Napi::Number::New(env, static_cast<double>(RunJob(info, 8, nullptr, &c, nullptr, f)));
}

// runPrefill(params, q, kv, indices, lengths, items, count, results, slot, threads): partials only (no finishing arguments).
Napi::Value RunPrefillItems(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Params p = ParamsOf(info);
  PrefillCall c{};
  c.sQ = p.Int(1, INT32_MAX, "s_q");
  c.hQ = p.Int(1, 4096, "h_q");
  c.dQK = p.Int(16, 4096, "d_qk");
  c.dV = p.Int(16, c.dQK, "d_v");
  c.sKv = p.Int(1, INT64_MAX / 2, "s_kv");
  c.topk = p.Int(0, INT32_MAX, "topk");
  if (c.dQK % 16 != 0 || c.dV % 16 != 0) Bad(env, "d_qk and d_v must be multiples of 16");
  c.scaleLog2 = static_cast<float>(p.Real("scaleLog2"));
  c.qv = p.ViewOf();
  c.kv_ = p.ViewOf();
  c.iv = p.ViewOf();
  c.q = SpanOf<uint16_t>(env, info[1], napi_uint16_array, "q");
  c.kv = SpanOf<uint16_t>(env, info[2], napi_uint16_array, "kv");
  c.indices = SpanOf<int32_t>(env, info[3], napi_int32_array, "indices");
  c.lengths = SpanOf<int32_t>(env, info[4], napi_int32_array, "lengths", true);
  if (info.Length() > 10 && !info[10].IsNull() && !info[10].IsUndefined()) Bad(env, "runPrefill takes no finishing arguments");
  Finish f{};
  f.fp16 = false, f.b = 1, f.sQ = c.sQ, f.hQ = c.hQ, f.dv = c.dV, f.hpk = 0;
  return Napi::Number::New(env, static_cast<double>(RunJob(info, 5, nullptr, nullptr, &c, f)));
}

// prime(n, micros): wakes the helpers (starting up to n) to spin for the next call's items for up to micros µs.
Napi::Value PrimeHelpers(const Napi::CallbackInfo& info) {
  int64_t n, micros;
  if (!info[0].IsNumber() || !WholeInt(info[0].As<Napi::Number>().DoubleValue(), n) || n < 0 || n > 255 || !info[1].IsNumber() ||
      !WholeInt(info[1].As<Napi::Number>().DoubleValue(), micros) || micros < 0 || micros > 10000) {
    Bad(info.Env(), "prime(n, micros) takes 0…255 and 0…10000");
  }
  Helpers::Get().Prime(static_cast<int>(n), micros);
  return Napi::Value();
}

// startHelpers(n): the runner's helper threads, started ahead of the first call (warm-up).
Napi::Value StartHelpers(const Napi::CallbackInfo& info) {
  int64_t n;
  if (!info[0].IsNumber() || !WholeInt(info[0].As<Napi::Number>().DoubleValue(), n) || n < 0 || n > 255) {
    Bad(info.Env(), "startHelpers(n) takes 0…255");
  }
  return Napi::Number::New(info.Env(), Helpers::Get().Grow(static_cast<int>(n)));
}

}  // namespace fmla::cpu
