// Self-test driver for the emulator: loads libflashmla_emu.so with dlopen exactly like the addon
// (launchers by the mangled names of binding/flashmla_symbols.h, CUDA functions through the same
// handle) and checks
//   sched   — the scheduler against a direct re-derivation of docs/flashmla-interface.md#tile-scheduler + docs/flashmla-interface.md#scheduler-leftover;
//   memory  — the memory checker, sticky faults and last-error semantics;
//   numeric — dense and sparse results (main + combine) against a naive float64 computation
//             within the FlashMLA's tolerances;
//   prefill — the nine sparse prefill launchers against a float64 computation (invalid indices of
//             every kind, topk_length, sinks ±inf, rows with no valid index), and NaN tokens beyond
//             topk_length on sm90 and sm100;
//   prefill-checks — their KU_ASSERTs, an out-of-bounds kv stride, the wrong-arch trap, an empty grid.
// `image` / `prefill-image` print whether a valid decode / prefill launch runs on the configured device.
// Usage: selftest <path to libflashmla_emu.so> [sched|memory|numeric|prefill|prefill-checks|image|prefill-image]...;
// prints one line per failed check and exits non-zero if any failed.
#include <dlfcn.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda_runtime_abi.h"
#include "flashmla_params.h"
#include "flashmla_symbols.h"

using namespace cuda_abi;
using flashmla_abi::Launcher;

namespace {

int gFailures = 0;
#define CHECK(cond, ...)                                               \
  do {                                                                 \
    if (!(cond)) {                                                     \
      ++gFailures;                                                     \
      std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);      \
      std::printf(__VA_ARGS__);                                        \
      std::printf("\n");                                               \
    }                                                                  \
  } while (0)

struct Cuda {
#define EMU_MEMBER(member, symbol, signature) std::type_identity_t<signature> member = nullptr;
  CUDA_ABI_FUNCTIONS(EMU_MEMBER)
#undef EMU_MEMBER
};

struct Lib {
  void* handle = nullptr;
  Cuda cuda;
  void* launchers[static_cast<int>(Launcher::Count)] = {};

  template <class P> void call(Launcher id, P& params) {
    reinterpret_cast<void (*)(P&)>(launchers[static_cast<int>(id)])(params);
  }
};

Lib load(const char* path) {
  Lib lib;
  lib.handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (lib.handle == nullptr) {
    std::printf("FAIL dlopen: %s\n", dlerror());
    std::exit(2);
  }
#define EMU_RESOLVE(member, symbol, signature)                                        \
  lib.cuda.member = reinterpret_cast<signature>(dlsym(lib.handle, symbol));            \
  if (lib.cuda.member == nullptr) { std::printf("FAIL missing %s\n", symbol); std::exit(2); }
  CUDA_ABI_FUNCTIONS(EMU_RESOLVE)
#undef EMU_RESOLVE
  for (const auto& s : flashmla_abi::kLauncherSymbols) {
    lib.launchers[static_cast<int>(s.id)] = dlsym(lib.handle, s.mangled);
    if (lib.launchers[static_cast<int>(s.id)] == nullptr) {
      std::printf("FAIL missing launcher %s\n", s.key);
      std::exit(2);
    }
  }
  return lib;
}

// ---- device buffers ---------------------------------------------------------------------------
struct Buf {
  Lib* lib;
  void* p = nullptr;
  std::size_t bytes = 0;
  Buf(Lib& l, std::size_t n) : lib(&l), bytes(n) {
    int e = l.cuda.Malloc(&p, n);
    if (e != 0) {
      std::printf("FAIL cudaMalloc(%zu) = %d\n", n, e);
      std::exit(2);
    }
  }
  Buf(const Buf&) = delete;
  ~Buf() { lib->cuda.Free(p); }
  template <class T> T* as() const { return static_cast<T*>(p); }
  template <class T> void upload(const std::vector<T>& v) {
    CHECK(lib->cuda.MemcpyAsync(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice, nullptr) == 0, "upload");
  }
  template <class T> std::vector<T> download(std::size_t n) {
    std::vector<T> v(n);
    CHECK(lib->cuda.MemcpyAsync(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost, nullptr) == 0, "download");
    return v;
  }
};

// ---- sched ------------------------------------------------------------------------------------
// docs/flashmla-interface.md#tile-scheduler written out directly, with the leftover parts of docs/flashmla-interface.md#scheduler-leftover
struct Expected {
  std::vector<DecodingSchedMeta> parts;
  std::vector<int> numSplits;
};

Expected deriveSchedule(const std::vector<int>& len, int P, int F) {
  const int b = static_cast<int>(len.size());
  auto lastBlock = [&](int i) { return std::max(len[i] - 1, 0) / 64; };
  auto nblk = [&](int i) { return lastBlock(i) + 1; };
  long total = 0;
  for (int i = 0; i < b; ++i) total += nblk(i) + F;
  const int payload = static_cast<int>((total + P - 1) / P) + F;
  Expected ex;
  ex.numSplits.assign(b + 1, 0);
  int r = 0, o = 0, kk = 0, c = 0;
  for (int part = 0; part < P; ++part) {
    DecodingSchedMeta m{};
    if (r >= b) {  // docs/flashmla-interface.md#scheduler-leftover
      m.begin_req_idx = b;
      m.end_req_idx = b - 1;
      m.begin_block_idx = lastBlock(0);
      m.end_block_idx = len[b - 1] == 0 ? 0 : lastBlock(b - 1) + 1;
      ex.parts.push_back(m);
      continue;
    }
    m.begin_req_idx = r;
    m.begin_block_idx = o;
    m.begin_split_idx = kk;
    m.is_first_req_splitted = o != 0;
    int budget = payload;
    while (r < b) {
      int need = nblk(r) - o + F;
      if (budget >= need) {
        c += kk + 1;
        ex.numSplits[r + 1] = c;
        budget -= need;
        ++r;
        o = 0;
        kk = 0;
      } else {
        if (budget - F > 0) {
          o += budget - F;
          ++kk;
        }
        break;
      }
    }
    m.end_req_idx = o > 0 ? r : r - 1;
    m.end_block_idx = o > 0 ? o : (len[r - 1] == 0 ? 0 : lastBlock(r - 1) + 1);
    m.is_last_req_splitted = m.end_block_idx != lastBlock(m.end_req_idx) + 1 && len[m.end_req_idx] != 0;
    if (m.begin_req_idx == m.end_req_idx) {
      m.is_first_req_splitted = m.is_last_req_splitted = m.is_first_req_splitted || m.is_last_req_splitted;
    }
    ex.parts.push_back(m);
  }
  return ex;
}

// Runs the emulator's scheduler; returns the parts and num_splits.
Expected runSchedule(Lib& lib, int b, int P, int F, int topk, int extraTopk, const std::vector<int>* seqlens,
                     const std::vector<int>* topkLength, const std::vector<int>* extraTopkLength) {
  Buf meta(lib, sizeof(DecodingSchedMeta) * P), splits(lib, sizeof(int) * (b + 1));
  Buf s1(lib, sizeof(int) * b), s2(lib, sizeof(int) * b), s3(lib, sizeof(int) * b);
  GetDecodeSchedMetaParams p{};
  p.b = b;
  p.s_q = 1;
  p.block_size_n = 64;
  p.fixed_overhead_num_blocks = F;
  p.topk = topk;
  p.extra_topk = extraTopk;
  if (seqlens != nullptr) { s1.upload(*seqlens); p.seqlens_k_ptr = s1.as<int>(); }
  if (topkLength != nullptr) { s2.upload(*topkLength); p.topk_length = s2.as<int>(); }
  if (extraTopkLength != nullptr) { s3.upload(*extraTopkLength); p.extra_topk_length = s3.as<int>(); }
  p.tile_scheduler_metadata_ptr = meta.as<DecodingSchedMeta>();
  p.num_splits_ptr = splits.as<int>();
  p.num_sm_parts = P;
  lib.call(Launcher::SchedMeta, p);
  Expected got;
  got.parts = meta.download<DecodingSchedMeta>(P);
  got.numSplits = splits.download<int>(b + 1);
  return got;
}

