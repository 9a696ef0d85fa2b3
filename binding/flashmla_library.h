// A loaded FlashMLA build: its dlopen handle, the preloaded libraries it needs (libpython, torch;
// docs/cuda-path.md#which-build), the resolved decode launchers (docs/flashmla-interface.md#mangled-names) and the CUDA runtime table (docs/flashmla-interface.md#device-and-stream).
#pragma once

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "cuda_api.h"
#include "dl_handle.h"
#include "flashmla_symbols.h"

namespace fmla {

struct Preload {
  std::string path;
  bool global;  // RTLD_GLOBAL (libpython: its data symbols must be visible to libtorch_python)
};

struct LoadedLibrary {
  std::string path;
  std::vector<DlHandle> preloads;  // kept open as long as the build that needs them
  DlHandle handle;
  std::array<void*, static_cast<int>(flashmla_abi::Launcher::Count)> launchers{};
  std::array<std::string, static_cast<int>(flashmla_abi::Launcher::Count)> resolvedNames{};
  CudaApi cuda;
  std::vector<std::string> cudaMissing;

  void* launcher(flashmla_abi::Launcher id) const { return launchers[static_cast<int>(id)]; }
  bool cudaComplete() const { return cudaMissing.empty(); }
};

struct LoadFailure {
  std::string stage;  // "preload" or "library"
  std::string path;
  std::string message;
};

// Loads `path` after `preloads` (in order). `alternates[i]`, when not empty, is a symbol name to try
// for launcher i if its docs/flashmla-interface.md#mangled-names name is missing (a small-topk launcher's fallback found by
// scanning the dynamic symbol table, docs/flashmla-interface.md#head128-fallback). Loaded builds stay loaded for the life of the process: unloading a CUDA
// runtime or libtorch while the process runs (or during exit) is not safe, and Python never unloads
// extension modules either. On failure returns nullptr and fills `failure`; handles opened so far
// are closed.
std::shared_ptr<LoadedLibrary> loadFlashMla(const std::string& path, const std::vector<Preload>& preloads,
                                            const std::vector<std::string>& alternates, LoadFailure& failure);

}  // namespace fmla
