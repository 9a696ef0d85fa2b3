// The JavaScript side of the native tier: the CpuTile class (one workspace per instance) and the
// `cpuTile` exports (cpu_tile.h), with the reference helpers of cpu_helpers.h.
#include <cmath>
#include <cstdint>
#include <iterator>
#include <string>

#include "cpu_helpers.h"
#include "cpu_runner.h"
#include "cpu_tile.h"
#include "js_errors.h"

namespace fmla::cpu {
namespace {

const char* IsaName(Isa isa) { return isa == Isa::Avx512 ? "avx512" : isa == Isa::Avx2 ? "avx2" : nullptr; }

constexpr std::size_t kAlign = 64;
std::size_t AlignUp(std::size_t n) { return (n + kAlign - 1) & ~(kAlign - 1); }
// JavaScript handle of one workspace: the buffers are 64-byte-aligned regions of one ArrayBuffer
// that JavaScript views with typed arrays (no copy per call). V8 allocated it (no external
// buffer, so it also works where those are refused) and never moves its backing store; this
// object keeps it alive.
class TileWrap : public Napi::ObjectWrap<TileWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "CpuTile",
                       {InstanceMethod("reset", &TileWrap::Reset), InstanceMethod("bf16", &TileWrap::Bf16),
                        InstanceMethod("fp8", &TileWrap::Fp8), InstanceMethod("step", &TileWrap::Step)});
  }

  // new Tile(rows, dim, dv, isa?) with rows ≥ 1, dim and dv multiples of 16, dv ≤ dim.
  explicit TileWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TileWrap>(info) {
    Napi::Env env = info.Env();
    const int64_t rows = Int(info, 0), dim = Int(info, 1), dv = Int(info, 2);
    if (rows < 1 || rows > 4096 || dim < 16 || dim > 4096 || dim % 16 != 0 || dv < 16 || dv > dim || dv % 16 != 0) {
      throwError(env, "E_INTERNAL", "CpuTile(rows, dim, dv): rows in 1…4096, dim and dv multiples of 16, dv ≤ dim ≤ 4096");
    }
    isa_ = BestIsa();
    if (info.Length() > 3 && !info[3].IsUndefined()) {
      const std::string want = info[3].As<Napi::String>().Utf8Value();
      if (want == "avx2" && isa_ != Isa::None) isa_ = Isa::Avx2;
      else if (want != "avx512" || isa_ != Isa::Avx512) throwError(env, "E_INTERNAL", "CpuTile: this CPU does not run isa " + want);
    }
    if (isa_ == Isa::None) throwError(env, "E_INTERNAL", "CpuTile: this CPU lacks AVX2 and FMA");
    kernels_ = &KernelsFor(isa_);

    const TileLayout layout = LayoutOf(isa_, static_cast<int>(rows), static_cast<int>(dim), static_cast<int>(dv));
    // Zero-filled by V8; the regions start at the first 64-byte boundary inside it.
    Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(env, layout.bytes + kAlign);
    char* data = static_cast<char*>(buffer.Data());
    const std::size_t skip = AlignUp(reinterpret_cast<std::uintptr_t>(data)) - reinterpret_cast<std::uintptr_t>(data);
    BindBuffers(b_, layout, data + skip, static_cast<int>(rows), static_cast<int>(dim), static_cast<int>(dv));
    buffer_ = Napi::Persistent(buffer);
    Napi::Object self = info.This().As<Napi::Object>();
    self.Set("buffer", buffer);
    self.Set("isa", IsaName(isa_));
    self.Set("rowsPad", b_.rowsPad);
    const char* names[] = {"q", "qT", "k", "sT", "m", "l", "alpha", "o", "vis", "rec", "scl"};
    Napi::Object offsets = Napi::Object::New(env);
    for (std::size_t i = 0; i < std::size(names); i++) offsets.Set(names[i], static_cast<double>(skip + layout.at[i]));
    self.Set("layout", offsets);
  }

 private:
  static int64_t Int(const Napi::CallbackInfo& info, std::size_t i) {
    if (!info[i].IsNumber()) throwError(info.Env(), "E_INTERNAL", "CpuTile: argument " + std::to_string(i) + " must be a number");
    return info[i].As<Napi::Number>().Int64Value();
  }

  template <class T>
  static Napi::TypedArrayOf<T> Source(const Napi::CallbackInfo& info, napi_typedarray_type type) {
    if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != type) {
      throwError(info.Env(), "E_INTERNAL", "CpuTile: wrong source array type");
    }
    return info[0].As<Napi::TypedArrayOf<T>>();
  }

  static int Tokens(const Napi::CallbackInfo& info, std::size_t i) {
    const int64_t n = Int(info, i);
    if (n < 0 || n > kTile) throwError(info.Env(), "E_INTERNAL", "CpuTile: a tile holds 0…64 tokens");
    return static_cast<int>(n);
  }

  Napi::Value Reset(const Napi::CallbackInfo&) {
    kernels_->reset(b_);
    return Napi::Value();
  }

  // bf16(src: Uint16Array, at, ld, tokens): the tile ← tokens rows of dim values at src[at + u·ld].
  Napi::Value Bf16(const Napi::CallbackInfo& info) {
    Napi::TypedArrayOf<uint16_t> src = Source<uint16_t>(info, napi_uint16_array);
    const int64_t at = Int(info, 1), ld = Int(info, 2);
    const int tokens = Tokens(info, 3);
    // at + (tokens − 1)·ld + dim ≤ n without forming the sum: at and ld are any int64 from
    // JavaScript, and a wrapped sum (ld = 2^62, tokens = 3) would pass and read far outside src.
    const int64_t room = static_cast<int64_t>(src.ElementLength()) - b_.dim;
    if (tokens > 0 && (at < 0 || ld < 0 || at > room || (tokens > 1 && ld > (room - at) / (tokens - 1)))) {
      throwError(info.Env(), "E_INTERNAL", "CpuTile.bf16: the tile reaches past the source");
    }
    if (tokens > 0) kernels_->cvtBf16(b_, src.Data() + at, ld, tokens);
    return Napi::Value();
  }

  // fp8(src: Uint8Array, u0, u1, layout): tile slots [u0, u1) ← the tokens whose records and
  // scales start at rec[u], scl[u] (bytes of src); layout 0 = V32, 1 = MODEL1.
  Napi::Value Fp8(const Napi::CallbackInfo& info) {
    Napi::TypedArrayOf<uint8_t> src = Source<uint8_t>(info, napi_uint8_array);
    const int64_t u0 = Int(info, 1), u1 = Int(info, 2), kind = Int(info, 3);
    if (u0 < 0 || u1 > kTile || u0 > u1 || (kind != 0 && kind != 1)) throwError(info.Env(), "E_INTERNAL", "CpuTile.fp8: bad slots or layout");
    const Fp8Layout layout = static_cast<Fp8Layout>(kind);
    const Fp8Shape& s = ShapeOf(layout);
    if (b_.dim != s.dim) throwError(info.Env(), "E_INTERNAL", "CpuTile.fp8: the workspace dim does not match the layout");
    const int64_t n = static_cast<int64_t>(src.ElementLength());
    for (int64_t u = u0; u < u1; u++) {
      // Whole numbers in range (NaN fails every comparison).
      const double r = b_.rec[u], c = b_.scl[u];
      if (!(r >= 0 && r + s.recordBytes <= n && r == std::floor(r) && c >= 0 && c + s.scaleBytes <= n && c == std::floor(c))) {
        throwError(info.Env(), "E_INTERNAL", "CpuTile.fp8: a token reaches past the source");
      }
    }
    kernels_->dqFp8(b_, src.Data(), static_cast<int>(u0), static_cast<int>(u1), layout);
    return Napi::Value();
  }

  // step(tokens, scaleLog2, roundP = false)
  Napi::Value Step(const Napi::CallbackInfo& info) {
    const int tokens = Tokens(info, 0);
    if (!info[1].IsNumber()) throwError(info.Env(), "E_INTERNAL", "CpuTile.step: scaleLog2 must be a number");
    const bool roundP = info.Length() > 2 && info[2].ToBoolean().Value();
    if (tokens > 0) kernels_->step(b_, tokens, info[1].As<Napi::Number>().FloatValue(), roundP);
    return Napi::Value();
  }

  TileBuffers b_;
  Isa isa_ = Isa::None;
  const TileKernels* kernels_ = nullptr;
  Napi::Reference<Napi::ArrayBuffer> buffer_;
};

}  // namespace

Napi::Object CpuTileExports(Napi::Env env) {
  Napi::Object o = Napi::Object::New(env);
  const char* isa = IsaName(BestIsa());
  o.Set("isa", isa != nullptr ? Napi::Value(Napi::String::New(env, isa)) : env.Null());
  o.Set("Tile", TileWrap::Define(env));
  o.Set("merge", Napi::Function::New(env, MergePartial, "merge"));
  o.Set("bf16Rows", Napi::Function::New(env, Bf16Rows, "bf16Rows"));
  o.Set("gather", Napi::Function::New(env, Gather, "gather"));
  o.Set("runDense", Napi::Function::New(env, RunDenseItems, "runDense"));
  o.Set("runSparse", Napi::Function::New(env, RunSparseItems, "runSparse"));
  o.Set("runPrefill", Napi::Function::New(env, RunPrefillItems, "runPrefill"));
  o.Set("startHelpers", Napi::Function::New(env, StartHelpers, "startHelpers"));
  o.Set("prime", Napi::Function::New(env, PrimeHelpers, "prime"));
  return o;
}

}  // namespace fmla::cpu
