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
#include <new>
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
  Mapping(int fd, uint64_t bytes, bool hugePages) : bytes_(bytes) {
    void* p = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) throw NativeError("E_BACKEND", "mmap of " + std::to_string(bytes) + " bytes failed: " + ErrnoText(errno));
    base_ = static_cast<const uint8_t*>(p);
    // Advice only: a kernel that refuses it serves the same bytes. MADV_RANDOM stops read-ahead of
    // neighbours nobody asked for. Huge pages, when asked for, cut the TLB misses of random rows in
    // a table already in memory, but make the first touch of a row fault in 2 MiB of the file
    // (docs/engram-native.md#mapping), so they are opt-in.
    hugePages_ = hugePages && ::madvise(p, bytes, MADV_HUGEPAGE) == 0;
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
// the gather ends), its ids and its output: memory of the addon's, handed to JavaScript as an
// ArrayBuffer only when the gather is done. Writing into a caller's array from another thread
// would not be safe: JavaScript may transfer or detach it meanwhile, and nothing in Node-API keeps
// a detached buffer's memory alive.
class GatherWork : public Napi::AsyncWorker {
 public:
  GatherWork(Napi::Env env, std::shared_ptr<const Mapping> file, const Geometry& g, Gather r, std::unique_ptr<uint8_t[]> out, std::size_t bytes)
      : Napi::AsyncWorker(env, "EngramMapping.gather"),
        deferred_(Napi::Promise::Deferred::New(env)),
        file_(std::move(file)),
        geometry_(g),
        gather_(std::move(r)),
        out_(std::move(out)),
        bytes_(bytes) {
    gather_.out = out_.get();
  }

  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override { Run(file_->data(), geometry_, gather_); }
  void OnOK() override {
    Napi::Env env = Env();
    uint8_t* data = out_.release();
    deferred_.Resolve(Napi::ArrayBuffer::New(env, data, bytes_, [](Napi::Env, void* p) { delete[] static_cast<uint8_t*>(p); }));
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<const Mapping> file_;
  Geometry geometry_;
  Gather gather_;
  std::unique_ptr<uint8_t[]> out_;
  std::size_t bytes_;
};

// A gather on the libuv pool straight into a caller's array over a SharedArrayBuffer, in blocks of
// `blockRows` rows `blockStride` bytes apart (EngramStore's [token, layer, column] layout). A
// SharedArrayBuffer cannot be detached, transferred or shrunk, and the reference keeps it alive, so
// writing it from another thread is safe; an ordinary ArrayBuffer is refused for that reason.
class BlockGatherWork : public Napi::AsyncWorker {
 public:
  BlockGatherWork(Napi::Env env, std::shared_ptr<const Mapping> file, const Geometry& g, Gather r, std::size_t blockRows, std::size_t blockStride,
                  const Napi::Object& out)
      : Napi::AsyncWorker(env, "EngramMapping.gatherBlocks"),
        deferred_(Napi::Promise::Deferred::New(env)),
        file_(std::move(file)),
        geometry_(g),
        gather_(std::move(r)),
        blockRows_(blockRows),
        blockStride_(blockStride),
        out_(Napi::Persistent(out)) {}

  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override {
    Gather block{gather_.kind, {}, nullptr};
    auto* at = static_cast<uint8_t*>(gather_.out);
    for (std::size_t first = 0; first < gather_.ids.size(); first += blockRows_, at += blockStride_) {
      block.ids.assign(gather_.ids.begin() + static_cast<std::ptrdiff_t>(first), gather_.ids.begin() + static_cast<std::ptrdiff_t>(first + blockRows_));
      block.out = at;
      Run(file_->data(), geometry_, block);
    }
  }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<const Mapping> file_;
  Geometry geometry_;
  Gather gather_;
  std::size_t blockRows_;
  std::size_t blockStride_;
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
                        InstanceMethod("gatherBlocksAsync", &EngramMappingWrap::GatherBlocksAsync),
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

    // new EngramMapping(path, spec, { hugePages })
    const bool hugePages = info[2].IsObject() && info[2].As<Napi::Object>().Get("hugePages").ToBoolean().Value();
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
        file_ = std::make_shared<const Mapping>(fd.get(), fileBytes, hugePages);
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

