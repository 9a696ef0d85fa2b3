// The CUDA runtime function table, filled by dlsym on the FlashMLA build's handle so the addon and
// the kernels share one runtime instance (docs/flashmla-interface.md#device-and-stream). Entries come from cuda_runtime_abi.h.
#pragma once

#include <string>
#include <type_traits>
#include <vector>

#include "cuda_runtime_abi.h"

namespace fmla {

using namespace cuda_abi;

struct CudaApi {
#define FMLA_CUDA_MEMBER(member, symbol, type) std::type_identity_t<type> member = nullptr;
  CUDA_ABI_FUNCTIONS(FMLA_CUDA_MEMBER)
#undef FMLA_CUDA_MEMBER
  cuda_abi::GetDevicePropertiesFn GetDeviceProperties = nullptr;
  cuda_abi::StreamGetDeviceFn StreamGetDevice = nullptr;  // optional: CUDA >= 12.8

  // Resolves every entry through `handle`; returns the names that did not resolve.
  std::vector<std::string> resolve(void* handle);

  // "cudaErrorX (code): text" for messages.
  std::string describe(cuda_abi::cudaError_t err) const;
};

}  // namespace fmla
