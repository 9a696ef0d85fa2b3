// Calling one of FlashMLA's launchers: stale errors cleared first, exceptions and post-launch
// errors turned into NativeError (docs/flashmla-interface.md#failure-styles,
// docs/flashmla-interface.md#pending-errors).
#pragma once

#include <exception>
#include <string>

#include "device_context.h"
#include "flashmla_symbols.h"
#include "native_error.h"

namespace fmla {

inline const char* launcherKey(flashmla_abi::Launcher id) { return flashmla_abi::kLauncherSymbols[static_cast<int>(id)].key; }

// Clears a stale error so that a launcher's own check does not exit(1) on it; a sticky error (the
// context is dead) cannot be cleared and stops the call.
inline void clearStaleError(const DeviceContext& ctx, flashmla_abi::Launcher before) {
  ctx.cuda().GetLastError();
  const int err = ctx.cuda().GetLastError();
  if (err != cuda_abi::cudaSuccess) {
    throw NativeError("E_CUDA", std::string("the CUDA context is in an unrecoverable error state (") + ctx.cuda().describe(err) +
                                    "); not calling " + launcherKey(before) + ". Restart the process.", err);
  }
}

template <typename Params>
void callLauncher(const DeviceContext& ctx, flashmla_abi::Launcher id, Params& params) {
  clearStaleError(ctx, id);
  using Fn = void (*)(Params&);
  auto fn = reinterpret_cast<Fn>(ctx.library().launcher(id));
  try {
    fn(params);  // KU_ASSERT failures throw kerutils::KUException (a std::exception)
  } catch (const std::exception& e) {
    const int err = ctx.cuda().GetLastError();
    throw NativeError("E_CUDA", std::string("FlashMLA launcher ") + launcherKey(id) + " failed: " + e.what(), err);
  } catch (...) {
    const int err = ctx.cuda().GetLastError();
    throw NativeError("E_CUDA", std::string("FlashMLA launcher ") + launcherKey(id) + " threw a non-standard exception", err);
  }
  const int err = ctx.cuda().GetLastError();
  if (err != cuda_abi::cudaSuccess) {
    throw NativeError("E_CUDA", std::string("FlashMLA launcher ") + launcherKey(id) + ": " + ctx.cuda().describe(err), err);
  }
}

}  // namespace fmla