void testSched(Lib& lib) {
  std::mt19937 rng(12345);
  auto rnd = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int iter = 0; iter < 400; ++iter) {
    const int b = rnd(1, 40);
    const int P = rnd(1, 160);
    const int kind = iter % 3;  // dense, sparse, sparse with extra
    const int F = (iter % 7 == 0) ? 3 : 5;
    std::vector<int> seq(b), tl(b), etl(b), len(b);
    const int topk = 64 * rnd(1, 40), extraTopk = kind == 2 ? 64 * rnd(1, 16) : 0;
    const bool useTl = rnd(0, 1) == 1, useEtl = rnd(0, 1) == 1;
    for (int i = 0; i < b; ++i) {
      seq[i] = rnd(0, 3) == 0 ? 0 : rnd(1, 5000);
      tl[i] = rnd(0, topk);
      etl[i] = rnd(0, extraTopk);
      if (kind == 0) {
        len[i] = seq[i];
      } else {
        int l = useTl ? tl[i] : topk;
        if (l == 0) l = 1;
        if (extraTopk != 0) l = (l + 63) / 64 * 64 + (useEtl ? etl[i] : extraTopk);
        len[i] = l;
      }
    }
    Expected got = kind == 0 ? runSchedule(lib, b, P, F, -1, -1, &seq, nullptr, nullptr)
                             : runSchedule(lib, b, P, F, topk, extraTopk, nullptr, useTl ? &tl : nullptr,
                                           (kind == 2 && useEtl) ? &etl : nullptr);
    Expected want = deriveSchedule(len, P, F);
    for (int part = 0; part < P; ++part) {
      const DecodingSchedMeta& g = got.parts[part];
      const DecodingSchedMeta& w = want.parts[part];
      // The 8th word is uninitialised in FlashMLA (docs/flashmla-interface.md#scheduler-leftover): not compared.
      CHECK(std::memcmp(&g, &w, 28) == 0,
            "case %d part %d: got {%d,%d,%d,%d,%d,%d,%d} want {%d,%d,%d,%d,%d,%d,%d}", iter, part, g.begin_req_idx,
            g.end_req_idx, g.begin_block_idx, g.end_block_idx, g.begin_split_idx, g.is_first_req_splitted,
            g.is_last_req_splitted, w.begin_req_idx, w.end_req_idx, w.begin_block_idx, w.end_block_idx,
            w.begin_split_idx, w.is_first_req_splitted, w.is_last_req_splitted);
    }
    CHECK(got.numSplits == want.numSplits, "case %d: num_splits differ", iter);
    // Invariants: splits per request >= 1, total <= b + P rows (T = b + P suffices), and the
    // block ranges of each request tile [0, nblk) exactly (cursor ends at (b, 0, 0)).
    CHECK(got.numSplits[0] == 0, "case %d: num_splits[0]", iter);
    for (int i = 0; i < b; ++i) CHECK(got.numSplits[i + 1] > got.numSplits[i], "case %d: request %d has no split", iter, i);
    CHECK(got.numSplits[b] <= b + P, "case %d: %d splits exceed T = b + P", iter, got.numSplits[b]);
    std::vector<int> covered(b, 0), splitsSeen(b, 0);
    for (int part = 0; part < P; ++part) {
      const DecodingSchedMeta& m = got.parts[part];
      if (m.begin_req_idx >= b) continue;
      for (int i = m.begin_req_idx; i <= m.end_req_idx; ++i) {
        int lb = std::max(len[i] - 1, 0) / 64;
        int start = i == m.begin_req_idx ? m.begin_block_idx : 0;
        int end = i == m.end_req_idx ? m.end_block_idx : lb + 1;
        if (len[i] == 0 && i == m.end_req_idx) end = std::max(end, 1);  // L = 0: one block, end recorded as 0
        covered[i] += end - start;
        ++splitsSeen[i];
      }
    }
    for (int i = 0; i < b; ++i) {
      int lb = std::max(len[i] - 1, 0) / 64;
      CHECK(covered[i] == lb + 1, "case %d: request %d covers %d of %d blocks", iter, i, covered[i], lb + 1);
      CHECK(splitsSeen[i] == got.numSplits[i + 1] - got.numSplits[i], "case %d: request %d split count", iter, i);
    }
  }
}

// ---- memory -----------------------------------------------------------------------------------
// Dense scheduler params for b requests over the two lengths {10, 20} written to `seq` (a b above 2
// makes the kernel read past them), 8 SM parts.
GetDecodeSchedMetaParams denseSchedParams(int b, Buf& seq, Buf& meta, Buf& splits) {
  seq.upload(std::vector<int>{10, 20});
  GetDecodeSchedMetaParams p{};
  p.b = b;
  p.block_size_n = 64;
  p.fixed_overhead_num_blocks = 5;
  p.topk = -1;
  p.extra_topk = -1;
  p.seqlens_k_ptr = seq.as<int>();
  p.tile_scheduler_metadata_ptr = meta.as<DecodingSchedMeta>();
  p.num_splits_ptr = splits.as<int>();
  p.num_sm_parts = 8;
  return p;
}

