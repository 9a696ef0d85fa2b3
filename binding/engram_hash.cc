// The native tier of Engram's N-gram hash (docs/engram-hashing.md#hash, #tiers). Everything here is
// validated by src/engram/hash.ts first; the checks below only keep malformed calls from touching
// memory outside the arrays (they throw E_INTERNAL: reaching them is a bug of the TypeScript layer).
#include "engram_hash.h"

#include <cstdint>
#include <string>
#include <vector>

#include "js_errors.h"

namespace fmla::engram {
namespace {

// x mod p for any 64-bit x by Barrett reduction: with M = ⌊(2^64 − 1)/p⌋ the estimate
// q = ⌊x·M / 2^64⌋ is ⌊x/p⌋ or one less (x/p − 1 < x·M/2^64 ≤ x/p), so one conditional subtraction
// finishes it. One 64×64→128 multiply instead of a 64-bit division (about 5× faster).
struct Modulus {
  uint64_t m;
  uint64_t p;
  int32_t offset;
};

inline uint64_t Reduce(uint64_t x, const Modulus& d) {
  const uint64_t q = static_cast<uint64_t>((static_cast<unsigned __int128>(x) * d.m) >> 64);
  uint64_t r = x - q * d.p;
  return r >= d.p ? r - d.p : r;
}

[[noreturn]] void Fail(Napi::Env env, const std::string& what) { throwError(env, "E_INTERNAL", "engramHash: " + what); }

int64_t Int(const Napi::CallbackInfo& info, std::size_t i, int64_t lo, int64_t hi, const char* name) {
  if (!info[i].IsNumber()) Fail(info.Env(), std::string(name) + " is not a number");
  const double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d >= static_cast<double>(lo) && d <= static_cast<double>(hi)) || d != static_cast<double>(static_cast<int64_t>(d))) {
    Fail(info.Env(), std::string(name) + " is not an integer in " + std::to_string(lo) + "…" + std::to_string(hi));
  }
  return static_cast<int64_t>(d);
}

template <class T>
Napi::TypedArrayOf<T> Array(const Napi::CallbackInfo& info, std::size_t i, napi_typedarray_type type, const char* name) {
  if (!info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != type) {
    Fail(info.Env(), std::string(name) + " has the wrong array type");
  }
  return info[i].As<Napi::TypedArrayOf<T>>();
}

}  // namespace

Napi::Value EngramHash(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 12) Fail(env, "expects 12 arguments");
  const auto seq = Array<int32_t>(info, 0, napi_int32_array, "seq");
  const int64_t n = static_cast<int64_t>(seq.ElementLength());
  const int64_t history = Int(info, 1, 0, n, "history");
  const int64_t vocab = Int(info, 3, 1, INT32_MAX, "vocab");
  const int64_t pad = Int(info, 2, 0, vocab - 1, "pad");
  const auto mults = Array<int64_t>(info, 4, napi_bigint64_array, "multipliers");
  const auto primes = Array<int32_t>(info, 5, napi_int32_array, "primes");
  const auto offsets = Array<int32_t>(info, 6, napi_int32_array, "offsets");
  const int64_t layers = Int(info, 7, 1, 1 << 16, "layers");
  const int64_t order = Int(info, 8, 2, 1 << 16, "order");
  const int64_t heads = Int(info, 9, 1, 1 << 16, "heads");
  const auto reciprocals = Array<uint64_t>(info, 10, napi_biguint64_array, "reciprocals");
  auto out = Array<int32_t>(info, 11, napi_int32_array, "out");

  const int64_t cols = (order - 1) * heads;
  if (static_cast<int64_t>(mults.ElementLength()) != layers * order) Fail(env, "multipliers.length != layers·order");
  if (static_cast<int64_t>(primes.ElementLength()) != layers * cols) Fail(env, "primes.length != layers·(order − 1)·heads");
  if (static_cast<int64_t>(offsets.ElementLength()) != layers * cols) Fail(env, "offsets.length != primes.length");
  if (static_cast<int64_t>(reciprocals.ElementLength()) != layers * cols) Fail(env, "reciprocals.length != primes.length");
  if (static_cast<int64_t>(out.ElementLength()) / (layers * cols) != n - history ||
      static_cast<int64_t>(out.ElementLength()) % (layers * cols) != 0) {
    Fail(env, "out.length != (seq.length − history)·layers·(order − 1)·heads");
  }

  std::vector<Modulus> mods(static_cast<std::size_t>(layers * cols));
  for (std::size_t i = 0; i < mods.size(); i++) {
    const int32_t p = primes[i], off = offsets[i];
    // A residue below p plus its offset must stay an int32 row id; p ≥ 2 keeps Barrett's M finite.
    if (p < 2 || off < 0 || static_cast<int64_t>(off) + p - 1 > INT32_MAX) Fail(env, "a prime or offset is out of range");
    // JavaScript computes M once per hasher; M = ⌊(2^64 − 1)/p⌋ exactly when M·p ≤ 2^64 − 1 < (M + 1)·p,
    // which two multiplications check (a division per prime per call would cost more than the hash of a token).
    const unsigned __int128 mp = static_cast<unsigned __int128>(reciprocals[i]) * static_cast<uint64_t>(p);
    if (mp > UINT64_MAX || UINT64_MAX - static_cast<uint64_t>(mp) >= static_cast<uint64_t>(p)) Fail(env, "a reciprocal is not ⌊(2^64 − 1)/p⌋");
    mods[i] = {reciprocals[i], static_cast<uint64_t>(p), off};
  }
  const int64_t* m = mults.Data();
  for (int64_t i = 0; i < layers * order; i++) {
    if (m[i] < 1) Fail(env, "a multiplier is not positive");
  }
  const int32_t* ids = seq.Data();
  for (int64_t j = 0; j < n; j++) {
    if (ids[j] < -1 || ids[j] >= vocab) Fail(env, "seq[" + std::to_string(j) + "] is outside −1…vocab − 1");
  }

  // docs/engram-hashing.md#masks: −1 marks a dead token; it and everything behind it read as pad.
  std::vector<uint64_t> window(static_cast<std::size_t>(order));
  uint64_t* __restrict x = window.data();
  const uint64_t* __restrict mul = reinterpret_cast<const uint64_t*>(m);
  const Modulus* __restrict mod = mods.data();
  // __restrict: out is a JavaScript buffer the compiler cannot tell apart from ids, so without it
  // every store would force the moduli and window to be reloaded.
  int32_t* __restrict o = out.Data();
  for (int64_t t = history; t < n; t++) {
    bool blocked = false;
    for (int64_t s = 0; s < order; s++) {
      blocked = blocked || t - s < 0 || ids[t - s] < 0;
      x[s] = blocked ? static_cast<uint64_t>(pad) : static_cast<uint64_t>(ids[t - s]);
    }
    for (int64_t l = 0; l < layers; l++) {
      const uint64_t* ml = mul + l * order;
      const Modulus* dl = mod + l * cols;
      uint64_t mix = x[0] * ml[0];
      for (int64_t g = 1; g < order; g++) {
        mix ^= x[g] * ml[g];
        const Modulus* d = dl + (g - 1) * heads;
        for (int64_t h = 0; h < heads; h++) o[h] = static_cast<int32_t>(Reduce(mix, d[h])) + d[h].offset;
        o += heads;
      }
    }
  }
  return env.Undefined();
}

}  // namespace fmla::engram
