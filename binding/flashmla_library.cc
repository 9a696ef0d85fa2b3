#include "flashmla_library.h"

#include <dlfcn.h>

#include <map>
#include <mutex>

namespace fmla {

namespace {

// Process-wide, never destroyed on purpose (see the header): a heap object, so no static
// destructor dlcloses CUDA at exit.
struct Registry {
  std::mutex mutex;
  std::map<std::string, std::shared_ptr<LoadedLibrary>> byPath;
};
Registry& registry() {
  static Registry* r = new Registry();
  return *r;
}

}  // namespace

std::shared_ptr<LoadedLibrary> loadFlashMla(const std::string& path, const std::vector<Preload>& preloads,
                                            const std::vector<std::string>& alternates, LoadFailure& failure) {
  Registry& reg = registry();
  std::lock_guard<std::mutex> lock(reg.mutex);
  if (auto it = reg.byPath.find(path); it != reg.byPath.end()) return it->second;

  auto lib = std::make_shared<LoadedLibrary>();
  lib->path = path;
  for (const Preload& p : preloads) {
    std::string error;
    // docs/cuda-path.md#which-build: libpython RTLD_NOW|RTLD_GLOBAL (data relocations are never lazy); torch's
    // libraries by absolute path, RTLD_LOCAL, which still satisfies later NEEDED entries by SONAME.
    DlHandle h = DlHandle::open(p.path, RTLD_NOW | (p.global ? RTLD_GLOBAL : RTLD_LOCAL), error);
    if (!h) {
      failure = {"preload", p.path, error};
      return nullptr;
    }
    lib->preloads.push_back(std::move(h));
  }
  std::string error;
  lib->handle = DlHandle::open(path, RTLD_NOW | RTLD_LOCAL, error);
  if (!lib->handle) {
    failure = {"library", path, error};
    return nullptr;
  }
  for (const auto& s : flashmla_abi::kLauncherSymbols) {
    const int i = static_cast<int>(s.id);
    void* fn = lib->handle.symbol(s.mangled);
    std::string name = s.mangled;
    if (fn == nullptr && i < static_cast<int>(alternates.size()) && !alternates[i].empty()) {
      fn = lib->handle.symbol(alternates[i].c_str());  // docs/flashmla-interface.md#head128-fallback
      name = alternates[i];
    }
    lib->launchers[i] = fn;
    lib->resolvedNames[i] = fn != nullptr ? name : std::string();
  }
  lib->cudaMissing = lib->cuda.resolve(lib->handle.get());
  reg.byPath.emplace(path, lib);
  return lib;
}

}  // namespace fmla
