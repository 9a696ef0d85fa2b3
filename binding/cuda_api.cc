#include "cuda_api.h"

#include <dlfcn.h>

namespace fmla {

std::vector<std::string> CudaApi::resolve(void* handle) {
  std::vector<std::string> missing;
#define FMLA_CUDA_RESOLVE(member, symbol, type)                   \
  member = reinterpret_cast<std::type_identity_t<type>>(dlsym(handle, symbol));         \
  if (member == nullptr) missing.emplace_back(symbol);
  CUDA_ABI_FUNCTIONS(FMLA_CUDA_RESOLVE)
#undef FMLA_CUDA_RESOLVE
  // cuda_runtime_abi.h: `_v2` first (CUDA 12+), then the unversioned name.
  GetDeviceProperties = reinterpret_cast<cuda_abi::GetDevicePropertiesFn>(dlsym(handle, "cudaGetDeviceProperties_v2"));
  if (GetDeviceProperties == nullptr) {
    GetDeviceProperties = reinterpret_cast<cuda_abi::GetDevicePropertiesFn>(dlsym(handle, "cudaGetDeviceProperties"));
  }
  if (GetDeviceProperties == nullptr) missing.emplace_back("cudaGetDeviceProperties");
  StreamGetDevice = reinterpret_cast<cuda_abi::StreamGetDeviceFn>(dlsym(handle, "cudaStreamGetDevice"));  // optional
  return missing;
}

std::string CudaApi::describe(cuda_abi::cudaError_t err) const {
  const char* text = GetErrorString != nullptr ? GetErrorString(err) : nullptr;
  return "CUDA error " + std::to_string(err) + (text != nullptr ? std::string(": ") + text : std::string());
}

}  // namespace fmla
