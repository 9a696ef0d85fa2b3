// What every emulated launcher shares: FlashMLA's failure styles (docs/flashmla-interface.md#launcher-checks, docs/flashmla-interface.md#failure-styles), the
// "launch" step with its CUDA-error checks, and the checked global-memory accessor through which
// every kernel read and write goes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <string>

#include "kernel_images.h"
#include "runtime.h"

namespace kerutils {
// Stand-in for FlashMLA's kerutils::KUException: what KU_ASSERT / KU_CUDA_CHECK throw.
class KUException : public std::exception {
 public:
  explicit KUException(std::string what) : what_(std::move(what)) {}
  const char* what() const noexcept override { return what_.c_str(); }

 private:
  std::string what_;
};
}  // namespace kerutils

namespace emu {

// FLASH_ASSERT / CHECK_CUDA print and exit(1) (dense, combine, sched-meta); KU_ASSERT and
// KU_CUDA_CHECK print and throw (the sparse launchers). docs/flashmla-interface.md#launcher-checks
enum class FailStyle { Exit, Throw };

// Prints and logs `message`, then exits (FLASHMLA_EMU_EXIT=1) or throws std::runtime_error for the
// Exit style, and throws kerutils::KUException for the Throw style.
[[noreturn]] void fail(FailStyle style, const std::string& message);

// A launcher-side check: fail(style, ...) naming the condition when it does not hold.
inline void require(FailStyle style, bool ok, const char* launcher, const char* condition) {
  if (!ok) fail(style, std::string(launcher) + ": assertion failed: " + condition);
}

// Which compute capability a kernel has SASS for; a mismatch hits CUTE_INVALID_CONTROL_PATH,
// a device trap (docs/flashmla-interface.md#wrong-arch).
enum class KernelArch { Any, Sm90, Sm100 };

// Thrown inside a kernel body on a device fault; ends the kernel (caught by launch()).
struct KernelAbort {};

class KernelScope {
 public:
  KernelScope(const char* kernel, int device) : kernel_(kernel), device_(device) {}

  const char* kernel() const { return kernel_; }

  // Copies [p, p + bytes) to dst after checking it lies inside one live allocation.
  void read(const void* p, std::size_t bytes, void* dst) {
    check(p, bytes, "read");
    std::memcpy(dst, p, bytes);
  }
  void write(void* p, std::size_t bytes, const void* src) {
    check(p, bytes, "write");
    std::memcpy(p, src, bytes);
  }
  template <class T> T load(const void* p) {
    T v;
    read(p, sizeof(T), &v);
    return v;
  }
  template <class T> void store(void* p, T v) { write(p, sizeof(T), &v); }

  // Device faults: each is logged, becomes the device's sticky error, and ends the kernel.
  [[noreturn]] void illegalAddress(const std::string& what);
  [[noreturn]] void trap(const std::string& what);

 private:
  void check(const void* p, std::size_t bytes, const char* op);

  const char* kernel_;
  int device_;
  Allocation last_{};  // one-entry cache: consecutive accesses mostly hit the same allocation
};

// Offset a pointer by a byte count.
inline const std::uint8_t* byteAt(const void* base, std::int64_t offset) {
  return static_cast<const std::uint8_t*>(base) + offset;
}
inline std::uint8_t* byteAt(void* base, std::int64_t offset) { return static_cast<std::uint8_t*>(base) + offset; }

struct LaunchSpec {
  const char* launcher;  // for messages
  const char* kernel;    // the __global__ function's name, for fault reports
  const char* image;     // whose GPU code this library carries for which targets (kernel_images.h)
  FailStyle style;
  KernelArch arch;
  void* stream;
  // Thread blocks in the grid; an empty grid is refused by the launch (cudaErrorInvalidConfiguration).
  long long gridBlocks = 1;
};

// The launch itself, after the launcher's host-side checks: the CUDA calls a real launcher makes
// (cudaFuncSetAttribute, the launch) fail on a dead context, a missing device, an insufficient
// driver or a foreign stream; then the kernel runs (or traps on the wrong arch, or is skipped in
// FLASHMLA_EMU_MODE=noop); then the post-launch cudaGetLastError() reports any pending error of an
// earlier call (docs/flashmla-interface.md#launcher-checks, docs/flashmla-interface.md#pending-errors).
template <class Body> void launch(const LaunchSpec& spec, Body&& body);

// Implementation details of launch().
cudaError_t launchState(const LaunchSpec& spec, int device);
bool archMatches(KernelArch arch, const Config& c);
void reportLaunchError(const LaunchSpec& spec, cudaError_t e);

// Runs a kernel body (or traps on the wrong arch, or skips it in no-op mode); a fault ends it.
template <class Body> void runKernel(const char* kernel, int device, KernelArch arch, const Config& c, Body& body) {
  KernelScope scope(kernel, device);
  try {
    if (!archMatches(arch, c)) scope.trap("CUTE_INVALID_CONTROL_PATH: kernel has no code path for this architecture");
    if (!c.noop) body(scope);
  } catch (const KernelAbort&) {
    // The fault is sticky on the device; the launch itself returned normally (faults are async).
  }
}

template <class Body> void launch(const LaunchSpec& spec, Body&& body) {
  int device = currentDevice();
  if (cudaError_t e = launchState(spec, device)) reportLaunchError(spec, e);
  const Config c = config();  // once per launch: the environment does not change during one
  // Without code for the device the runtime refuses the launch (cudaErrorNoKernelImageForDevice),
  // and FlashMLA's CHECK_CUDA / KU_CUDA_CHECK fail the launcher.
  if (!hasKernelImage(spec.image, c)) reportLaunchError(spec, recordError(kErrNoKernelImage));
  // The launch itself fails; the launcher's post-launch cudaGetLastError() takes the error.
  if (spec.gridBlocks <= 0) {
    recordError(kErrInvalidConfiguration);
    reportLaunchError(spec, takePendingError());
  }
  if (Graph* g = capturing(spec.stream)) {
    // Stream capture: the kernel is recorded (with its own copy of the parameters) and runs at each replay.
    g->ops.push_back([kernel = std::string(spec.kernel), device, arch = spec.arch, body](const Config& at) mutable {
      runKernel(kernel.c_str(), device, arch, at, body);
    });
  } else {
    runKernel(spec.kernel, device, spec.arch, c, body);
  }
  if (cudaError_t e = takePendingError()) reportLaunchError(spec, e);
}

}  // namespace emu
