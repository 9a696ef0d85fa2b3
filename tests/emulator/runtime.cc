// Emulated CUDA runtime state (see runtime.h).
#include "runtime.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <new>

extern char** environ;

namespace emu {

namespace {

thread_local cudaError_t tlsPending = cuda_abi::cudaSuccess;
thread_local int tlsDevice = 0;

std::atomic<int> gSticky[kMaxDevices];
std::atomic<int> gViolations{0};
std::mutex gLogMutex;

struct Registry {
  std::mutex mutex;
  std::map<std::uintptr_t, Allocation> byBegin;
  std::size_t inUse[kMaxDevices] = {};
};
Registry& registry() {
  static Registry* r = new Registry();  // never destroyed: kernels may run during exit
  return *r;
}

struct Event {
  int device;
  bool recorded = false;
  std::chrono::steady_clock::time_point at;
};
struct Handles {
  std::mutex mutex;
  std::map<void*, int> streams;  // handle -> device
  std::map<void*, Graph*> captures;  // capturing stream -> its graph
  std::map<void*, std::unique_ptr<Event>> events;
};
Handles& handles() {
  static Handles* h = new Handles();
  return *h;
}

}  // namespace

// One pass over the environment for all FLASHMLA_EMU_* variables (config() runs several times per
// emulated call; a getenv per variable would scan the environment a dozen times each time).
Config config() {
  const char* arch = nullptr;
  const char* vars[8] = {};
  enum { kMinor, kSms, kDevices, kDriver, kRuntime, kMemory, kMode, kExit };
  static constexpr const char* kNames[8] = {"MINOR", "SMS", "DEVICES", "DRIVER_VERSION", "RUNTIME_VERSION", "MEMORY", "MODE", "EXIT"};
  static constexpr char kPrefix[] = "FLASHMLA_EMU_";
  for (char** e = environ; e != nullptr && *e != nullptr; e++) {
    if ((*e)[0] != 'F' || std::strncmp(*e, kPrefix, sizeof kPrefix - 1) != 0) continue;
    const char* name = *e + sizeof kPrefix - 1;
    const char* eq = std::strchr(name, '=');
    if (eq == nullptr) continue;
    const std::size_t len = static_cast<std::size_t>(eq - name);
    if (len == 4 && std::strncmp(name, "ARCH", 4) == 0) arch = eq + 1;
    for (int i = 0; i < 8; i++) {
      if (std::strlen(kNames[i]) == len && std::strncmp(name, kNames[i], len) == 0) vars[i] = eq + 1;
    }
  }
  auto num = [&](int i, long long fallback) {
    const char* v = vars[i];
    if (v == nullptr || *v == '\0') return fallback;
    char* end = nullptr;
    long long x = std::strtoll(v, &end, 10);
    return (end != nullptr && *end == '\0') ? x : fallback;
  };
  Config c;
  bool sm100 = arch != nullptr && std::strcmp(arch, "sm100") == 0;
  c.major = sm100 ? 10 : 9;
  c.minor = static_cast<int>(num(kMinor, 0));
  c.sms = static_cast<int>(num(kSms, sm100 ? 148 : 132));
  long long devices = num(kDevices, 1);
  c.devices = static_cast<int>(devices < 0 ? 0 : (devices > kMaxDevices ? kMaxDevices : devices));
  c.driverVersion = static_cast<int>(num(kDriver, 13000));
  c.runtimeVersion = static_cast<int>(num(kRuntime, 13000));
  long long mem = num(kMemory, static_cast<long long>(c.memoryBytes));
  c.memoryBytes = mem < 0 ? 0 : static_cast<std::size_t>(mem);
  c.noop = vars[kMode] != nullptr && std::strcmp(vars[kMode], "noop") == 0;
  c.exitOnAssert = vars[kExit] != nullptr && std::strcmp(vars[kExit], "1") == 0;
  c.name = sm100 ? "FlashMLA emulator (sm100)" : "FlashMLA emulator (sm90)";
  return c;
}

const char* errorString(cudaError_t e) {
  // The real runtime's descriptions (cudaGetErrorString), for the codes the emulator produces.
  switch (e) {
    case 0: return "no error";
    case 1: return "invalid argument";
    case 2: return "out of memory";
    case 9: return "invalid configuration argument";
    case 12: return "invalid pitch argument";
    case 35: return "CUDA driver version is insufficient for CUDA runtime version";
    case 100: return "no CUDA-capable device is detected";
    case 101: return "invalid device ordinal";
    case 209: return "no kernel image is available for execution on the device";
    case 400: return "invalid resource handle";
    case 401: return "the operation cannot be performed in the present state";
    case 600: return "device not ready";
    case 900: return "operation not permitted when stream is capturing";
    case 700: return "an illegal memory access was encountered";
    case 710: return "device-side assert triggered";
    default: return "unrecognized error code";
  }
}

cudaError_t recordError(cudaError_t e) {
  if (e != cuda_abi::cudaSuccess) tlsPending = e;
  return e;
}

cudaError_t takePendingError() {
  cudaError_t e = tlsPending;
  tlsPending = cuda_abi::cudaSuccess;
  return e;
}

cudaError_t takeLastError() {
  int d = tlsDevice;  // only devices that exist can have become sticky
  if (sticky(d) != cuda_abi::cudaSuccess) {
    tlsPending = cuda_abi::cudaSuccess;
    return sticky(d);
  }
  return takePendingError();
}

int currentDevice() { return tlsDevice; }
void setCurrentDevice(int device) { tlsDevice = device; }

cudaError_t contextState(int device) {
  Config c = config();
  if (c.driverVersion < c.runtimeVersion) return cuda_abi::cudaErrorInsufficientDriver;
  if (c.devices == 0) return cuda_abi::cudaErrorNoDevice;
  if (device < 0 || device >= c.devices) return cuda_abi::cudaErrorInvalidDevice;
  return sticky(device);
}

void setSticky(int device, cudaError_t e) {
  if (device < 0 || device >= kMaxDevices) return;
  int expected = 0;
  gSticky[device].compare_exchange_strong(expected, e);  // the first fault wins, like a real context
}

cudaError_t sticky(int device) {
  if (device < 0 || device >= kMaxDevices) return cuda_abi::cudaSuccess;
  return gSticky[device].load();
}

void logLine(const std::string& line) {
  std::lock_guard<std::mutex> lock(gLogMutex);
  std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
  const char* path = std::getenv("FLASHMLA_EMU_LOG");
  if (path != nullptr && *path != '\0') {
    std::ofstream f(path, std::ios::app);
    f << line << '\n';
  }
}

void logViolation(const std::string& line) {
  int n = gViolations.fetch_add(1);
  std::lock_guard<std::mutex> lock(gLogMutex);
  if (n < 20) {
    std::fprintf(stderr, "%s\n", line.c_str());
    std::fflush(stderr);
  }
  const char* path = std::getenv("FLASHMLA_EMU_LOG");
  if (path != nullptr && *path != '\0') {
    std::ofstream f(path, std::ios::app);
    f << line << '\n';
  }
}

cudaError_t deviceMalloc(int device, void** out, std::size_t bytes) {
  *out = nullptr;
  if (bytes == 0) return cuda_abi::cudaSuccess;  // like cudaMalloc(0): success, null pointer
  Config c = config();
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  if (bytes > c.memoryBytes || r.inUse[device] > c.memoryBytes - bytes) return cuda_abi::cudaErrorMemoryAllocation;
  std::size_t rounded = (bytes + 255) / 256 * 256;
  void* p = std::aligned_alloc(256, rounded);
  if (p == nullptr) return cuda_abi::cudaErrorMemoryAllocation;
  std::memset(p, 0xFF, rounded);  // poison: NaN floats, -1 ints, so uninitialised reads show
  auto begin = reinterpret_cast<std::uintptr_t>(p);
  r.byBegin[begin] = Allocation{begin, bytes, device};
  r.inUse[device] += bytes;
  *out = p;
  return cuda_abi::cudaSuccess;
}

cudaError_t deviceFree(int device, void* p) {
  if (p == nullptr) return cuda_abi::cudaSuccess;
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  auto it = r.byBegin.find(reinterpret_cast<std::uintptr_t>(p));
  if (it == r.byBegin.end() || it->second.device != device) return cuda_abi::cudaErrorInvalidValue;
  r.inUse[device] -= it->second.size;
  r.byBegin.erase(it);
  std::free(p);
  return cuda_abi::cudaSuccess;
}

std::size_t deviceBytesInUse(int device) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  return r.inUse[device];
}