void testMemory(Lib& lib) {
  setenv("FLASHMLA_EMU_DEVICES", "3", 1);
  Cuda& c = lib.cuda;
  CHECK(c.SetDevice(1) == 0, "set device 1");
  // Poison, bounds of copies, unknown frees, last-error semantics.
  {
    Buf a(lib, 100);
    std::vector<std::uint8_t> host(100);
    CHECK(c.MemcpyAsync(host.data(), a.p, 100, cudaMemcpyDeviceToHost, nullptr) == 0, "d2h");
    CHECK(host[0] == 0xFF && host[99] == 0xFF, "poison fill");
    CHECK(c.MemcpyAsync(host.data(), a.p, 101, cudaMemcpyDeviceToHost, nullptr) == cudaErrorInvalidValue, "overlong copy");
    CHECK(c.GetLastError() == cudaErrorInvalidValue, "pending error reported");
    CHECK(c.GetLastError() == cudaSuccess, "pending error cleared");
    CHECK(reinterpret_cast<std::uintptr_t>(a.p) % 256 == 0, "256-byte alignment");
    PointerAttributesBuffer attr;
    CHECK(c.PointerGetAttributes(attr.bytes, static_cast<char*>(a.p) + 50) == 0 && attr.prefix().type == cudaMemoryTypeDevice &&
              attr.prefix().device == 1,
          "pointer attributes");
    int x = 0;
    CHECK(c.PointerGetAttributes(attr.bytes, &x) == 0 && attr.prefix().type == 0, "host pointer attributes");
    PointerAttributesBuffer dirty;
    dirty.bytes[40] = 1;  // a struct too small for the runtime's: its "reserved" bytes are someone else's
    CHECK(c.PointerGetAttributes(dirty.bytes, a.p) == cudaErrorInvalidValue, "non-zero reserved bytes are refused");
    c.GetLastError();
    CHECK(c.Free(&x) == cudaErrorInvalidValue, "free of unknown pointer");
    c.GetLastError();
  }
  // An out-of-bounds read inside a kernel: seqlens holds 2 ints but b = 4.
  {
    Buf seq(lib, sizeof(int) * 2), meta(lib, 32 * 8), splits(lib, sizeof(int) * 5);
    GetDecodeSchedMetaParams p = denseSchedParams(4, seq, meta, splits);
    lib.call(Launcher::SchedMeta, p);  // the launch itself succeeds; the fault is asynchronous
    CHECK(c.GetLastError() == cudaErrorIllegalAddress, "fault is the sticky error");
    CHECK(c.GetLastError() == cudaErrorIllegalAddress, "sticky error is not cleared");
    void* q = nullptr;
    CHECK(c.Malloc(&q, 16) == cudaErrorIllegalAddress, "later calls fail on the dead context");
    bool threw = false;
    try { lib.call(Launcher::SchedMeta, p); } catch (const std::exception&) { threw = true; }
    CHECK(threw, "a launch on the dead context fails");
    CHECK(c.GetLastError() == cudaErrorIllegalAddress, "still sticky");
  }
  // Freeing on the dead context reported the fault again (pending, per thread): drain it.
  CHECK(c.GetLastError() == cudaErrorIllegalAddress, "frees on the dead context report the fault");
  // Other devices are unaffected; a trap (wrong arch, docs/flashmla-interface.md#wrong-arch) gives cudaErrorAssert.
  CHECK(c.SetDevice(2) == 0, "set device 2");
  { int e2 = c.GetLastError(); CHECK(e2 == cudaSuccess, "device 2 is clean (got %d)", e2); }
  {
    DenseAttnDecodeParams p{};
    p.d = 576;
    p.d_v = 512;
    setenv("FLASHMLA_EMU_ARCH", "sm100", 1);
    lib.call(Launcher::DenseBf16, p);
    unsetenv("FLASHMLA_EMU_ARCH");
    CHECK(c.GetLastError() == 710, "wrong-arch kernel traps");
  }
  CHECK(c.SetDevice(0) == 0, "set device 0");
  // Launcher checks: dense d != 576 fails (throws without FLASHMLA_EMU_EXIT); sparse throws.
  {
    DenseAttnDecodeParams p{};
    p.d = 512;
    p.d_v = 512;
    bool threw = false;
    try { lib.call(Launcher::DenseBf16, p); } catch (const std::exception&) { threw = true; }
    CHECK(threw, "dense d = 512 fails");
    SparseAttnDecodeParams s{};
    s.h_kv = 1;
    s.topk = 100;
    threw = false;
    try { lib.call(Launcher::Sm90SparseModel1H64, s); } catch (const std::exception&) { threw = true; }
    CHECK(threw, "sparse topk %% 64 != 0 throws");
  }
  // A pending unrelated error is reported by the launcher's post-launch check (docs/flashmla-interface.md#pending-errors).
  {
    void* big = nullptr;
    CHECK(c.Malloc(&big, std::size_t(1) << 62) == cudaErrorMemoryAllocation, "allocation beyond memory");
    CombineParams p{};
    p.d_v = 512;
    p.num_sm_parts = 1;
    bool threw = false;
    try { lib.call(Launcher::CombineBf16, p); } catch (const std::exception&) { threw = true; }
    CHECK(threw, "stale error makes the combine fail");
    CHECK(c.GetLastError() == cudaSuccess, "stale error consumed");
  }
  unsetenv("FLASHMLA_EMU_DEVICES");
}

// ---- numeric ----------------------------------------------------------------------------------
double e4m3(std::uint8_t b) {
  int e = (b >> 3) & 15, m = b & 7;
  double v = e == 0 ? m / 8.0 * std::pow(2.0, -6) : (1 + m / 8.0) * std::pow(2.0, e - 7);
  return (b & 0x80) ? -v : v;
}
std::uint16_t bf16(double x) {  // RNE of a float; inputs here are exactly representable or near
  float f = static_cast<float>(x);
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7FFF + ((u >> 16) & 1);
  return static_cast<std::uint16_t>(u >> 16);
}
double fromBf16(std::uint16_t b) {
  std::uint32_t u = std::uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// docs/flashmla-interface.md#tolerances: inf/NaN positions identical, then |a−r| < abs or |a−r|/(|r|+1e-6) < rel.
void compare(const char* what, const std::vector<double>& got, const std::vector<double>& want, double absTol, double relTol) {
  int bad = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    double a = got[i], r = want[i];
    if (std::isinf(a) || std::isinf(r) || std::isnan(a) || std::isnan(r)) {
      bool same = (std::isnan(a) && std::isnan(r)) || a == r;
      if (!same && bad++ < 5) CHECK(same, "%s[%zu]: %g vs %g", what, i, a, r);
      continue;
    }
    double d = std::fabs(a - r);
    bool ok = d < absTol || d / (std::fabs(r) + 1e-6) < relTol;
    if (!ok && bad++ < 5) CHECK(ok, "%s[%zu]: %.8g vs %.8g", what, i, a, r);
  }
}

struct RowRef {  // naive float64 attention of one query row
  std::vector<double> out;
  double lse;
};
RowRef attend(const std::vector<double>& q, const std::vector<const double*>& keys, int dv, double scale, const double* sink) {
  RowRef r{std::vector<double>(dv, 0.0), INFINITY};
  if (keys.empty()) return r;
  std::vector<double> w;
  double mx = -INFINITY;
  for (const double* k : keys) {
    double s = 0;
    for (std::size_t i = 0; i < q.size(); ++i) s += q[i] * k[i];
    w.push_back(s * scale);
    mx = std::max(mx, w.back());
  }
  double sum = 0;
  for (double x : w) sum += std::exp(x - mx);
  r.lse = std::log(sum) + mx;
  for (std::size_t j = 0; j < keys.size(); ++j) {
    double pj = std::exp(w[j] - r.lse);
    for (int d = 0; d < dv; ++d) r.out[d] += pj * keys[j][d];
  }
  if (sink != nullptr) {
    double f = 1.0 / (1.0 + std::exp(*sink - r.lse));
    for (double& o : r.out) o *= f;
  }
  return r;
}

