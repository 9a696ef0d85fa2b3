#include "runtime_structs.h"

#include <algorithm>
#include <cstring>

#ifdef EMU_CUDA_HEADERS
#include <driver_types.h>
using PointerAttributes = ::cudaPointerAttributes;
using DeviceProp = ::cudaDeviceProp;
#else
// CUDA 13.0's layouts (driver_types.h), for machines without the toolkit.
struct PointerAttributes {
  int type;
  int device;
  void* devicePointer;
  void* hostPointer;
  long reserved[8];
};
struct DeviceProp {
  char name[256];
  unsigned char uuid[16];
  char luid[8];
  unsigned int luidDeviceNodeMask;
  std::size_t totalGlobalMem;
  unsigned char rest[1008 - 296];
  int major, minor, multiProcessorCount;
};
static_assert(sizeof(PointerAttributes) == 88);
#endif

namespace emu {

std::size_t pointerAttributesBytes() { return sizeof(PointerAttributes); }

bool writePointerAttributes(void* attributes, int type, int device, void* devicePointer) {
  constexpr std::size_t tail = offsetof(PointerAttributes, hostPointer) + sizeof(void*);
  const unsigned char* bytes = static_cast<const unsigned char*>(attributes);
  if (std::any_of(bytes + tail, bytes + sizeof(PointerAttributes), [](unsigned char b) { return b != 0; })) return false;
  PointerAttributes a{};
  a.type = static_cast<decltype(a.type)>(type);
  a.device = device;
  a.devicePointer = devicePointer;
  a.hostPointer = nullptr;
  std::memcpy(attributes, &a, sizeof a);
  return true;
}

void writeDeviceProp(void* prop, const std::string& name, std::size_t totalMemory, int major, int minor, int sms) {
  DeviceProp p{};
  std::memcpy(p.name, name.data(), std::min(name.size(), sizeof p.name - 1));
  p.totalGlobalMem = totalMemory;
  p.major = major;
  p.minor = minor;
  p.multiProcessorCount = sms;
  std::memcpy(prop, &p, sizeof p);
}

}  // namespace emu