  // Checks rowIds (an Int32Array of ids in [0, rows)) and copies them, so JavaScript may change
  // its array, even from another thread through shared memory, without moving a read outside the file.
  std::vector<int32_t> Ids(const Napi::CallbackInfo& info, const char* method) const {
    Napi::Env env = info.Env();
    if (!open()) throw makeError(env, "E_DISPOSED", std::string("EngramMapping.") + method + ": the mapping was closed");
    if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
      throw ArgError(env, "E_DTYPE", "rowIds", "must be an Int32Array");
    }
    const Napi::Int32Array array = info[0].As<Napi::Int32Array>();
    std::vector<int32_t> ids(array.ElementLength());
    if (!ids.empty()) std::memcpy(ids.data(), array.Data(), ids.size() * sizeof(int32_t));
    // One pass without a branch per id, then the first bad one for the message.
    uint32_t bad = 0;
    for (const int32_t id : ids) bad |= static_cast<uint32_t>(static_cast<uint64_t>(static_cast<uint32_t>(id)) >= geometry_.rows);
    if (bad != 0) {
      for (std::size_t i = 0; i < ids.size(); i++) {
        if (static_cast<uint64_t>(static_cast<uint32_t>(ids[i])) >= geometry_.rows) {
          const std::string range = geometry_.rows == 0 ? "the table has no rows" : "rows are 0…" + std::to_string(geometry_.rows - 1);
          throw ArgError(env, "E_RANGE", "rowIds[" + std::to_string(i) + "]", "row id " + std::to_string(ids[i]) + " is out of range (" + range + ")");
        }
      }
    }
    return ids;
  }

  // Output bytes per row of a gather kind.
  uint64_t PerRow(Kind kind) const {
    switch (kind) {
      case Kind::Baseline:
      case Kind::Raw: return geometry_.recordBytes();
      case Kind::F32: return static_cast<uint64_t>(geometry_.headDim) * 4;
      case Kind::Bf16: return static_cast<uint64_t>(geometry_.headDim) * 2;
    }
    return 0;
  }

  // A synchronous gather's arguments: ids, and `out`, the caller's array it writes (JavaScript runs
  // nothing until the gather returns, so the array stays as it is).
  Gather Prepare(const Napi::CallbackInfo& info, Want want, const char* method) const {
    Napi::Env env = info.Env();
    Gather r{Kind::Raw, Ids(info, method), nullptr};
    if (!info[1].IsTypedArray()) throw ArgError(env, "E_DTYPE", "out", want == Want::Values ? "must be a Float32Array or a Uint16Array" : "must be a Uint8Array");
    const Napi::TypedArray out = info[1].As<Napi::TypedArray>();
    const napi_typedarray_type outType = out.TypedArrayType();
    if (want != Want::Values) {
      if (outType != napi_uint8_array) throw ArgError(env, "E_DTYPE", "out", "must be a Uint8Array");
      r.kind = want == Want::Baseline ? Kind::Baseline : Kind::Raw;
    } else {
      if (outType != napi_float32_array && outType != napi_uint16_array) {
        throw ArgError(env, "E_DTYPE", "out", "must be a Float32Array (float32 values) or a Uint16Array (bf16 bits)");
      }
      r.kind = outType == napi_float32_array ? Kind::F32 : Kind::Bf16;
    }
    const uint64_t need = static_cast<uint64_t>(r.ids.size()) * PerRow(r.kind);
    if (out.ByteLength() < need) {
      throw ArgError(env, "E_BUFFER", "out", "holds " + std::to_string(out.ByteLength()) + " bytes but " + std::to_string(r.ids.size()) + " rows need " +
                                                 std::to_string(need));
    }
    r.out = static_cast<uint8_t*>(out.ArrayBuffer().Data()) + out.ByteOffset();
    return r;
  }

  Napi::Value Sync(const Napi::CallbackInfo& info, Want want, const char* method) {
    const Gather r = Prepare(info, want, method);
    if (!r.ids.empty()) Run(file_->data(), geometry_, r);
    return info.Env().Undefined();
  }

  // gatherRawAsync(rowIds) / gatherAsync(rowIds, 'fp32' | 'bf16') → Promise<ArrayBuffer> of the rows.
  // Every argument error rejects the Promise rather than throwing.
  Napi::Value Async(const Napi::CallbackInfo& info, Want want, const char* method) {
    Napi::Env env = info.Env();
    Napi::Promise::Deferred now = Napi::Promise::Deferred::New(env);
    try {
      Gather r{Kind::Raw, Ids(info, method), nullptr};
      if (want == Want::Values) {
        const std::string dtype = info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "";
        if (dtype != "fp32" && dtype != "bf16") throw ArgError(env, "E_VALUE", "dtype", "must be 'fp32' or 'bf16'");
        r.kind = dtype == "fp32" ? Kind::F32 : Kind::Bf16;
      }
      const std::size_t bytes = static_cast<std::size_t>(r.ids.size() * PerRow(r.kind));
      if (r.ids.empty()) {
        now.Resolve(Napi::ArrayBuffer::New(env, 0));
        return now.Promise();
      }
      std::unique_ptr<uint8_t[]> out(new (std::nothrow) uint8_t[bytes]);
      if (!out) throw makeError(env, "E_OUT_OF_MEMORY", std::string("EngramMapping.") + method + ": cannot allocate " + std::to_string(bytes) + " bytes for the rows");
      GatherWork* work = new GatherWork(env, file_, geometry_, std::move(r), std::move(out), bytes);
      const Napi::Promise promise = work->Promise();
      work->Queue();  // the worker deletes itself after OnOK
      return promise;
    } catch (const Napi::Error& e) {
      now.Reject(e.Value());
      return now.Promise();
    }
  }