void denseCase(Lib& lib, int b, int sQ, int hQ, int hK, bool causal, int P, std::mt19937& rng) {
  const int D = 576, DV = 512, hpk = hQ / hK, qSeq = sQ * hpk;
  std::uniform_real_distribution<double> uni(-1, 1);
  std::vector<int> seqlens(b);
  for (int i = 0; i < b; ++i) seqlens[i] = i % 3 == 0 ? 0 : std::uniform_int_distribution<int>(1, 300)(rng);
  int maxBlocks = 1;
  for (int L : seqlens) maxBlocks = std::max(maxBlocks, (L + 63) / 64);
  const int numBlocks = b * maxBlocks + 1;
  std::vector<int> table(b * maxBlocks);
  std::vector<int> perm(numBlocks);
  for (int i = 0; i < numBlocks; ++i) perm[i] = i;
  std::shuffle(perm.begin(), perm.end(), rng);
  for (int i = 0; i < b * maxBlocks; ++i) table[i] = perm[i];
  std::vector<std::uint16_t> q(static_cast<std::size_t>(b) * sQ * hQ * D), kc(static_cast<std::size_t>(numBlocks) * 64 * hK * D);
  for (auto& x : q) x = bf16(uni(rng));
  for (auto& x : kc) x = bf16(uni(rng) / 2);
  // Unused cache slots are NaN (docs/flashmla-interface.md#dense-generator): they must never matter.
  for (int i = 0; i < b; ++i)
    for (int t = seqlens[i]; t < maxBlocks * 64; ++t)
      for (int kh = 0; kh < hK; ++kh)
        for (int d = 0; d < D; ++d) kc[((static_cast<std::size_t>(table[i * maxBlocks + t / 64]) * 64 + t % 64) * hK + kh) * D + d] = 0x7FC0;

  Buf dq(lib, q.size() * 2), dk(lib, kc.size() * 2), dtab(lib, table.size() * 4), dseq(lib, b * 4);
  dq.upload(q);
  dk.upload(kc);
  dtab.upload(table);
  dseq.upload(seqlens);
  Buf meta(lib, 32 * P), splits(lib, 4 * (b + 1));
  GetDecodeSchedMetaParams sp{b, sQ, 64, 5, -1, -1, nullptr, nullptr, dseq.as<int>(), meta.as<DecodingSchedMeta>(), splits.as<int>(), P, nullptr};
  lib.call(Launcher::SchedMeta, sp);
  const int T = b + P;
  Buf out(lib, static_cast<std::size_t>(b) * sQ * hQ * DV * 2), lse(lib, static_cast<std::size_t>(b) * sQ * hQ * 4);
  Buf lseAcc(lib, static_cast<std::size_t>(T) * sQ * hQ * 4), oAcc(lib, static_cast<std::size_t>(T) * sQ * hQ * DV * 4);
  const double scale = 1.0 / std::sqrt(576.0);
  DenseAttnDecodeParams p{};
  p.b = b; p.s_q = sQ; p.q_seq_per_hk = qSeq; p.d = D; p.d_v = DV; p.h_q = hQ; p.h_k = hK;
  p.num_blocks = numBlocks; p.q_head_per_hk = hpk; p.is_causal = causal && sQ > 1;
  p.scale_softmax = static_cast<float>(scale);
  p.scale_softmax_log2 = static_cast<float>(scale * M_LOG2E);
  p.q_ptr = dq.p; p.k_ptr = dk.p; p.o_ptr = out.p; p.softmax_lse_ptr = lse.as<float>();
  // q_re: for h_k == 1 a view (row = s·h_q + h); for hpk == 1 it is q itself (row = s).
  p.q_batch_stride = static_cast<std::int64_t>(sQ) * hQ * D;
  p.q_row_stride = hK == 1 ? D : static_cast<std::int64_t>(hQ) * D;
  p.q_head_stride = hK == 1 ? D : D;
  p.k_batch_stride = 64LL * hK * D; p.k_row_stride = static_cast<std::int64_t>(hK) * D; p.k_head_stride = D;
  p.o_batch_stride = static_cast<std::int64_t>(hK) * qSeq * DV; p.o_row_stride = DV; p.o_head_stride = static_cast<std::int64_t>(qSeq) * DV;
  p.block_table = dtab.as<int>(); p.block_table_batch_stride = maxBlocks; p.page_block_size = 64;
  p.seqlens_k_ptr = dseq.as<int>(); p.tile_scheduler_metadata_ptr = meta.as<DecodingSchedMeta>();
  p.num_sm_parts = P; p.num_splits_ptr = splits.as<int>(); p.total_num_splits = T;
  p.softmax_lseaccum_ptr = lseAcc.as<float>(); p.oaccum_ptr = oAcc.as<float>();
  lib.call(Launcher::DenseBf16, p);
  CombineParams cp{b, sQ, hQ, DV, lse.as<float>(), out.p, sQ * hQ, hQ, hQ * sQ * DV, hQ * DV, DV,
                   lseAcc.as<float>(), oAcc.as<float>(), sQ * hQ, hQ, hQ * sQ * DV, hQ * DV, DV,
                   meta.as<DecodingSchedMeta>(), splits.as<int>(), P, nullptr, nullptr};
  lib.call(Launcher::CombineBf16, cp);
  CHECK(lib.cuda.GetLastError() == 0, "dense case ran without errors");
  auto outRaw = out.download<std::uint16_t>(static_cast<std::size_t>(b) * sQ * hQ * DV);
  auto lseRaw = lse.download<float>(static_cast<std::size_t>(b) * sQ * hQ);

  std::vector<double> gotO, wantO, gotL, wantL;
  for (int i = 0; i < b; ++i)
    for (int s = 0; s < sQ; ++s)
      for (int h = 0; h < hQ; ++h) {
        const int kh = h / hpk, j = h % hpk;
        std::vector<double> qq(D);
        for (int d = 0; d < D; ++d) qq[d] = fromBf16(q[((static_cast<std::size_t>(i) * sQ + s) * hQ + h) * D + d]);
        std::vector<std::vector<double>> kv;
        int visible = p.is_causal ? std::min(seqlens[i], seqlens[i] - sQ + s + 1) : seqlens[i];
        for (int t = 0; t < visible; ++t) {
          std::vector<double> k(D);
          for (int d = 0; d < D; ++d) k[d] = fromBf16(kc[((static_cast<std::size_t>(table[i * maxBlocks + t / 64]) * 64 + t % 64) * hK + kh) * D + d]);
          kv.push_back(k);
        }
        std::vector<const double*> ptrs;
        for (auto& k : kv) ptrs.push_back(k.data());
        RowRef r = attend(qq, ptrs, DV, scale, nullptr);
        const std::size_t rawRow = (static_cast<std::size_t>(i) * hK + kh) * qSeq + s * hpk + j;
        for (int d = 0; d < DV; ++d) {
          gotO.push_back(fromBf16(outRaw[rawRow * DV + d]));
          wantO.push_back(r.out[d]);
        }
        gotL.push_back(lseRaw[rawRow]);
        wantL.push_back(r.lse);
      }
  compare("dense out", gotO, wantO, 8e-4, 2.01 / 128);
  compare("dense lse", gotL, wantL, 1e-6, 8.01 / 65536);
}

enum class SparseKind { Sm90, Head64, Head128 };

