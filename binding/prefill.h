// One sparse prefill on the device (FlashMLA's csrc/api/sparse_fwd.h, docs/cuda-path.md#prefill):
// uploads of host operands, the launcher, downloads of host-bound outputs, on one stream. Which
// launcher and every shape rule are decided by the TypeScript host layer
// (src/cuda/prefill-host-layer.ts); this fills SparseAttnFwdParams from the request and re-checks,
// as a last line of defence, every condition under which the launcher would end the process, and
// the sizes of host buffers before they are read or written.
#pragma once

#include <napi.h>

#include <cstdint>
#include <vector>

#include "device_context.h"
#include "flashmla_symbols.h"
#include "request_operands.h"

namespace fmla {

enum PrefillOperand : int { kPfQ, kPfKv, kPfIndices, kPfAttnSink, kPfTopkLength, kPrefillOperandCount };

struct PrefillRequest {
  flashmla_abi::Launcher launcher{};
  int sQ = 0, sKv = 0, hQ = 0, hKv = 0, dQK = 0, dV = 0, topk = 0, numSm = 0;
  float smScale = 0, smScaleLog2 = 0;
  int strideQS = 0, strideQH = 0, strideKvS = 0, strideKvH = 0, strideIndicesS = 0, strideIndicesH = 0;
  OperandSource ops[kPrefillOperandCount];
  // Host destinations (a host q) or all null (device outputs from the pool).
  void* hostOut = nullptr;
  std::size_t hostOutBytes = 0;
  void* hostMaxLogits = nullptr;
  std::size_t hostMaxLogitsBytes = 0;
  void* hostLse = nullptr;
  std::size_t hostLseBytes = 0;

  bool hostOutputs() const { return hostOut != nullptr; }
  // Whether the call reads or writes host memory (then it runs on the worker thread).
  bool touchesHost() const;
};

struct PrefillOutcome {
  uint64_t outId = 0, maxLogitsId = 0, lseId = 0;
  void* outPtr = nullptr;
  void* maxLogitsPtr = nullptr;
  void* lsePtr = nullptr;
};

// On the JavaScript thread: reads the request; typed arrays it points into are added to keepAlive.
PrefillRequest parsePrefillRequest(const Napi::Object& o, std::vector<Napi::Reference<Napi::Value>>& keepAlive);

// On the thread that issues it, device already selected. `major`/`minor`: the device's compute capability.
PrefillOutcome runPrefill(DeviceContext& ctx, int major, int minor, const PrefillRequest& r);

}  // namespace fmla
