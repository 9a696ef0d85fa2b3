// EngramMapping (engram_mapping.h): the checks that make a gather safe, the mapping's lifetime,
// and the synchronous and libuv-pool gathers over engram_gather.h.
#include "engram_mapping.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engram_gather.h"
#include "js_errors.h"

namespace fmla::engram {
namespace {

// A FlashMLAError whose `argument` names the offending argument (the message names it too).
Napi::Error ArgError(Napi::Env env, const char* code, const std::string& argument, const std::string& message) {
  Napi::Error e = makeError(env, code, argument + ": " + message);
  e.Value().Set("argument", argument);
  return e;
}

std::string ErrnoText(int err) { return std::string(std::strerror(err)) + " (errno " + std::to_string(err) + ")"; }

// Owns an open file descriptor.
class UniqueFd {
 public:
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

// A whole file mapped read-only and shared (the page cache's pages, no copy), unmapped by its last
// owner: the JavaScript object until close() or collection, and every async gather in flight.
class Mapping {
 public:
  // Maps `bytes` (> 0) of fd; throws NativeError(E_BACKEND) when mmap fails.
  Mapping(int fd, uint64_t bytes) : bytes_(bytes) {
    void* p = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) throw NativeError("E_BACKEND", "mmap of " + std::to_string(bytes) + " bytes failed: " + ErrnoText(errno));
    base_ = static_cast<const uint8_t*>(p);
    // Advice only: a kernel that refuses it serves the same bytes. Huge pages cut the TLB misses
    // of random rows; MADV_RANDOM stops read-ahead of neighbours nobody asked for
    // (docs/engram-native.md#mapping).
    hugePages_ = ::madvise(p, bytes, MADV_HUGEPAGE) == 0;
    ::madvise(p, bytes, MADV_RANDOM);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() { ::munmap(const_cast<uint8_t*>(base_), bytes_); }

  const uint8_t* data() const { return base_; }
  bool hugePages() const { return hugePages_; }