  // gatherBlocksAsync(rowIds, kind 'raw' | 'fp32' | 'bf16', out, blockRows, blockStride) → Promise<void>:
  // rows of block b (rowIds[b·blockRows …]) land at out's byte b·blockStride. Errors reject.
  Napi::Value GatherBlocksAsync(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Promise::Deferred now = Napi::Promise::Deferred::New(env);
    try {
      Gather r{Kind::Raw, Ids(info, "gatherBlocksAsync"), nullptr};
      const std::string kind = info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "";
      napi_typedarray_type want = napi_uint8_array;
      if (kind == "fp32") r.kind = Kind::F32, want = napi_float32_array;
      else if (kind == "bf16") r.kind = Kind::Bf16, want = napi_uint16_array;
      else if (kind != "raw") throw ArgError(env, "E_VALUE", "kind", "must be 'raw', 'fp32' or 'bf16'");
      if (!info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != want) {
        throw ArgError(env, "E_DTYPE", "out", "must be a " + std::string(want == napi_uint8_array ? "Uint8Array" : want == napi_float32_array ? "Float32Array" : "Uint16Array") + " for '" + kind + "' rows");
      }
      const Napi::TypedArray out = info[2].As<Napi::TypedArray>();
      napi_value buffer = nullptr;
      void* data = nullptr;  // the first element (byte offset included)
      if (napi_get_typedarray_info(env, out, nullptr, nullptr, &data, &buffer, nullptr) != napi_ok) throw ArgError(env, "E_INTERNAL", "out", "unreadable typed array");
      bool plain = false;
      napi_is_arraybuffer(env, buffer, &plain);
      if (plain) throw ArgError(env, "E_VALUE", "out", "must be a view of a SharedArrayBuffer (an ArrayBuffer could be detached while the pool writes it)");
      const double blockRows = info[3].IsNumber() ? info[3].As<Napi::Number>().DoubleValue() : -1;
      const double blockStride = info[4].IsNumber() ? info[4].As<Napi::Number>().DoubleValue() : -1;
      const uint64_t perRow = PerRow(r.kind);
      if (!(blockRows >= 1 && blockRows <= 65536) || blockRows != static_cast<double>(static_cast<uint64_t>(blockRows)) ||
          r.ids.size() % static_cast<std::size_t>(blockRows) != 0) {
        throw ArgError(env, "E_VALUE", "blockRows", "must be a whole number from 1 to 65536 that divides the number of row ids");
      }
      const auto rowsPerBlock = static_cast<uint64_t>(blockRows);
      if (!(blockStride >= static_cast<double>(rowsPerBlock * perRow) && blockStride <= 9007199254740991.0) ||
          blockStride != static_cast<double>(static_cast<uint64_t>(blockStride))) {
        throw ArgError(env, "E_VALUE", "blockStride", "must be a whole number of bytes of at least blockRows rows");
      }
      const auto stride = static_cast<uint64_t>(blockStride);
      const uint64_t blocks = r.ids.size() / rowsPerBlock;
      const unsigned __int128 need = blocks == 0 ? 0 : static_cast<unsigned __int128>(blocks - 1) * stride + rowsPerBlock * perRow;
      if (need > out.ByteLength()) {
        throw ArgError(env, "E_BUFFER", "out", "holds " + std::to_string(out.ByteLength()) + " bytes but " + std::to_string(blocks) + " blocks need " + U128(need));
      }
      if (r.ids.empty()) {
        now.Resolve(env.Undefined());
        return now.Promise();
      }
      r.out = data;
      auto* work = new BlockGatherWork(env, file_, geometry_, std::move(r), static_cast<std::size_t>(rowsPerBlock), static_cast<std::size_t>(stride), out);
      const Napi::Promise promise = work->Promise();
      work->Queue();
      return promise;
    } catch (const Napi::Error& e) {
      now.Reject(e.Value());
      return now.Promise();
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
