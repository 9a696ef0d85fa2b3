// RAII for dlopen handles (docs/architecture.md#native-addon). A handle closes itself unless released on purpose.
#pragma once

#include <dlfcn.h>

#include <string>
#include <utility>

namespace fmla {

class DlHandle {
 public:
  DlHandle() = default;
  explicit DlHandle(void* h) : h_(h) {}
  DlHandle(const DlHandle&) = delete;
  DlHandle& operator=(const DlHandle&) = delete;
  DlHandle(DlHandle&& o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
  DlHandle& operator=(DlHandle&& o) noexcept {
    if (this != &o) {
      reset();
      h_ = std::exchange(o.h_, nullptr);
    }
    return *this;
  }
  ~DlHandle() { reset(); }

  // Opens `path` with `flags`; on failure returns an empty handle and sets `error` to dlerror().
  static DlHandle open(const std::string& path, int flags, std::string& error) {
    dlerror();
    void* h = dlopen(path.c_str(), flags);
    if (h == nullptr) {
      const char* e = dlerror();
      error = e != nullptr ? e : "dlopen failed";
    }
    return DlHandle(h);
  }

  void* get() const { return h_; }
  explicit operator bool() const { return h_ != nullptr; }
  void* symbol(const char* name) const { return h_ != nullptr ? dlsym(h_, name) : nullptr; }
  void reset() {
    if (h_ != nullptr) dlclose(h_);
    h_ = nullptr;
  }

 private:
  void* h_ = nullptr;
};

}  // namespace fmla