void sparseCase(Lib& lib, SparseKind kind, ModelType mt, int b, int sQ, int topk, int extraTopk, int P, bool withSink,
                std::mt19937& rng) {
  const int hQ = kind == SparseKind::Head64 ? 64 : (kind == SparseKind::Head128 ? 128 : 64);
  const int D = mt == V32 ? 576 : 512, DV = 512;
  const int B = mt == V32 ? 64 : 61;  // MODEL1 with an odd-sized block: stride0 = ceil(B·584/576)·576
  const int stride0 = mt == V32 ? (B + 1) * 656 : (B * 584 + 575) / 576 * 576;
  const int numBlocks = 8;
  std::uniform_real_distribution<double> uni(-1, 1);
  std::uniform_int_distribution<int> byte(0, 255);

  // Build a cache from random fp8 bytes and power-of-two scales; keep the exact float64 tokens.
  struct Cache {
    std::vector<std::uint8_t> bytes;
    std::vector<double> tokens;  // [numBlocks·B][D]
  };
  auto makeCache = [&]() {
    Cache c;
    c.bytes.assign(static_cast<std::size_t>(numBlocks) * stride0, 0);
    c.tokens.assign(static_cast<std::size_t>(numBlocks) * B * D, 0.0);
    for (int n = 0; n < numBlocks; ++n)
      for (int t = 0; t < B; ++t) {
        double* tok = &c.tokens[(static_cast<std::size_t>(n) * B + t) * D];
        auto fp8 = [&]() { int v; do { v = byte(rng); } while ((v & 0x7F) == 0x7F); return static_cast<std::uint8_t>(v); };
        if (mt == V32) {
          std::uint8_t* rec = &c.bytes[static_cast<std::size_t>(n) * stride0 + t * 656];
          for (int j = 0; j < 4; ++j) {
            float s = std::ldexp(1.0f, -std::uniform_int_distribution<int>(7, 10)(rng));
            std::memcpy(rec + 512 + 4 * j, &s, 4);
            for (int d = 128 * j; d < 128 * (j + 1); ++d) { rec[d] = fp8(); tok[d] = e4m3(rec[d]) * s; }
          }
          for (int d = 0; d < 64; ++d) {
            std::uint16_t r = bf16(uni(rng));
            rec[528 + 2 * d] = r & 0xFF; rec[529 + 2 * d] = r >> 8;
            tok[512 + d] = fromBf16(r);
          }
        } else {
          std::uint8_t* rec = &c.bytes[static_cast<std::size_t>(n) * stride0 + t * 576];
          std::uint8_t* sc = &c.bytes[static_cast<std::size_t>(n) * stride0 + B * 576 + t * 8];
          for (int j = 0; j < 7; ++j) {
            int e = std::uniform_int_distribution<int>(117, 120)(rng);
            sc[j] = static_cast<std::uint8_t>(e);
            for (int d = 64 * j; d < 64 * (j + 1); ++d) { rec[d] = fp8(); tok[d] = e4m3(rec[d]) * std::ldexp(1.0, e - 127); }
          }
          for (int d = 0; d < 64; ++d) {
            std::uint16_t r = bf16(uni(rng));
            rec[448 + 2 * d] = r & 0xFF; rec[449 + 2 * d] = r >> 8;
            tok[448 + d] = fromBf16(r);
          }
        }
      }
    return c;
  };
  Cache main = makeCache(), extra = makeCache();
  const int tokens = numBlocks * B;
  auto makeIndices = [&](int k) {
    std::vector<int> idx(static_cast<std::size_t>(b) * sQ * k);
    for (auto& x : idx) x = std::uniform_int_distribution<int>(0, 5)(rng) == 0 ? -1 : std::uniform_int_distribution<int>(0, tokens - 1)(rng);
    return idx;
  };
  std::vector<int> indices = makeIndices(topk), extraIdx = makeIndices(std::max(extraTopk, 1));
  const bool useTl = mt == MODEL1 || kind != SparseKind::Sm90;
  std::vector<int> topkLen(b), extraLen(b);
  for (int i = 0; i < b; ++i) {
    topkLen[i] = i == 0 ? 0 : std::uniform_int_distribution<int>(1, topk)(rng);
    extraLen[i] = std::uniform_int_distribution<int>(0, extraTopk)(rng);
  }
  std::vector<std::uint16_t> q(static_cast<std::size_t>(b) * sQ * hQ * D);
  for (auto& x : q) x = bf16(uni(rng));
  std::vector<float> sink(hQ);
  for (int h = 0; h < hQ; ++h) sink[h] = h == 1 ? INFINITY : (h == 2 ? -INFINITY : static_cast<float>(uni(rng)));

  Buf dq(lib, q.size() * 2), dkv(lib, main.bytes.size()), dext(lib, extra.bytes.size()), didx(lib, indices.size() * 4),
      dextIdx(lib, extraIdx.size() * 4), dtl(lib, b * 4), detl(lib, b * 4), dsink(lib, hQ * 4);
  dq.upload(q); dkv.upload(main.bytes); dext.upload(extra.bytes); didx.upload(indices); dextIdx.upload(extraIdx);
  dtl.upload(topkLen); detl.upload(extraLen); dsink.upload(sink);
  const bool hasExtra = extraTopk > 0;
  const int F = kind == SparseKind::Head128 ? 3 : 5;
  Buf meta(lib, 32 * P), splits(lib, 4 * (b + 1));
  GetDecodeSchedMetaParams sp{b, sQ, 64, F, topk, hasExtra ? extraTopk : 0, useTl ? dtl.as<int>() : nullptr,
                              hasExtra ? detl.as<int>() : nullptr, nullptr, meta.as<DecodingSchedMeta>(), splits.as<int>(), P, nullptr};
  lib.call(Launcher::SchedMeta, sp);
  const int T = b + P;
  Buf out(lib, static_cast<std::size_t>(b) * sQ * hQ * DV * 2), lse(lib, static_cast<std::size_t>(b) * sQ * hQ * 4);
  Buf lseAcc(lib, static_cast<std::size_t>(T) * sQ * hQ * 4), oAcc(lib, static_cast<std::size_t>(T) * sQ * hQ * DV * 4);
  const float smScale = static_cast<float>(std::pow(D, -0.55));
  SparseAttnDecodeParams p{};
  p.b = b; p.s_q = sQ; p.h_q = hQ; p.h_kv = 1; p.d_qk = D; p.d_v = DV;
  p.sm_scale = smScale; p.sm_scale_div_log2 = smScale * 1.44269504f;
  p.num_blocks = numBlocks; p.page_block_size = B; p.topk = topk; p.model_type = mt;
  p.q = dq.as<cutlass::bfloat16_t>(); p.kv = dkv.as<cutlass::bfloat16_t>(); p.indices = didx.as<int>();
  p.topk_length = useTl ? dtl.as<int>() : nullptr; p.attn_sink = withSink ? dsink.as<float>() : nullptr;
  p.lse = lse.as<float>(); p.out = out.as<cutlass::bfloat16_t>();
  if (hasExtra) {
    p.extra_num_blocks = numBlocks; p.extra_page_block_size = B; p.extra_topk = extraTopk;
    p.extra_kv = dext.as<cutlass::bfloat16_t>(); p.extra_indices = dextIdx.as<int>(); p.extra_topk_length = detl.as<int>();
    p.stride_extra_kv_block = stride0; p.stride_extra_kv_row = mt == V32 ? 656 : 584;
    p.stride_extra_indices_b = sQ * extraTopk; p.stride_extra_indices_s_q = extraTopk;
  }
  p.stride_q_b = sQ * hQ * D; p.stride_q_s_q = hQ * D; p.stride_q_h_q = D;
  p.stride_kv_block = stride0; p.stride_kv_row = mt == V32 ? 656 : 584;
  p.stride_indices_b = sQ * topk; p.stride_indices_s_q = topk;
  p.stride_lse_b = sQ * hQ; p.stride_lse_s_q = hQ;
  p.stride_o_b = sQ * hQ * DV; p.stride_o_s_q = hQ * DV; p.stride_o_h_q = DV;
  p.lse_accum = lseAcc.as<float>(); p.o_accum = oAcc.as<float>();
  p.stride_lse_accum_split = sQ * hQ; p.stride_lse_accum_s_q = hQ;
  p.stride_o_accum_split = sQ * hQ * DV; p.stride_o_accum_s_q = hQ * DV; p.stride_o_accum_h_q = DV;
  p.tile_scheduler_metadata_ptr = meta.as<DecodingSchedMeta>(); p.num_splits_ptr = splits.as<int>(); p.num_sm_parts = P;
  Launcher id = kind == SparseKind::Head128 ? Launcher::Sm100Head128Model1
              : kind == SparseKind::Head64 ? (mt == V32 ? Launcher::Sm100Head64V32 : Launcher::Sm100Head64Model1)
                                           : (mt == V32 ? Launcher::Sm90SparseV32H64 : Launcher::Sm90SparseModel1H64);
  setenv("FLASHMLA_EMU_ARCH", kind == SparseKind::Sm90 ? "sm90" : "sm100", 1);
  try {
    lib.call(id, p);
  } catch (const std::exception& e) {
    CHECK(false, "sparse launcher threw: %s", e.what());
  }
  CombineParams cp{b, sQ, hQ, DV, lse.as<float>(), out.p, sQ * hQ, hQ, sQ * hQ * DV, hQ * DV, DV,
                   lseAcc.as<float>(), oAcc.as<float>(), sQ * hQ, hQ, sQ * hQ * DV, hQ * DV, DV,
                   meta.as<DecodingSchedMeta>(), splits.as<int>(), P, withSink ? dsink.as<float>() : nullptr, nullptr};
  lib.call(Launcher::CombineBf16, cp);
  unsetenv("FLASHMLA_EMU_ARCH");
  CHECK(lib.cuda.GetLastError() == 0, "sparse case ran without errors");
  auto outRaw = out.download<std::uint16_t>(static_cast<std::size_t>(b) * sQ * hQ * DV);
  auto lseRaw = lse.download<float>(static_cast<std::size_t>(b) * sQ * hQ);

  std::vector<double> gotO, wantO, gotL, wantL;
  for (int i = 0; i < b; ++i)
    for (int s = 0; s < sQ; ++s) {
      std::vector<const double*> keys;  // docs/flashmla-interface.md#sparse-semantics: valid entries of main then extra
      for (int k = 0; k < topk; ++k) {
        int x = indices[(static_cast<std::size_t>(i) * sQ + s) * topk + k];
        if (x != -1 && (!useTl || k < topkLen[i])) keys.push_back(&main.tokens[static_cast<std::size_t>(x) * D]);
      }
      for (int k = 0; hasExtra && k < extraTopk; ++k) {
        int x = extraIdx[(static_cast<std::size_t>(i) * sQ + s) * extraTopk + k];
        if (x != -1 && k < extraLen[i]) keys.push_back(&extra.tokens[static_cast<std::size_t>(x) * D]);
      }
      for (int h = 0; h < hQ; ++h) {
        std::vector<double> qq(D);
        for (int d = 0; d < D; ++d) qq[d] = fromBf16(q[((static_cast<std::size_t>(i) * sQ + s) * hQ + h) * D + d]);
        double sk = sink[h];
        RowRef r = attend(qq, keys, DV, smScale, withSink ? &sk : nullptr);
        const std::size_t row = (static_cast<std::size_t>(i) * sQ + s) * hQ + h;
        for (int d = 0; d < DV; ++d) {
          gotO.push_back(fromBf16(outRaw[row * DV + d]));
          wantO.push_back(r.out[d]);
        }
        gotL.push_back(lseRaw[row]);
        wantL.push_back(r.lse);
      }
    }
  compare("sparse out", gotO, wantO, 1e-3, 2.01 / 128);
  compare("sparse lse", gotL, wantL, 1e-6, 8.01 / 65536);
}

