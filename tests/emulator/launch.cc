// Failure styles, launch state and the memory checker (see launch.h).
#include "launch.h"

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>

namespace emu {

void fail(FailStyle style, const std::string& message) {
  logLine("[flashmla-emu] " + message);
  if (style == FailStyle::Throw) throw kerutils::KUException(message);
  if (config().exitOnAssert) std::exit(1);
  throw std::runtime_error(message);
}

cudaError_t launchState(const LaunchSpec& spec, int device) {
  if (cudaError_t e = contextState(device)) return e;
  if (!streamUsable(spec.stream, device)) return kErrInvalidResourceHandle;
  return cuda_abi::cudaSuccess;
}

bool archMatches(KernelArch arch, const Config& c) {
  if (arch == KernelArch::Any) return true;
  return arch == KernelArch::Sm90 ? (c.major == 9 && c.minor == 0) : c.major == 10;
}

void reportLaunchError(const LaunchSpec& spec, cudaError_t e) {
  std::ostringstream m;
  m << spec.launcher << ": CUDA error " << e << " (" << errorString(e) << ")";
  fail(spec.style, m.str());
}

void KernelScope::check(const void* p, std::size_t bytes, const char* op) {
  auto a = reinterpret_cast<std::uintptr_t>(p);
  std::size_t n = bytes == 0 ? 1 : bytes;
  if (last_.size != 0 && a >= last_.begin && a - last_.begin < last_.size && n <= last_.size - (a - last_.begin)) return;
  if (findAllocation(device_, p, bytes, &last_)) return;
  std::ostringstream m;
  m << op << " of " << bytes << " bytes at 0x" << std::hex << a << " outside every live allocation of device "
    << std::dec << device_;
  illegalAddress(m.str());
}

void KernelScope::illegalAddress(const std::string& what) {
  logViolation(std::string("[flashmla-emu] illegal memory access in kernel ") + kernel_ + ": " + what);
  setSticky(device_, cuda_abi::cudaErrorIllegalAddress);
  throw KernelAbort{};
}

void KernelScope::trap(const std::string& what) {
  logLine(std::string("[flashmla-emu] device trap in kernel ") + kernel_ + ": " + what);
  setSticky(device_, kErrAssert);
  throw KernelAbort{};
}

}  // namespace emu