 private:
  const uint8_t* base_ = nullptr;
  uint64_t bytes_;
  bool hugePages_ = false;
};

constexpr double kMaxSafeInteger = 9007199254740991.0;  // 2^53 − 1
constexpr uint64_t kMaxRows = 2147483647;                // row ids are int32
constexpr uint64_t kMaxHeadDim = 65536;

// spec[name]: a whole number in [min, max], else E_VALUE naming spec.<name>.
uint64_t SpecInt(Napi::Env env, const Napi::Object& spec, const char* name, double min, double max) {
  const Napi::Value v = spec.Get(name);
  const std::string argument = std::string("spec.") + name;
  if (!v.IsNumber()) throw ArgError(env, "E_VALUE", argument, "must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  // NaN fails every comparison.
  if (!(d >= min && d <= max) || d != static_cast<double>(static_cast<uint64_t>(d))) {
    throw ArgError(env, "E_VALUE", argument, "must be a whole number in " + std::to_string(static_cast<uint64_t>(min)) + "…" +
                                               std::to_string(static_cast<uint64_t>(max)) + ", got " + v.ToString().Utf8Value());
  }
  return static_cast<uint64_t>(d);
}

Geometry ReadSpec(Napi::Env env, const Napi::Object& spec) {
  Geometry g;
  const Napi::Value format = spec.Get("format");
  const std::string f = format.IsString() ? format.As<Napi::String>().Utf8Value() : "";
  if (f != "fp8" && f != "fp32") throw ArgError(env, "E_VALUE", "spec.format", "must be 'fp8' or 'fp32'");
  g.fp8 = f == "fp8";
  g.rows = SpecInt(env, spec, "rows", 0, kMaxRows);
  g.headDim = static_cast<uint32_t>(SpecInt(env, spec, "headDim", 1, kMaxHeadDim));
  if (g.fp8 && g.headDim % 32 != 0) throw ArgError(env, "E_VALUE", "spec.headDim", "must be a multiple of 32 for fp8 rows (one scale per 32 values)");
  g.weightOffset = SpecInt(env, spec, "weightOffset", 0, kMaxSafeInteger);
  g.weightStride = SpecInt(env, spec, "weightStride", 0, kMaxSafeInteger);
  if (g.fp8) {
    g.scaleOffset = SpecInt(env, spec, "scaleOffset", 0, kMaxSafeInteger);
    g.scaleStride = SpecInt(env, spec, "scaleStride", 0, kMaxSafeInteger);
  }
  return g;
}

// The first byte past the last of `rows` regions of `bytes` at offset + k·stride (128-bit: the
// product of two safe integers exceeds 64 bits).
unsigned __int128 EndOf(uint64_t rows, uint64_t offset, uint64_t stride, uint64_t bytes) {
  return rows == 0 ? 0 : offset + static_cast<unsigned __int128>(rows - 1) * stride + bytes;
}

std::string U128(unsigned __int128 v) {
  std::string s;
  do {
    s.insert(s.begin(), static_cast<char>('0' + static_cast<int>(v % 10)));
    v /= 10;
  } while (v != 0);
  return s;
}

// Every row of the spec inside the file, checked against fstat before anything is mapped: a gather
// never touches a page past the end of the file (which would be SIGBUS).
void CheckFits(Napi::Env env, const Geometry& g, uint64_t fileBytes) {
  const unsigned __int128 weights = EndOf(g.rows, g.weightOffset, g.weightStride, g.weightBytes());
  if (weights > fileBytes) {
    throw ArgError(env, "E_VALUE", "spec", "the weights of " + std::to_string(g.rows) + " rows end at byte " + U128(weights) +
                                               " but the file has " + std::to_string(fileBytes) + " bytes");
  }
  const unsigned __int128 scales = EndOf(g.rows, g.scaleOffset, g.scaleStride, g.scaleBytes());
  if (g.fp8 && scales > fileBytes) {
    throw ArgError(env, "E_VALUE", "spec", "the scales of " + std::to_string(g.rows) + " rows end at byte " + U128(scales) +
                                               " but the file has " + std::to_string(fileBytes) + " bytes");
  }
}

enum class Kind { Baseline, Raw, F32, Bf16 };

// One checked gather: the ids copied (so JavaScript may change its array, even from another
// thread through shared memory, without moving a read outside the file) and the output's bytes.
struct Gather {
  Kind kind;
  std::vector<int32_t> ids;
  void* out;
};

void Run(const uint8_t* base, const Geometry& g, const Gather& r) {
  const int32_t* ids = r.ids.data();
  const std::size_t n = r.ids.size();
  switch (r.kind) {
    case Kind::Baseline: return GatherBaseline(base, g, ids, n, static_cast<uint8_t*>(r.out));
    case Kind::Raw: return GatherRaw(base, g, ids, n, static_cast<uint8_t*>(r.out));
    case Kind::F32: return GatherF32(base, g, ids, n, static_cast<float*>(r.out));
    case Kind::Bf16: return GatherBf16(base, g, ids, n, static_cast<uint16_t*>(r.out));
  }
}

// A gather on the libuv pool. It owns the mapping (close() or collection leaves it mapped until
// the gather ends), its ids, and a reference to the output array so the collector keeps it.
class GatherWork : public Napi::AsyncWorker {
 public:
  GatherWork(Napi::Env env, std::shared_ptr<const Mapping> file, const Geometry& g, Gather r, const Napi::Object& out)
      : Napi::AsyncWorker(env, "EngramMapping.gather"),
        deferred_(Napi::Promise::Deferred::New(env)),
        file_(std::move(file)),
        geometry_(g),
        gather_(std::move(r)),
        out_(Napi::Persistent(out)) {}

  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override { Run(file_->data(), geometry_, gather_); }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<const Mapping> file_;
  Geometry geometry_;
  Gather gather_;
  Napi::ObjectReference out_;
};

class EngramMappingWrap : public Napi::ObjectWrap<EngramMappingWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "EngramMapping",
                       {InstanceMethod("gatherRaw", &EngramMappingWrap::GatherRawSync),
                        InstanceMethod("gather", &EngramMappingWrap::GatherSync),
                        InstanceMethod("gatherBaseline", &EngramMappingWrap::GatherBaselineSync),
                        InstanceMethod("gatherRawAsync", &EngramMappingWrap::GatherRawAsync),
                        InstanceMethod("gatherAsync", &EngramMappingWrap::GatherAsync),
                        InstanceMethod("close", &EngramMappingWrap::Close)});
  }

