// The CUDA runtime structs the emulator hands back, written whole the way the real runtime writes
// them: the struct of the CUDA version the emulator was compiled against. When the CUDA toolkit's
// headers are installed, build.mjs compiles runtime_structs.cc against them (EMU_CUDA_HEADERS), so
// a caller that passes a struct of the wrong size overruns it here, where AddressSanitizer and the
// reserved-bytes check below can see it; without them, CUDA 13.0's sizes are used.
#pragma once

#include <cstddef>
#include <string>

namespace emu {

// sizeof(cudaPointerAttributes) of the headers in use.
std::size_t pointerAttributesBytes();

// Fills a whole cudaPointerAttributes. Returns false, writing nothing, when the caller's struct
// has non-zero reserved bytes (CUDA 13 requires them zero; non-zero bytes there usually mean the
// caller's object is smaller than the struct and the bytes belong to something else).
bool writePointerAttributes(void* attributes, int type, int device, void* devicePointer);

// Fills a whole cudaDeviceProp (name, memory, capability, SM count; everything else zero).
void writeDeviceProp(void* prop, const std::string& name, std::size_t totalMemory, int major, int minor, int sms);

}  // namespace emu
