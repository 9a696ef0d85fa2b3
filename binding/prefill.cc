#include "prefill.h"

#include <cstring>
#include <initializer_list>
#include <string>
#include <tuple>
#include <utility>

#include "flashmla_params.h"
#include "js_values.h"
#include "launcher_call.h"

namespace fmla {

using namespace cuda_abi;
using flashmla_abi::Launcher;

namespace {

const char* const kPrefillOperandNames[kPrefillOperandCount] = {"q", "kv", "indices", "attnSink", "topkLength"};

constexpr std::size_t kAlign = 256;  // cudaMalloc alignment; covers TMA's 16 B and the 32-byte index loads
std::size_t alignUp(std::size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

void fail(const std::string& message) { throw NativeError("E_INTERNAL", "native last-line check: " + message); }

// What each prefill launcher asserts (csrc/sm90/prefill/sparse/phase1.cuh,
// csrc/sm100/prefill/sparse/fwd/head{64,128}/phase1.cuh,
// csrc/sm100/prefill/sparse/fwd_for_small_topk/head128/phase1.cuh; docs/cuda-path.md#prefill) and
// the architecture its kernels run on (the wrong one traps on the device).
struct PrefillRule {
  Launcher id;
  bool sm90;
  int dQK;
  int heads;         // h_q must equal this; 0: any multiple of 64 (sm90)
  int topkMultiple;
  int topkLength;    // 1: required, 0: absent (the sm90 template flag), -1: either
};

constexpr PrefillRule kPrefillRules[] = {
    {Launcher::Sm90PrefillK512, true, 512, 0, 128, 0},
    {Launcher::Sm90PrefillK512TopkLen, true, 512, 0, 128, 1},
    {Launcher::Sm90PrefillK576, true, 576, 0, 128, 0},
    {Launcher::Sm90PrefillK576TopkLen, true, 576, 0, 128, 1},
    {Launcher::Sm100PrefillH64K512, false, 512, 64, 64, -1},
    {Launcher::Sm100PrefillH64K576, false, 576, 64, 64, -1},
    {Launcher::Sm100PrefillH128K512, false, 512, 128, 128, -1},
    {Launcher::Sm100PrefillH128K576, false, 576, 128, 128, -1},
    {Launcher::Sm100PrefillSmallTopk, false, 512, 128, 64, -1},
};

const PrefillRule* ruleOf(Launcher id) {
  for (const PrefillRule& rule : kPrefillRules) {
    if (rule.id == id) return &rule;
  }
  return nullptr;
}

// Bytes a strided operand spans from element 0: 1 + Σ (size_d − 1)·stride_d elements.
int64_t spanBytes(std::initializer_list<std::pair<int64_t, int64_t>> sizeStride, int64_t elemBytes) {
  int64_t last = 0;
  for (auto [size, stride] : sizeStride) last += (size - 1) * stride;
  return (last + 1) * elemBytes;
}

// The conditions under which a prefill launcher ends the process, its kernels trap, or a host
// buffer would be read or written out of bounds. The TypeScript layer rejects all of them first
// with a precise FlashMLAError; reaching one here is a bug.
void lastLineChecks(const LoadedLibrary& lib, int major, int minor, const PrefillRequest& r) {
  const PrefillRule* rule = ruleOf(r.launcher);
  if (rule == nullptr) fail("not a prefill launcher");
  if (lib.launcher(r.launcher) == nullptr) throw NativeError("E_BACKEND", std::string("launcher ") + launcherKey(r.launcher) + " did not resolve");
  if (rule->sm90 ? !(major == 9 && minor == 0) : major != 10) fail(std::string(launcherKey(r.launcher)) + " runs on the other architecture");
  if (r.dQK != rule->dQK || r.dV != 512 || r.hKv != 1) fail("d_qk, d_v or h_kv do not match the launcher");
  if (rule->heads == 0 ? (r.hQ <= 0 || r.hQ % 64 != 0) : r.hQ != rule->heads) fail("h_q does not match the launcher");
  if (r.topk <= 0 || r.topk % rule->topkMultiple != 0) fail("topk is not a positive multiple of the launcher's block");
  const bool haveLength = r.ops[kPfTopkLength].present;
  if (rule->topkLength >= 0 && haveLength != (rule->topkLength == 1)) fail("topk_length does not match the sm90 launcher's template flag");
  if (r.sQ <= 0 || r.sKv <= 0 || static_cast<int64_t>(r.sQ) * r.hQ > INT32_MAX) fail("s_q, s_kv or s_q·h_q out of range");
  if (r.numSm <= 0) fail("num_sm must be positive");
  for (int s : {r.strideQS, r.strideQH, r.strideKvS, r.strideKvH, r.strideIndicesS, r.strideIndicesH}) {
    if (s < 0) fail("negative stride");
  }
  for (int i : {kPfQ, kPfKv, kPfIndices}) {
    if (!r.ops[i].present) fail(std::string(kPrefillOperandNames[i]) + " is required");
  }
  const int64_t need[kPrefillOperandCount] = {
      spanBytes({{r.sQ, r.strideQS}, {r.hQ, r.strideQH}, {r.dQK, 1}}, 2),
      spanBytes({{r.sKv, r.strideKvS}, {r.dQK, 1}}, 2),
      spanBytes({{r.sQ, r.strideIndicesS}, {r.topk, 1}}, 4),
      static_cast<int64_t>(r.hQ) * 4,
      static_cast<int64_t>(r.sQ) * 4,
  };
  for (int i = 0; i < kPrefillOperandCount; i++) {
    const OperandSource& s = r.ops[i];
    if (s.present && s.host != nullptr && static_cast<int64_t>(s.hostBytes) < need[i]) {
      fail(std::string("host operand ") + kPrefillOperandNames[i] + " is smaller than the kernel reads");
    }
  }
  const bool anyHostOut = r.hostOut != nullptr || r.hostMaxLogits != nullptr || r.hostLse != nullptr;
  if (anyHostOut) {
    const auto rows = static_cast<std::size_t>(r.sQ) * r.hQ;
    if (r.hostOut == nullptr || r.hostMaxLogits == nullptr || r.hostLse == nullptr) fail("host outputs go together");
    if (r.hostOutBytes != rows * r.dV * 2 || r.hostMaxLogitsBytes != rows * 4 || r.hostLseBytes != rows * 4) fail("host output buffers have the wrong size");
  }
}

// Where one call's host operands and host-bound outputs live in the instance's scratch memory.
struct PrefillWorkspace {
  std::size_t opAt[kPrefillOperandCount] = {};
  std::size_t outAt = 0, maxLogitsAt = 0, lseAt = 0;
  std::size_t total = 0;
};

PrefillWorkspace layoutWorkspace(const PrefillRequest& r) {
  PrefillWorkspace w;
  auto region = [&](std::size_t bytes) {
    const std::size_t at = w.total;
    w.total += alignUp(bytes);
    return at;
  };
  for (int i = 0; i < kPrefillOperandCount; i++) {
    if (r.ops[i].present && r.ops[i].host != nullptr) w.opAt[i] = region(r.ops[i].hostBytes);
  }
  if (r.hostOutputs()) {
    w.outAt = region(r.hostOutBytes);
    w.maxLogitsAt = region(r.hostMaxLogitsBytes);
    w.lseAt = region(r.hostLseBytes);
  }
  return w;
}

// Frees the pooled outputs of a call that did not complete.
struct PrefillOutputGuard {
  DeviceContext& ctx;
  PrefillOutcome& outcome;
  bool keep = false;
  ~PrefillOutputGuard() {
    if (keep) return;
    for (uint64_t id : {outcome.outId, outcome.maxLogitsId, outcome.lseId}) {
      if (id != 0) ctx.free(id);
    }
    outcome = PrefillOutcome{};
  }
};

// The one place SparseAttnFwdParams is filled, as csrc/api/sparse_fwd.h does: a zeroed struct,
// the shapes, float scales, operand pointers (null for an absent sink or topk_length), int strides,
// contiguous outputs, the SM count and the stream.
void launchPrefill(const DeviceContext& ctx, const PrefillRequest& r, uint8_t* const (&ptr)[kPrefillOperandCount], void* out,
                   void* maxLogits, void* lse) {
  SparseAttnFwdParams p;
  std::memset(&p, 0, sizeof p);
  p.s_q = r.sQ;
  p.s_kv = r.sKv;
  p.h_q = r.hQ;
  p.h_kv = r.hKv;
  p.d_qk = r.dQK;
  p.d_v = r.dV;
  p.topk = r.topk;
  p.sm_scale = r.smScale;
  p.sm_scale_div_log2 = r.smScaleLog2;
  p.q = reinterpret_cast<cutlass::bfloat16_t*>(ptr[kPfQ]);
  p.kv = reinterpret_cast<cutlass::bfloat16_t*>(ptr[kPfKv]);
  p.indices = reinterpret_cast<int*>(ptr[kPfIndices]);
  p.attn_sink = reinterpret_cast<float*>(ptr[kPfAttnSink]);
  p.topk_length = reinterpret_cast<int*>(ptr[kPfTopkLength]);
  p.stride_q_s_q = r.strideQS;
  p.stride_q_h_q = r.strideQH;
  p.stride_kv_s_kv = r.strideKvS;
  p.stride_kv_h_kv = r.strideKvH;
  p.stride_indices_s_q = r.strideIndicesS;
  p.stride_indices_h_kv = r.strideIndicesH;
  p.out = static_cast<cutlass::bfloat16_t*>(out);
  p.max_logits = static_cast<float*>(maxLogits);
  p.lse = static_cast<float*>(lse);
  p.num_sm = r.numSm;
  p.stream = ctx.stream();
  callLauncher(ctx, r.launcher, p);
}

}  // namespace

bool PrefillRequest::touchesHost() const {
  if (hostOutputs()) return true;
  for (const OperandSource& s : ops) {
    if (s.present && s.host != nullptr) return true;
  }
  return false;
}

PrefillRequest parsePrefillRequest(const Napi::Object& o, std::vector<Napi::Reference<Napi::Value>>& keepAlive) {
  PrefillRequest r;
  const int launcher = i32(o, "launcher");
  if (launcher < 0 || launcher >= static_cast<int>(Launcher::Count)) throw NativeError("E_INTERNAL", "launcher id out of range");
  r.launcher = static_cast<Launcher>(launcher);
  r.sQ = i32(o, "sQ");
  r.sKv = i32(o, "sKv");
  r.hQ = i32(o, "hQ");
  r.hKv = i32(o, "hKv");
  r.dQK = i32(o, "dQK");
  r.dV = i32(o, "dV");
  r.topk = i32(o, "topk");
  r.numSm = i32(o, "numSm");
  r.smScale = static_cast<float>(num(o, "smScale"));
  r.smScaleLog2 = static_cast<float>(num(o, "smScaleLog2"));
  r.strideQS = i32(o, "strideQS");
  r.strideQH = i32(o, "strideQH");
  r.strideKvS = i32(o, "strideKvS");
  r.strideKvH = i32(o, "strideKvH");
  r.strideIndicesS = i32(o, "strideIndicesS");
  r.strideIndicesH = i32(o, "strideIndicesH");
  readHostBuffer(o, "hostOut", r.hostOut, r.hostOutBytes, keepAlive);
  readHostBuffer(o, "hostMaxLogits", r.hostMaxLogits, r.hostMaxLogitsBytes, keepAlive);
  readHostBuffer(o, "hostLse", r.hostLse, r.hostLseBytes, keepAlive);
  Napi::Object ops = o.Get("operands").As<Napi::Object>();
  for (int i = 0; i < kPrefillOperandCount; i++) r.ops[i] = readOperand(ops.Get(kPrefillOperandNames[i]), kPrefillOperandNames[i], keepAlive);
  return r;
}

PrefillOutcome runPrefill(DeviceContext& ctx, int major, int minor, const PrefillRequest& r) {
  lastLineChecks(ctx.library(), major, minor, r);
  const PrefillWorkspace w = layoutWorkspace(r);
  auto* ws = w.total > 0 ? static_cast<uint8_t*>(ctx.scratch(w.total)) : nullptr;
  void* stream = ctx.stream();

  PrefillOutcome outcome;
  PrefillOutputGuard guard{ctx, outcome};
  const auto rows = static_cast<std::size_t>(r.sQ) * r.hQ;
  void* out;
  void* maxLogits;
  void* lse;
  if (r.hostOutputs()) {
    out = ws + w.outAt;
    maxLogits = ws + w.maxLogitsAt;
    lse = ws + w.lseAt;
  } else {
    std::tie(outcome.outId, outcome.outPtr) = ctx.allocatePooled(rows * r.dV * 2);
    std::tie(outcome.maxLogitsId, outcome.maxLogitsPtr) = ctx.allocatePooled(rows * sizeof(float));
    std::tie(outcome.lseId, outcome.lsePtr) = ctx.allocatePooled(rows * sizeof(float));
    out = outcome.outPtr;
    maxLogits = outcome.maxLogitsPtr;
    lse = outcome.lsePtr;
  }

  ctx.cuda().GetLastError();  // nothing stale may be blamed on this call's copies
  uint8_t* ptr[kPrefillOperandCount] = {};
  for (int i = 0; i < kPrefillOperandCount; i++) {
    const OperandSource& s = r.ops[i];
    if (!s.present) continue;
    if (s.host != nullptr) {
      ptr[i] = ws + w.opAt[i];
      ctx.check(ctx.cuda().MemcpyAsync(ptr[i], s.host, s.hostBytes, cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync (upload)");
    } else {
      ptr[i] = reinterpret_cast<uint8_t*>(s.device);
    }
  }
  // Graph capture (docs/cuda-path.md#graphs): the blocks a replay writes stay out of the pool while the graph lives.
  for (void* block : {outcome.outPtr, outcome.maxLogitsPtr, outcome.lsePtr}) {
    if (block != nullptr) ctx.pin(block);
  }
  launchPrefill(ctx, r, ptr, out, maxLogits, lse);
  if (r.hostOutputs()) {
    ctx.check(ctx.cuda().MemcpyAsync(r.hostOut, out, r.hostOutBytes, cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync (out download)");
    ctx.check(ctx.cuda().MemcpyAsync(r.hostMaxLogits, maxLogits, r.hostMaxLogitsBytes, cudaMemcpyDeviceToHost, stream),
              "cudaMemcpyAsync (max_logits download)");
    ctx.check(ctx.cuda().MemcpyAsync(r.hostLse, lse, r.hostLseBytes, cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync (lse download)");
    ctx.sync();
  }
  ctx.check(ctx.cuda().GetLastError(), "prefill");
  guard.keep = true;
  return outcome;
}

}  // namespace fmla
