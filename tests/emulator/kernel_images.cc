#include "kernel_images.h"

#include <cstring>
#include <sstream>
#include <string>

namespace emu {

namespace {

bool targetRuns(const std::string& target, int major, int minor) {
  const bool ptx = target.rfind("compute_", 0) == 0;
  std::string rest = target.substr(ptx ? 8 : 3);
  char variant = 0;
  if (!rest.empty() && (rest.back() == 'a' || rest.back() == 'f')) {
    variant = rest.back();
    rest.pop_back();
  }
  const int sm = std::stoi(rest);
  const int tMajor = sm / 10, tMinor = sm % 10;
  if (variant == 'a') return major == tMajor && minor == tMinor;
  if (!ptx || variant == 'f') return major == tMajor && minor >= tMinor;
  return major > tMajor || (major == tMajor && minor >= tMinor);
}

}  // namespace

bool hasKernelImage(const char* image, const Config& device) {
  for (const KernelImage* k = kKernelImages; k->image != nullptr; k++) {
    if (std::strcmp(k->image, image) != 0) continue;
    std::stringstream targets(k->targets);
    std::string t;
    while (std::getline(targets, t, ',')) {
      if (!t.empty() && targetRuns(t, device.major, device.minor)) return true;
    }
    return false;
  }
  return false;
}

}  // namespace emu
