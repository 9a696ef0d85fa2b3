// Errors raised inside the addon. `code` is a FlashMLAError code of src/errors.ts; JavaScript turns
// the rejection into a FlashMLAError. Exceptions of this type never cross into N-API.
#pragma once

#include <stdexcept>
#include <string>

namespace fmla {

struct NativeError : std::runtime_error {
  std::string code;
  int cudaError = 0;  // the cudaError_t behind an E_CUDA error (JavaScript tells faults and out-of-memory apart by it)
  NativeError(std::string c, const std::string& message, int cuda = 0)
      : std::runtime_error(message), code(std::move(c)), cudaError(cuda) {}
};

}  // namespace fmla