namespace {
// Caller holds the registry mutex.
const Allocation* containing(Registry& r, std::uintptr_t a) {
  auto it = r.byBegin.upper_bound(a);
  if (it == r.byBegin.begin()) return nullptr;
  --it;
  const Allocation& al = it->second;
  return a - al.begin < al.size ? &al : nullptr;
}
}  // namespace

bool findAllocation(int device, const void* p, std::size_t bytes, Allocation* out) {
  auto a = reinterpret_cast<std::uintptr_t>(p);
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  const Allocation* al = containing(r, a);
  if (al == nullptr || al->device != device) return false;
  std::size_t n = bytes == 0 ? 1 : bytes;
  if (n > al->size - (a - al->begin)) return false;
  if (out != nullptr) *out = *al;
  return true;
}

bool findAnyAllocation(const void* p, Allocation* out) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  const Allocation* al = containing(r, reinterpret_cast<std::uintptr_t>(p));
  if (al == nullptr) return false;
  *out = *al;
  return true;
}

void* createStream(int device) {
  Handles& h = handles();
  std::lock_guard<std::mutex> lock(h.mutex);
  void* s = ::operator new(1);  // a unique address is all a stream handle needs to be
  h.streams[s] = device;
  return s;
}

bool destroyStream(void* s) {
  Handles& h = handles();
  std::lock_guard<std::mutex> lock(h.mutex);
  auto it = h.streams.find(s);
  if (it == h.streams.end()) return false;
  h.streams.erase(it);
  ::operator delete(s);
  return true;
}