void testNumeric(Lib& lib) {
  std::mt19937 rng(7);
  denseCase(lib, 3, 2, 4, 1, true, 5, rng);    // splits, causal, a zero-length request
  denseCase(lib, 2, 1, 8, 1, false, 1, rng);   // one part: no splits
  denseCase(lib, 3, 3, 2, 2, true, 7, rng);    // h_k = 2 with hpk = 1
  sparseCase(lib, SparseKind::Sm90, V32, 2, 2, 512, 0, 4, true, rng);
  sparseCase(lib, SparseKind::Sm90, MODEL1, 3, 1, 256, 128, 5, true, rng);
  sparseCase(lib, SparseKind::Head64, V32, 2, 1, 256, 0, 3, false, rng);
  sparseCase(lib, SparseKind::Head64, MODEL1, 2, 2, 192, 64, 4, true, rng);
  sparseCase(lib, SparseKind::Head128, MODEL1, 2, 1, 128, 128, 3, true, rng);
}


// ---- prefill ----------------------------------------------------------------------------------
// The sparse prefill launchers (docs/flashmla-interface.md#sparse-prefill) against a float64
// computation: only positions below topk_length[s] with an index in [0, s_kv) count.
struct PrefillSpec {
  Launcher id;
  bool sm100;
  int sQ, sKv, hQ, dqk, topk;
  bool withLength, withSink;
  float smScale;
  int pad;  // extra elements per row of q, kv and indices (strided tensors)
};

// Every invalid kind: −1, other negatives, s_kv itself and values past it.
int invalidIndex(int sKv, std::mt19937& rng) {
  const int kinds[] = {-1, -2147483647 - 1, -123456, sKv, sKv + 1, 1919810, 2147483647};
  return kinds[std::uniform_int_distribution<int>(0, 6)(rng)];
}

struct PrefillData {
  std::vector<std::uint16_t> q, kv;
  std::vector<int> indices, lengths;
  std::vector<float> sink;
};

PrefillData makePrefillData(const PrefillSpec& c, std::mt19937& rng) {
  std::uniform_real_distribution<double> uni(-1, 1);
  PrefillData d;
  const int qRow = c.dqk + c.pad, iRow = c.topk + c.pad;
  d.q.assign(static_cast<std::size_t>(c.sQ) * c.hQ * qRow, 0x7FC0);  // NaN padding: must never be read
  d.kv.assign(static_cast<std::size_t>(c.sKv) * qRow, 0x7FC0);
  for (int r = 0; r < c.sQ * c.hQ; ++r)
    for (int x = 0; x < c.dqk; ++x) d.q[static_cast<std::size_t>(r) * qRow + x] = bf16(uni(rng));
  for (int r = 0; r < c.sKv; ++r)
    for (int x = 0; x < c.dqk; ++x) d.kv[static_cast<std::size_t>(r) * qRow + x] = bf16(uni(rng) / 2);
  d.indices.assign(static_cast<std::size_t>(c.sQ) * iRow, 0);
  for (int s = 0; s < c.sQ; ++s) {
    int* row = &d.indices[static_cast<std::size_t>(s) * iRow];
    const bool allInvalid = s == 1;  // one query token with no valid index at all
    for (int j = 0; j < c.topk; ++j) {
      const bool invalid = allInvalid || std::uniform_int_distribution<int>(0, 3)(rng) == 0;
      row[j] = invalid ? invalidIndex(c.sKv, rng) : std::uniform_int_distribution<int>(0, c.sKv - 1)(rng);
    }
  }
  for (int s = 0; s < c.sQ; ++s) {
    // 0, a part of a block, and the whole list, then random.
    const int choices[] = {0, std::min(c.topk, 70), c.topk};
    d.lengths.push_back(s < 3 ? choices[s] : std::uniform_int_distribution<int>(0, c.topk)(rng));
  }
  for (int h = 0; h < c.hQ; ++h) d.sink.push_back(h % 5 == 1 ? INFINITY : (h % 5 == 2 ? -INFINITY : static_cast<float>(uni(rng))));
  return d;
}

struct PrefillOut {
  std::vector<std::uint16_t> out;
  std::vector<float> maxLogits, lse;
};

// Uploads the inputs, fills SparseAttnFwdParams as FlashMLA's host layer does (contiguous outputs),
// lets `edit` change it, and calls the launcher on the configured device; a launcher failure
// propagates. Downloads the outputs into `result` when given.
template <class Edit>
void callPrefill(Lib& lib, const PrefillSpec& c, const PrefillData& d, Edit edit, PrefillOut* result) {
  Buf dq(lib, d.q.size() * 2), dkv(lib, d.kv.size() * 2), didx(lib, d.indices.size() * 4), dlen(lib, d.lengths.size() * 4),
      dsink(lib, d.sink.size() * 4);
  dq.upload(d.q); dkv.upload(d.kv); didx.upload(d.indices); dlen.upload(d.lengths); dsink.upload(d.sink);
  const std::size_t rows = static_cast<std::size_t>(c.sQ) * c.hQ;
  Buf out(lib, rows * 512 * 2), maxLogits(lib, rows * 4), lse(lib, rows * 4);
  SparseAttnFwdParams p{};
  p.s_q = c.sQ; p.s_kv = c.sKv; p.h_q = c.hQ; p.h_kv = 1; p.d_qk = c.dqk; p.d_v = 512; p.topk = c.topk;
  p.sm_scale = c.smScale; p.sm_scale_div_log2 = c.smScale * 1.44269504f;
  p.q = dq.as<cutlass::bfloat16_t>(); p.kv = dkv.as<cutlass::bfloat16_t>(); p.indices = didx.as<int>();
  p.attn_sink = c.withSink ? dsink.as<float>() : nullptr;
  p.topk_length = c.withLength ? dlen.as<int>() : nullptr;
  p.stride_q_s_q = c.hQ * (c.dqk + c.pad); p.stride_q_h_q = c.dqk + c.pad;
  p.stride_kv_s_kv = c.dqk + c.pad; p.stride_kv_h_kv = c.dqk + c.pad;
  p.stride_indices_s_q = c.topk + c.pad; p.stride_indices_h_kv = c.topk + c.pad;
  p.out = out.as<cutlass::bfloat16_t>(); p.max_logits = maxLogits.as<float>(); p.lse = lse.as<float>();
  p.num_sm = c.sm100 ? 148 : 132;
  edit(p);
  lib.call(c.id, p);
  if (result != nullptr) {
    result->out = out.download<std::uint16_t>(rows * 512);
    result->maxLogits = maxLogits.download<float>(rows);
    result->lse = lse.download<float>(rows);
  }
}

