// The native tier of Engram's N-gram hash (docs/engram-hashing.md#hash, docs/engram-hashing.md#tiers).
// src/engram/hash.ts validates everything first; the checks here only keep a malformed call from
// touching memory outside its arrays or dividing by zero (they throw E_INTERNAL: reaching them is a
// bug of the TypeScript layer). The layout is copied in once, so JavaScript cannot change it between
// the check and its use, and a hash call crosses N-API with three arguments.
#include "engram_hash.h"

#include <cstdint>
#include <string>
#include <vector>

#include "js_errors.h"

namespace fmla::engram {
namespace {

// x mod p for any 64-bit x by Barrett reduction: with M = ⌊(2^64 − 1)/p⌋ the estimate
// q = ⌊x·M / 2^64⌋ is ⌊x/p⌋ or one less (x/p − 1 < x·M/2^64 ≤ x/p), so one conditional subtraction
// finishes it: one 64×64→128 multiply instead of a 64-bit division.
struct Modulus {
  uint64_t m;
  uint64_t p;
  int32_t offset;
};

inline uint64_t Reduce(uint64_t x, const Modulus& d) {
  const uint64_t q = static_cast<uint64_t>((static_cast<unsigned __int128>(x) * d.m) >> 64);
  const uint64_t r = x - q * d.p;
  return r >= d.p ? r - d.p : r;
}

[[noreturn]] void Fail(Napi::Env env, const std::string& what) { throwError(env, "E_INTERNAL", "EngramHasher: " + what); }

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

class HasherWrap : public Napi::ObjectWrap<HasherWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "EngramHasher", {InstanceMethod("hash", &HasherWrap::Hash)});
  }

  explicit HasherWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<HasherWrap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() != 8) Fail(env, "expects 8 arguments");
    vocab_ = Int(info, 1, 1, INT32_MAX, "vocab");
    pad_ = static_cast<uint64_t>(Int(info, 0, 0, vocab_ - 1, "pad"));
    const auto mults = Array<int64_t>(info, 2, napi_bigint64_array, "multipliers");
    const auto primes = Array<int32_t>(info, 3, napi_int32_array, "primes");
    const auto offsets = Array<int32_t>(info, 4, napi_int32_array, "offsets");
    layers_ = Int(info, 5, 1, 1 << 16, "layers");
    order_ = Int(info, 6, 2, 1 << 16, "order");
    heads_ = Int(info, 7, 1, 1 << 16, "heads");
    const int64_t cols = (order_ - 1) * heads_;
    if (static_cast<int64_t>(mults.ElementLength()) != layers_ * order_) Fail(env, "multipliers.length != layers·order");
    if (static_cast<int64_t>(primes.ElementLength()) != layers_ * cols) Fail(env, "primes.length != layers·(order − 1)·heads");
    if (static_cast<int64_t>(offsets.ElementLength()) != layers_ * cols) Fail(env, "offsets.length != primes.length");
    mods_.resize(static_cast<std::size_t>(layers_ * cols));
    for (std::size_t i = 0; i < mods_.size(); i++) {
      const int32_t p = primes[i], off = offsets[i];
      // A residue below p plus its offset must stay an int32 row id; p ≥ 2 keeps Barrett's M finite.
      if (p < 2 || off < 0 || static_cast<int64_t>(off) + p - 1 > INT32_MAX) Fail(env, "a prime or offset is out of range");
      mods_[i] = {UINT64_MAX / static_cast<uint64_t>(p), static_cast<uint64_t>(p), off};
    }
    mults_.resize(static_cast<std::size_t>(layers_ * order_));
    for (std::size_t i = 0; i < mults_.size(); i++) {
      if (mults[i] < 1) Fail(env, "a multiplier is not positive");
      mults_[i] = static_cast<uint64_t>(mults[i]);
    }
    window_.resize(static_cast<std::size_t>(order_));
  }

 private:
  // hash(seq, history, out): seq holds canonical ids, −1 for a dead token.
  Napi::Value Hash(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() != 3) Fail(env, "hash expects 3 arguments");
    const auto seq = Array<int32_t>(info, 0, napi_int32_array, "seq");
    const int64_t n = static_cast<int64_t>(seq.ElementLength());
    const int64_t history = Int(info, 1, 0, n, "history");
    auto out = Array<int32_t>(info, 2, napi_int32_array, "out");
    const int64_t perToken = layers_ * (order_ - 1) * heads_;
    if (static_cast<int64_t>(out.ElementLength()) != (n - history) * perToken) Fail(env, "out.length != (seq.length − history)·ids per token");
    const int32_t* ids = seq.Data();
    for (int64_t j = 0; j < n; j++) {
      if (ids[j] < -1 || ids[j] >= vocab_) Fail(env, "seq[" + std::to_string(j) + "] is outside −1…vocab − 1");
    }
    Run(ids, history, n, out.Data());
    return env.Undefined();
  }

  // docs/engram-hashing.md#masks: −1 marks a dead token; it and everything behind it read as pad.
  // __restrict on out: it is a JavaScript buffer the compiler cannot tell apart from ids, and
  // without it every store would force the moduli and the window to be reloaded.
  void Run(const int32_t* ids, int64_t history, int64_t n, int32_t* __restrict o) {
    uint64_t* __restrict x = window_.data();
    const uint64_t* __restrict mul = mults_.data();
    const Modulus* __restrict mod = mods_.data();
    const int64_t order = order_, heads = heads_, cols = (order_ - 1) * heads_;
    for (int64_t t = history; t < n; t++) {
      bool blocked = false;
      for (int64_t s = 0; s < order; s++) {
        blocked = blocked || t - s < 0 || ids[t - s] < 0;
        x[s] = blocked ? pad_ : static_cast<uint64_t>(ids[t - s]);
      }
      for (int64_t l = 0; l < layers_; l++) {
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
  }

  int64_t vocab_ = 0;
  uint64_t pad_ = 0;
  int64_t layers_ = 0, order_ = 0, heads_ = 0;
  std::vector<uint64_t> mults_;
  std::vector<Modulus> mods_;
  std::vector<uint64_t> window_;
};

}  // namespace

Napi::Function EngramHasherClass(Napi::Env env) { return HasherWrap::Define(env); }

}  // namespace fmla::engram