Graph* capturing(void* stream) {
  Handles& h = handles();
  std::lock_guard<std::mutex> lock(h.mutex);
  auto it = h.captures.find(stream);
  return it == h.captures.end() ? nullptr : it->second;
}

bool beginCapture(void* stream, int device) {
  Handles& h = handles();
  std::lock_guard<std::mutex> lock(h.mutex);
  if (h.captures.count(stream) != 0) return false;
  auto* g = new Graph();
  g->device = device;
  h.captures[stream] = g;
  return true;
}

Graph* endCapture(void* stream) {
  Handles& h = handles();
  std::lock_guard<std::mutex> lock(h.mutex);
  auto it = h.captures.find(stream);
  if (it == h.captures.end()) return nullptr;
  Graph* g = it->second;
  h.captures.erase(it);
  return g;
}

int streamDevice(void* s) {
  if (reinterpret_cast<std::uintptr_t>(s) <= 2) return currentDevice();
  Handles& h = handles();
  std::lock_guard<std::mutex> lock(h.mutex);
  auto it = h.streams.find(s);
  return it == h.streams.end() ? -1 : it->second;
}

bool streamUsable(void* s, int device) {
  // 0 = default stream, 1 = cudaStreamLegacy, 2 = cudaStreamPerThread.
  if (reinterpret_cast<std::uintptr_t>(s) <= 2) return true;
  Handles& h = handles();
  std::lock_guard<std::mutex> lock(h.mutex);
  auto it = h.streams.find(s);
  return it != h.streams.end() && it->second == device;
}

void* createEvent(int device) {
  Handles& h = handles();
  std::lock_guard<std::mutex> lock(h.mutex);
  auto ev = std::make_unique<Event>();
  ev->device = device;
  void* key = ev.get();
  h.events[key] = std::move(ev);
  return key;
}

bool destroyEvent(void* e) {
  Handles& h = handles();
  std::lock_guard<std::mutex> lock(h.mutex);
  return h.events.erase(e) == 1;
}

bool recordEvent(void* e, int device) {
  Handles& h = handles();
  std::lock_guard<std::mutex> lock(h.mutex);
  auto it = h.events.find(e);
  if (it == h.events.end() || it->second->device != device) return false;
  it->second->recorded = true;
  it->second->at = std::chrono::steady_clock::now();  // work runs at call time, so "now" is exact
  return true;
}

bool eventKnown(void* e) {
  Handles& h = handles();
  std::lock_guard<std::mutex> lock(h.mutex);
  return h.events.count(e) == 1;
}

bool eventElapsedMs(void* start, void* end, float* ms) {
  Handles& h = handles();
  std::lock_guard<std::mutex> lock(h.mutex);
  auto a = h.events.find(start);
  auto b = h.events.find(end);
  if (a == h.events.end() || b == h.events.end() || !a->second->recorded || !b->second->recorded) return false;
  *ms = std::chrono::duration<float, std::milli>(b->second->at - a->second->at).count();
  return true;
}

}  // namespace emu