const char* launcherKey(Launcher id) { return flashmla_abi::kLauncherSymbols[static_cast<int>(id)].key; }

// callPrefill on the spec's architecture, expected to succeed.
PrefillOut runPrefill(Lib& lib, const PrefillSpec& c, const PrefillData& d) {
  PrefillOut r;
  setenv("FLASHMLA_EMU_ARCH", c.sm100 ? "sm100" : "sm90", 1);
  try {
    callPrefill(lib, c, d, [](SparseAttnFwdParams&) {}, &r);
  } catch (const std::exception& e) {
    CHECK(false, "prefill launcher %s threw: %s", launcherKey(c.id), e.what());
  }
  unsetenv("FLASHMLA_EMU_ARCH");
  return r;
}

void prefillCase(Lib& lib, const PrefillSpec& c, std::mt19937& rng) {
  const PrefillData d = makePrefillData(c, rng);
  const PrefillOut got = runPrefill(lib, c, d);
  { int e = lib.cuda.GetLastError(); CHECK(e == 0, "prefill %s: error %d", launcherKey(c.id), e); }
  const int qRow = c.dqk + c.pad, iRow = c.topk + c.pad;
  std::vector<double> gotO, wantO, gotM, wantM, gotL, wantL;
  std::vector<std::vector<double>> tokens(static_cast<std::size_t>(c.sKv), std::vector<double>(c.dqk));
  for (int t = 0; t < c.sKv; ++t)
    for (int x = 0; x < c.dqk; ++x) tokens[t][x] = fromBf16(d.kv[static_cast<std::size_t>(t) * qRow + x]);
  for (int s = 0; s < c.sQ; ++s) {
    const int len = c.withLength ? d.lengths[s] : c.topk;
    std::vector<const double*> keys;
    for (int j = 0; j < len; ++j) {
      const int t = d.indices[static_cast<std::size_t>(s) * iRow + j];
      if (t >= 0 && t < c.sKv) keys.push_back(tokens[t].data());
    }
    for (int h = 0; h < c.hQ; ++h) {
      std::vector<double> qq(c.dqk);
      for (int x = 0; x < c.dqk; ++x) qq[x] = fromBf16(d.q[(static_cast<std::size_t>(s) * c.hQ + h) * qRow + x]);
      double sk = d.sink[h];
      RowRef r = attend(qq, keys, 512, c.smScale, c.withSink ? &sk : nullptr);
      double mx = -INFINITY;
      for (const double* k : keys) {
        double dotv = 0;
        for (int x = 0; x < c.dqk; ++x) dotv += qq[x] * k[x];
        mx = std::max(mx, dotv * c.smScale);
      }
      const std::size_t row = static_cast<std::size_t>(s) * c.hQ + h;
      for (int x = 0; x < 512; ++x) {
        gotO.push_back(fromBf16(got.out[row * 512 + x]));
        wantO.push_back(r.out[x]);
      }
      gotM.push_back(got.maxLogits[row]);
      wantM.push_back(mx);
      gotL.push_back(got.lse[row]);
      wantL.push_back(r.lse);
    }
  }
  // FlashMLA's prefill tolerances (src/harness/metrics.ts TOLERANCES.prefill*).
  const std::string key = launcherKey(c.id);
  compare((key + " out").c_str(), gotO, wantO, 8e-4, 3.01 / 128);
  compare((key + " max_logits").c_str(), gotM, wantM, 1e-6, 2.01 / 65536);
  compare((key + " lse").c_str(), gotL, wantL, 1e-6, 2.01 / 65536);
}

// A NaN token at an in-range index beyond topk_length: sm90 never loads it; the sm100 kernels
// gather it with the rest of the block, and P = 0 times NaN reaches O.
void prefillNanBeyondLength(Lib& lib, Launcher id, bool sm100, bool wantNan, std::mt19937& rng) {
  PrefillSpec c{id, sm100, 1, 64, sm100 ? 64 : 64, 512, sm100 ? 64 : 128, true, false, 0.1f, 0};
  PrefillData d = makePrefillData(c, rng);
  d.lengths = {10};
  for (int j = 0; j < c.topk; ++j) d.indices[j] = j < 10 ? j : (j == 20 ? 40 : -1);
  for (int x = 0; x < c.dqk; ++x) d.kv[40 * static_cast<std::size_t>(c.dqk) + x] = 0x7FC0;
  const PrefillOut got = runPrefill(lib, c, d);
  CHECK(lib.cuda.GetLastError() == 0, "nan case ran");
  bool anyNan = false, allFinite = true;
  for (std::uint16_t b : got.out) {
    anyNan = anyNan || std::isnan(fromBf16(b));
    allFinite = allFinite && std::isfinite(fromBf16(b));
  }
  CHECK(wantNan ? anyNan : allFinite, "%s: NaN beyond topk_length %s", launcherKey(id),
        wantNan ? "should reach out" : "must not matter");
  CHECK(std::isfinite(got.lse[0]) && std::isfinite(got.maxLogits[0]), "lse and max_logits stay finite");
}

// Runs `call` and reports whether it threw a std::exception whose message contains `what`.
template <class F> bool throwsWith(F call, const char* what) {
  try {
    call();
  } catch (const std::exception& e) {
    return std::strstr(e.what(), what) != nullptr;
  }
  return false;
}

void testPrefillNumeric(Lib& lib) {
  std::mt19937 rng(11);
  const PrefillSpec cases[] = {
      {Launcher::Sm90PrefillK576, false, 3, 200, 128, 576, 256, false, true, 0.5f, 64},
      {Launcher::Sm90PrefillK512TopkLen, false, 5, 150, 64, 512, 128, true, true, 0.3f, 0},
      {Launcher::Sm90PrefillK576TopkLen, false, 4, 90, 64, 576, 256, true, false, 1.0f / 24, 32},
      {Launcher::Sm90PrefillK512, false, 2, 300, 64, 512, 128, false, true, 0.2f, 0},
      {Launcher::Sm100PrefillH64K576, true, 4, 200, 64, 576, 192, true, true, 0.5f, 64},
      {Launcher::Sm100PrefillH64K512, true, 2, 100, 64, 512, 64, false, false, 1.0f, 0},
      {Launcher::Sm100PrefillH128K512, true, 4, 300, 128, 512, 256, true, true, 0.6f, 0},
      {Launcher::Sm100PrefillH128K576, true, 2, 150, 128, 576, 128, false, true, 0.25f, 64},
      {Launcher::Sm100PrefillSmallTopk, true, 4, 200, 128, 512, 128, true, true, 0.8f, 32},
  };
  for (const PrefillSpec& c : cases) prefillCase(lib, c, rng);
  prefillNanBeyondLength(lib, Launcher::Sm90PrefillK512TopkLen, false, false, rng);
  prefillNanBeyondLength(lib, Launcher::Sm100PrefillH64K512, true, true, rng);
}

