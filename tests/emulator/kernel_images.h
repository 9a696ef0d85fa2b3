// Which GPU code this emulated build "carries": per launcher, the nvcc targets of its kernels. The
// table is generated per library variant by build.mjs (with the matching .nv_fatbin section), so
// a test can load a build without, say, sm100 code and see what the real runtime would do: a
// launch on a device the targets cannot run on fails with cudaErrorNoKernelImageForDevice.
#pragma once

#include "runtime.h"

namespace emu {

struct KernelImage {
  const char* image;    // launcher key, as binding/flashmla_symbols.h names it
  const char* targets;  // comma-separated nvcc targets: "sm_90a,sm_100f,compute_90"
};

// Generated; ends with {nullptr, nullptr}.
extern const KernelImage kKernelImages[];

// Whether the driver would find code for `image` on the configured device: a cubin runs on its
// own major with an equal or higher minor (only its own capability for an "a" target); PTX is
// compiled for any device at least its target (same major for "f", exactly it for "a").
bool hasKernelImage(const char* image, const Config& device);

}  // namespace emu
