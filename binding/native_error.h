// Errors raised inside the addon. `code` is a FlashMLAError code of src/errors.ts; JavaScript turns
// the rejection into a FlashMLAError. Exceptions of this type never cross into N-API.
#pragma once

#include <stdexcept>
#include <string>

namespace fmla {

struct NativeError : std::runtime_error {
  std::string code;
  NativeError(std::string c, const std::string& message) : std::runtime_error(message), code(std::move(c)) {}
};

}  // namespace fmla
