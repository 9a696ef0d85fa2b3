// Emulated CUDA runtime state: configuration from the environment, devices, last-error and
// sticky-fault semantics, the device-memory registry, streams and events. Everything runs on the
// host; "device memory" is 256-byte-aligned host memory tracked per device.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "abi.h"

namespace emu {

// Read from the environment at every call that needs it, so a process can change the emulated
// machine between calls (tests do).
struct Config {
  int major = 9;
  int minor = 0;
  int sms = 132;
  int devices = 1;
  int driverVersion = 13000;
  int runtimeVersion = 13000;
  std::size_t memoryBytes = std::size_t(8) << 30;
  bool noop = false;        // FLASHMLA_EMU_MODE=noop: launchers check, then skip the work
  bool exitOnAssert = false;  // FLASHMLA_EMU_EXIT=1: exit(1) where FlashMLA exits
  const char* name = "";  // a literal: config() runs several times per call and must not allocate
};
Config config();

inline constexpr int kMaxDevices = 64;

// ---- errors -----------------------------------------------------------------------------------
const char* errorString(cudaError_t e);
// Records e as the calling thread's pending error (when non-zero) and returns it.
cudaError_t recordError(cudaError_t e);
// cudaGetLastError semantics: the sticky fault of the current device if any, else the pending
// error, which is cleared.
cudaError_t takeLastError();
// Pending (non-sticky) error of this thread, cleared; what a launcher's post-launch
// cudaGetLastError() reports about *earlier* calls.
cudaError_t takePendingError();

int currentDevice();
void setCurrentDevice(int device);
// Common gate of every call that needs a device context: insufficient driver, no device, an
// invalid current device, then the device's sticky fault. Returns cudaSuccess or the error.
cudaError_t contextState(int device);

// A device fault poisons the context for the rest of the process (docs/flashmla-interface.md#wrong-arch, docs/flashmla-interface.md#launcher-checks).
void setSticky(int device, cudaError_t e);
cudaError_t sticky(int device);

// ---- logging ----------------------------------------------------------------------------------
// One line to stderr and, when FLASHMLA_EMU_LOG names a file, appended there.
void logLine(const std::string& line);
// Memory-checker violations: every one goes to the log file, the first 20 per process to stderr.
void logViolation(const std::string& line);

// ---- device memory ----------------------------------------------------------------------------
struct Allocation {
  std::uintptr_t begin = 0;
  std::size_t size = 0;
  int device = -1;
};
cudaError_t deviceMalloc(int device, void** out, std::size_t bytes);
cudaError_t deviceFree(int device, void* p);
std::size_t deviceBytesInUse(int device);
// The live allocation on `device` containing all of [p, p + bytes), if any.
bool findAllocation(int device, const void* p, std::size_t bytes, Allocation* out);
// The live allocation on any device containing p, if any.
bool findAnyAllocation(const void* p, Allocation* out);

// ---- streams and events -----------------------------------------------------------------------
void* createStream(int device);
bool destroyStream(void* s);
// Null and the legacy/per-thread pseudo handles count as the current device's default stream.
bool streamUsable(void* s, int device);
// The device of a stream handle (the current one for the default streams), -1 when unknown.
int streamDevice(void* s);
void* createEvent(int device);
bool destroyEvent(void* e);
// Records e on a stream of `device`; false for an unknown event or one of another device (400).
bool recordEvent(void* e, int device);
// ---- stream capture ---------------------------------------------------------------------------
// A graph being captured or captured: the stream's work in order, run at each replay.
struct Graph {
  int device = 0;
  std::vector<std::function<void(const Config&)>> ops;  // each told the configuration of the replay
};
// The graph `stream` is capturing into, or null.
Graph* capturing(void* stream);
bool beginCapture(void* stream, int device);
// Ends the capture; the graph (owned by the caller) or null when the stream was not capturing.
Graph* endCapture(void* stream);

// Milliseconds between two recorded events; false if either is unknown or unrecorded.
bool eventElapsedMs(void* start, void* end, float* ms);
bool eventKnown(void* e);

}  // namespace emu
