// One decode call on the device: uploads of host operands, q regrouping, sched meta (first use),
// main kernel(s), combine and output reshapes, on one stream (docs/flashmla-interface.md#dense-host-layer, docs/flashmla-interface.md#sparse-host-layer, docs/flashmla-interface.md#call-sequence). What to do
// is decided by the TypeScript host layer (src/native/host-layer.ts); this fills FlashMLA's param
// structs from it and re-checks, as a last line of defence, every condition under which a launcher
// would exit(1) or trap (docs/flashmla-interface.md#launcher-checks, docs/flashmla-interface.md#launcher-gaps, docs/flashmla-interface.md#wrong-arch).
#pragma once

#include <napi.h>

#include <cstdint>
#include <vector>

#include "device_context.h"
#include "flashmla_symbols.h"
#include "request_operands.h"

namespace fmla {

enum Operand : int { kQ, kKv, kBlockTable, kSeqlens, kIndices, kTopkLength, kAttnSink, kExtraKv, kExtraIndices, kExtraTopkLength, kOperandCount };

struct DecodeRequest {
  bool dense = false;
  flashmla_abi::Launcher main{};
  flashmla_abi::Launcher combine{};
  bool twice = false;  // docs/flashmla-interface.md#sparse-host-layer "Head64 ×2"
  uint64_t slot = 0;
  int b = 0, sQ = 0, hQ = 0, hK = 1, dQK = 0, dV = 0, numSmParts = 0, fixedOverhead = 0, topk = -1, extraTopk = -1;
  float scale = 0, scaleLog2 = 0;
  bool causal = false;
  int numBlocks = 0, pageBlockSize = 0, extraNumBlocks = 0, extraPageBlockSize = 0;
  int elemBytes = 2;
  int64_t qStrides[3] = {0, 0, 0};  // q (b, s_q, h_q) element strides
  bool regroupQ = false;            // dense h_k > 1: physical q regrouping
  int64_t qReStrides[3] = {0, 0, 0};  // dense, when q_re is a view: batch, row, head
  int64_t kStrides[3] = {0, 0, 0};
  int64_t blockTableStride = 0;
  int strideKvBlock = 0, strideKvRow = 0, strideIndices[2] = {0, 0};
  int strideExtraKvBlock = 0, strideExtraKvRow = 0, strideExtraIndices[2] = {0, 0};
  bool outDirect = true;  // the kernels can write the public out layout
  bool lseDirect = true;  // the kernels can write the public lse layout
  uint64_t outAddress = 0;  // preallocated device outputs (0: a block of the pool)
  uint64_t lseAddress = 0;
  void* hostOut = nullptr;  // host destinations (host-tensor calls) or null for device outputs
  std::size_t hostOutBytes = 0;
  void* hostLse = nullptr;
  std::size_t hostLseBytes = 0;
  OperandSource ops[kOperandCount];
};

struct DecodeOutcome {
  bool schedMetaRan = false;
  uint64_t outId = 0, lseId = 0;
  void* outPtr = nullptr;
  void* lsePtr = nullptr;
};

// On the JavaScript thread: reads the request; typed arrays it points into are added to keepAlive.
DecodeRequest parseDecodeRequest(const Napi::Object& o, std::vector<Napi::Reference<Napi::Value>>& keepAlive);

// The per-call part of a prepared request (docs/cuda-path.md#per-call-cost), exchanged through a
// BigUint64Array instead of N-API objects. In: the sched-meta slot and preallocated outputs (0: none);
// out: the outcome.
enum Mailbox : int { kMbSlot, kMbOutAddress, kMbLseAddress, kMbOutId, kMbOutPtr, kMbLseId, kMbLsePtr, kMbSchedMetaRan, kMailboxSize };

// On the worker thread, device already selected. `major`/`minor`: the device's compute capability.
DecodeOutcome runDecode(DeviceContext& ctx, int major, int minor, const DecodeRequest& r);

}  // namespace fmla