// Launcher checks (KU_ASSERT throws), the memory checker on a kv stride past the cache, the
// wrong-arch trap and an empty grid.
void testPrefillChecks(Lib& lib) {
  setenv("FLASHMLA_EMU_DEVICES", "3", 1);
  std::mt19937 rng(5);
  Cuda& c = lib.cuda;
  CHECK(c.SetDevice(0) == 0, "device 0");
  auto rejects = [&](Launcher id, bool sm100, int hQ, int dqk, int topk, const char* what, void (*edit)(SparseAttnFwdParams&)) {
    PrefillSpec s{id, sm100, 1, 64, hQ, dqk, topk, false, false, 0.1f, 0};
    const PrefillData d = makePrefillData(s, rng);
    setenv("FLASHMLA_EMU_ARCH", sm100 ? "sm100" : "sm90", 1);
    CHECK(throwsWith([&] { callPrefill(lib, s, d, edit, nullptr); }, what), "%s should fail with %s", launcherKey(id), what);
    unsetenv("FLASHMLA_EMU_ARCH");
  };
  auto none = [](SparseAttnFwdParams&) {};
  rejects(Launcher::Sm90PrefillK512, false, 64, 512, 64, "params.topk % (2*B_TOPK) == 0", none);
  rejects(Launcher::Sm90PrefillK512, false, 96, 512, 128, "params.h_q % B_H == 0", none);
  rejects(Launcher::Sm90PrefillK576, false, 64, 576, 128, "params.h_kv == 1", [](SparseAttnFwdParams& p) { p.h_kv = 2; });
  rejects(Launcher::Sm90PrefillK576, false, 64, 576, 128, "params.topk > 0", [](SparseAttnFwdParams& p) { p.topk = 0; });
  rejects(Launcher::Sm100PrefillH64K512, true, 128, 512, 64, "params.h_q == B_H", none);
  rejects(Launcher::Sm100PrefillH64K576, true, 64, 512, 64, "params.d_qk == D_QK", none);
  rejects(Launcher::Sm100PrefillH128K512, true, 128, 512, 64, "params.topk % Kernel::B_TOPK == 0", none);
  rejects(Launcher::Sm100PrefillH128K576, true, 64, 576, 128, "params.h_q == Kernel::B_H", none);
  rejects(Launcher::Sm100PrefillSmallTopk, true, 128, 576, 64, "params.d_qk == D_QK", none);
  rejects(Launcher::Sm100PrefillSmallTopk, true, 128, 512, 64, "cuTensorMapEncodeTiled(kv)",
          [](SparseAttnFwdParams& p) { p.stride_kv_s_kv = 513; });
  rejects(Launcher::Sm100PrefillH64K512, true, 64, 512, 64, "CUDA error 9", [](SparseAttnFwdParams& p) { p.s_q = 0; });
  CHECK(c.GetLastError() == 0, "failed launcher checks leave no error behind");
  // FLASHMLA_EMU_MODE=noop: the launcher checks, the kernel writes nothing (outputs keep the 0xFF fill).
  {
    PrefillSpec s{Launcher::Sm90PrefillK576, false, 2, 64, 64, 576, 128, false, true, 0.1f, 0};
    const PrefillData d = makePrefillData(s, rng);
    setenv("FLASHMLA_EMU_MODE", "noop", 1);
    PrefillOut r = runPrefill(lib, s, d);
    unsetenv("FLASHMLA_EMU_MODE");
    CHECK(std::all_of(r.out.begin(), r.out.end(), [](std::uint16_t x) { return x == 0xFFFF; }), "no-op mode skips the kernel");
    CHECK(c.GetLastError() == 0, "no-op launch ran without errors");
  }

  // kv stride twice the row: valid indices in the upper half read past the cache.
  CHECK(c.SetDevice(1) == 0, "device 1");
  {
    PrefillSpec s{Launcher::Sm100PrefillH64K512, true, 2, 64, 64, 512, 64, false, false, 0.1f, 0};
    PrefillData d = makePrefillData(s, rng);
    for (int j = 0; j < 64; ++j) d.indices[j] = j;
    setenv("FLASHMLA_EMU_ARCH", "sm100", 1);
    callPrefill(lib, s, d, [](SparseAttnFwdParams& p) { p.stride_kv_s_kv *= 2; }, nullptr);  // the fault is asynchronous
    unsetenv("FLASHMLA_EMU_ARCH");
    CHECK(c.GetLastError() == cudaErrorIllegalAddress, "out-of-bounds kv read is the sticky fault");
  }
  // The sm90 kernel on an sm100 device traps (docs/flashmla-interface.md#wrong-arch).
  CHECK(c.SetDevice(2) == 0, "device 2");
  {
    PrefillSpec s{Launcher::Sm90PrefillK512, true, 1, 64, 64, 512, 128, false, false, 0.1f, 0};
    const PrefillData d = makePrefillData(s, rng);
    setenv("FLASHMLA_EMU_ARCH", "sm100", 1);
    callPrefill(lib, s, d, [](SparseAttnFwdParams&) {}, nullptr);
    unsetenv("FLASHMLA_EMU_ARCH");
    CHECK(c.GetLastError() == 710, "sm90 prefill kernel on sm100 traps");
  }
  CHECK(c.SetDevice(0) == 0, "device 0");
  unsetenv("FLASHMLA_EMU_DEVICES");
}

// A valid prefill launch on the configured device (sm90 or sm100 launcher by FLASHMLA_EMU_ARCH):
// "launched", or the launcher's failure.
void testPrefillImage(Lib& lib) {
  std::mt19937 rng(3);
  const char* arch = std::getenv("FLASHMLA_EMU_ARCH");
  const bool sm100 = arch != nullptr && std::strcmp(arch, "sm100") == 0;
  PrefillSpec s{sm100 ? Launcher::Sm100PrefillH64K512 : Launcher::Sm90PrefillK512, sm100, 1, 64, 64, 512, 128, false, false, 0.1f, 0};
  const PrefillData d = makePrefillData(s, rng);
  try {
    callPrefill(lib, s, d, [](SparseAttnFwdParams&) {}, nullptr);
    std::printf("prefill-image: launched\n");
  } catch (const std::exception& e) {
    std::printf("prefill-image: refused (%s)\n", e.what());
  }
}

}  // namespace

// A valid scheduler launch on the configured device: "launched", or the launcher's failure (a
// library without code for the device fails with cudaErrorNoKernelImageForDevice).
void testImage(Lib& lib) {
  Buf seq(lib, sizeof(int) * 2), meta(lib, 32 * 8), splits(lib, sizeof(int) * 3);
  GetDecodeSchedMetaParams p = denseSchedParams(2, seq, meta, splits);
  try {
    lib.call(Launcher::SchedMeta, p);
    std::printf("image: launched\n");
  } catch (const std::exception& e) {
    std::printf("image: refused (%s)\n", e.what());
  }
}

int main(int argc, char** argv) {
  if (argc < 2) {
    std::printf("usage: %s <libflashmla_emu.so> [sched|memory|numeric|prefill|prefill-checks|image|prefill-image]...\n", argv[0]);
    return 2;
  }
  Lib lib = load(argv[1]);
  for (int a = 2; a < argc; ++a) {
    std::string what = argv[a];
    int before = gFailures;
    if (what == "sched") testSched(lib);
    else if (what == "memory") testMemory(lib);
    else if (what == "numeric") testNumeric(lib);
    else if (what == "prefill") testPrefillNumeric(lib);
    else if (what == "prefill-checks") testPrefillChecks(lib);
    else if (what == "image") { testImage(lib); continue; }
    else if (what == "prefill-image") { testPrefillImage(lib); continue; }
    else { std::printf("unknown test %s\n", what.c_str()); return 2; }
    std::printf("%s: %s\n", what.c_str(), gFailures == before ? "ok" : "FAILED");
  }
  return gFailures == 0 ? 0 : 1;
}