  // new EngramMapping(path, spec)
  explicit EngramMappingWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EngramMappingWrap>(info) {
    Napi::Env env = info.Env();
    if (!info[0].IsString()) throw ArgError(env, "E_VALUE", "path", "must be a string");
    const std::string path = info[0].As<Napi::String>().Utf8Value();
    if (path.empty() || path.find('\0') != std::string::npos) throw ArgError(env, "E_VALUE", "path", "must be a non-empty path without NUL characters");
    if (!info[1].IsObject()) throw ArgError(env, "E_VALUE", "spec", "must be an object");
    geometry_ = ReadSpec(env, info[1].As<Napi::Object>());

    const UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) throw ArgError(env, "E_VALUE", "path", "cannot open " + path + ": " + ErrnoText(errno));
    struct stat st;
    if (::fstat(fd.get(), &st) != 0) throw ArgError(env, "E_BACKEND", "path", "fstat of " + path + " failed: " + ErrnoText(errno));
    if (!S_ISREG(st.st_mode)) throw ArgError(env, "E_VALUE", "path", path + " is not a regular file");
    const uint64_t fileBytes = static_cast<uint64_t>(st.st_size);
    CheckFits(env, geometry_, fileBytes);
    // mmap refuses 0 bytes; an empty file can only hold a table of 0 rows (CheckFits), which no id reaches.
    if (fileBytes > 0) {
      try {
        file_ = std::make_shared<const Mapping>(fd.get(), fileBytes);
      } catch (const NativeError& e) {
        throw ArgError(env, e.code.c_str(), "path", path + ": " + e.what());
      }
    }
    empty_ = fileBytes == 0;
    Napi::Object self = info.This().As<Napi::Object>();
    self.DefineProperties({Napi::PropertyDescriptor::Value("fileBytes", Napi::Number::New(env, static_cast<double>(fileBytes)), napi_enumerable),
                           Napi::PropertyDescriptor::Value("hugePages", Napi::Boolean::New(env, file_ && file_->hugePages()), napi_enumerable)});
  }

 private:
  bool open() const { return file_ != nullptr || (empty_ && !closed_); }

  // What a method writes: gatherRaw's records, gatherBaseline's (the same bytes), or values whose
  // type the output array picks.
  enum class Want { Raw, Baseline, Values };

