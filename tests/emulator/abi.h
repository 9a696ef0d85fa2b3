// The emulator's view of FlashMLA's ABI: the binding's own headers (the one place that knows the
// struct layouts and the CUDA types), included with default visibility so that launcher
// instantiations over these types are exported even though the library builds with
// -fvisibility=hidden (GCC gives a template instantiation the most restrictive visibility of its
// template arguments).
#pragma once

#pragma GCC visibility push(default)
#include "flashmla_params.h"
#pragma GCC visibility pop
#include "cuda_runtime_abi.h"

namespace emu {

using cuda_abi::cudaError_t;

// Error codes the emulator produces beyond those cuda_runtime_abi.h names (values of the real
// cudaError enum).
inline constexpr cudaError_t kErrNoKernelImage = 209;
inline constexpr cudaError_t kErrInvalidConfiguration = 9;
inline constexpr cudaError_t kErrInvalidPitchValue = 12;
inline constexpr cudaError_t kErrInvalidResourceHandle = 400;
inline constexpr cudaError_t kErrIllegalState = 401;
inline constexpr cudaError_t kErrStreamCaptureUnsupported = 900;
inline constexpr cudaError_t kErrNotReady = 600;
inline constexpr cudaError_t kErrAssert = 710;

}  // namespace emu