  // Checks one call's arguments and copies its ids; throws the FlashMLAError it would raise.
  Gather Prepare(const Napi::CallbackInfo& info, Want want, const char* method) {
    Napi::Env env = info.Env();
    if (!open()) throw makeError(env, "E_DISPOSED", std::string("EngramMapping.") + method + ": the mapping was closed");
    if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
      throw ArgError(env, "E_DTYPE", "rowIds", "must be an Int32Array");
    }
    const Napi::Int32Array ids = info[0].As<Napi::Int32Array>();
    if (!info[1].IsTypedArray()) throw ArgError(env, "E_DTYPE", "out", want == Want::Values ? "must be a Float32Array or a Uint16Array" : "must be a Uint8Array");
    const napi_typedarray_type outType = info[1].As<Napi::TypedArray>().TypedArrayType();
    Gather r{Kind::Raw, {}, nullptr};
    uint64_t perRow = 0;
    if (want != Want::Values) {
      if (outType != napi_uint8_array) throw ArgError(env, "E_DTYPE", "out", "must be a Uint8Array");
      r.kind = want == Want::Baseline ? Kind::Baseline : Kind::Raw;
      perRow = geometry_.recordBytes();
    } else {
      if (outType != napi_float32_array && outType != napi_uint16_array) {
        throw ArgError(env, "E_DTYPE", "out", "must be a Float32Array (float32 values) or a Uint16Array (bf16 bits)");
      }
      r.kind = outType == napi_float32_array ? Kind::F32 : Kind::Bf16;
      perRow = static_cast<uint64_t>(geometry_.headDim) * (outType == napi_float32_array ? 4 : 2);
    }
    const Napi::TypedArray out = info[1].As<Napi::TypedArray>();
    const std::size_t n = ids.ElementLength();
    const uint64_t need = static_cast<uint64_t>(n) * perRow;
    if (out.ByteLength() < need) {
      throw ArgError(env, "E_BUFFER", "out", "holds " + std::to_string(out.ByteLength()) + " bytes but " + std::to_string(n) + " rows need " +
                                                 std::to_string(need));
    }
    r.ids.resize(n);
    if (n > 0) std::memcpy(r.ids.data(), ids.Data(), n * sizeof(int32_t));
    // One pass without a branch per id, then the first bad one for the message.
    uint32_t bad = 0;
    for (std::size_t i = 0; i < n; i++) bad |= static_cast<uint32_t>(static_cast<uint64_t>(static_cast<uint32_t>(r.ids[i])) >= geometry_.rows);
    if (bad != 0) {
      for (std::size_t i = 0; i < n; i++) {
        if (static_cast<uint64_t>(static_cast<uint32_t>(r.ids[i])) >= geometry_.rows) {
          const std::string range = geometry_.rows == 0 ? "the table has no rows" : "rows are 0…" + std::to_string(geometry_.rows - 1);
          throw ArgError(env, "E_RANGE", "rowIds[" + std::to_string(i) + "]", "row id " + std::to_string(r.ids[i]) + " is out of range (" + range + ")");
        }
      }
    }
    r.out = static_cast<uint8_t*>(out.ArrayBuffer().Data()) + out.ByteOffset();
    return r;
  }

  Napi::Value Sync(const Napi::CallbackInfo& info, Want want, const char* method) {
    const Gather r = Prepare(info, want, method);
    if (!r.ids.empty()) Run(file_->data(), geometry_, r);
    return info.Env().Undefined();
  }

  // Every argument error rejects the Promise rather than throwing.
  Napi::Value Async(const Napi::CallbackInfo& info, Want want, const char* method) {
    Napi::Env env = info.Env();
    try {
      Gather r = Prepare(info, want, method);
      if (r.ids.empty()) {
        Napi::Promise::Deferred done = Napi::Promise::Deferred::New(env);
        done.Resolve(env.Undefined());
        return done.Promise();
      }
      GatherWork* work = new GatherWork(env, file_, geometry_, std::move(r), info[1].As<Napi::Object>());
      const Napi::Promise promise = work->Promise();
      work->Queue();  // the worker deletes itself after OnOK
      return promise;
    } catch (const Napi::Error& e) {
      Napi::Promise::Deferred failed = Napi::Promise::Deferred::New(env);
      failed.Reject(e.Value());
      return failed.Promise();
    }
  }

  Napi::Value GatherRawSync(const Napi::CallbackInfo& info) { return Sync(info, Want::Raw, "gatherRaw"); }
  Napi::Value GatherBaselineSync(const Napi::CallbackInfo& info) { return Sync(info, Want::Baseline, "gatherBaseline"); }
  Napi::Value GatherSync(const Napi::CallbackInfo& info) { return Sync(info, Want::Values, "gather"); }
  Napi::Value GatherRawAsync(const Napi::CallbackInfo& info) { return Async(info, Want::Raw, "gatherRawAsync"); }
  Napi::Value GatherAsync(const Napi::CallbackInfo& info) { return Async(info, Want::Values, "gatherAsync"); }

  // Drops this object's hold on the mapping; gathers still running keep theirs until they end.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    file_.reset();
    closed_ = true;
    return info.Env().Undefined();
  }

  Geometry geometry_;
  std::shared_ptr<const Mapping> file_;
  bool empty_ = false;   // the file had 0 bytes: nothing mapped, yet usable until closed
  bool closed_ = false;
};

}  // namespace

Napi::Function DefineEngramMapping(Napi::Env env) {
  Napi::Function cls = EngramMappingWrap::Define(env);
  cls.Set("kernels", KernelIsa());
  return cls;
}

}  // namespace fmla::engram
