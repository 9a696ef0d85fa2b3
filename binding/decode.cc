#include "decode.h"

#include <cstring>
#include <string>

#include "decode_buffers.h"
#include "flashmla_params.h"
#include "js_values.h"
#include "launcher_call.h"

namespace fmla {

using namespace cuda_abi;
using flashmla_abi::Launcher;

namespace {

const char* const kOperandNames[kOperandCount] = {"q", "kv", "blockTable", "seqlens", "indices",
                                                  "topkLength", "attnSink", "extraKv", "extraIndices", "extraTopkLength"};

constexpr std::size_t kAlign = 256;  // cudaMalloc alignment; covers TMA's 16 B and sched meta's 32 B
std::size_t alignUp(std::size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

void fail(const std::string& message) { throw NativeError("E_INTERNAL", "native last-line check: " + message); }

// The conditions under which a launcher ends the process or poisons the context. The TypeScript
// host layer rejects all of them first with a precise FlashMLAError; reaching one here is a bug.
void lastLineChecks(const LoadedLibrary& lib, int major, int minor, const DecodeRequest& r) {
  for (Launcher id : {r.main, r.combine, Launcher::SchedMeta}) {
    if (lib.launcher(id) == nullptr) throw NativeError("E_BACKEND", std::string("launcher ") + launcherKey(id) + " did not resolve");
  }
  const bool sm90 = major == 9 && minor == 0, sm100 = major == 10;
  switch (r.main) {  // docs/flashmla-interface.md#wrong-arch: the wrong arch traps on the device
    case Launcher::DenseBf16:
    case Launcher::DenseFp16:
      if (!sm90) fail("dense decode needs compute capability 9.0");
      if (r.dQK != 576 || r.dV != 512) fail("dense decode needs d_qk 576, d_v 512");
      break;
    case Launcher::Sm90SparseV32H64:
    case Launcher::Sm90SparseModel1H64:
    case Launcher::Sm90SparseV32H128:
    case Launcher::Sm90SparseModel1H128: {
      if (!sm90) fail("sm90 sparse decode needs compute capability 9.0");
      const int heads = (r.main == Launcher::Sm90SparseV32H64 || r.main == Launcher::Sm90SparseModel1H64) ? 64 : 128;
      if (r.hQ != heads) fail("NUM_HEADS != h_q");
      break;
    }
    case Launcher::Sm100Head64V32:
    case Launcher::Sm100Head64Model1:
      if (!sm100) fail("sm100 decode needs compute capability 10.x");
      if (r.hQ != (r.twice ? 128 : 64)) fail("head64 needs h_q 64 (or 128 run twice)");
      break;
    case Launcher::Sm100Head128Model1:
      if (!sm100) fail("sm100 decode needs compute capability 10.x");
      if (r.hQ != 128 || r.qStrides[1] == 0) fail("head128 needs h_q 128 and stride_q_s_q != 0");
      break;
    default:
      fail("not a main decode launcher");
  }
  if (r.combine != Launcher::CombineBf16 && r.combine != Launcher::CombineFp16) fail("not a combine launcher");
  if (r.dV != 512) fail("d_v must be 512 (combine exits otherwise)");
  if (r.numSmParts < 1 || r.numSmParts > 160) fail("num_sm_parts must be in [1, 160] (combine exits otherwise)");
  if (4LL * (5LL * r.b + 1) > 227LL * 1024) fail("batch too large for the sched-meta kernel's shared memory");
  const int64_t t = static_cast<int64_t>(r.b) + r.numSmParts;
  if (t * r.sQ * r.hQ * 512 >= (int64_t{1} << 31)) fail("(b + P)·s_q·h_q·512 must stay below 2^31");
}

// Frees the device outputs of a call that did not complete.
struct OutputGuard {
  DeviceContext& ctx;
  DecodeOutcome& outcome;
  bool keep = false;
  ~OutputGuard() {
    if (keep) return;
    if (outcome.outId != 0) ctx.free(outcome.outId);
    if (outcome.lseId != 0) ctx.free(outcome.lseId);
    outcome.outId = outcome.lseId = 0;
  }
};

}  // namespace

DecodeRequest parseDecodeRequest(const Napi::Object& o, std::vector<Napi::Reference<Napi::Value>>& keepAlive) {
  DecodeRequest r;
  r.dense = flag(o, "dense");
  const int main = i32(o, "mainLauncher"), combine = i32(o, "combineLauncher");
  if (main < 0 || main >= static_cast<int>(Launcher::Count) || combine < 0 || combine >= static_cast<int>(Launcher::Count)) {
    throw NativeError("E_INTERNAL", "launcher id out of range");
  }
  r.main = static_cast<Launcher>(main);
  r.combine = static_cast<Launcher>(combine);
  r.twice = flag(o, "twice");
  r.slot = static_cast<uint64_t>(i64(o, "slot"));
  r.b = i32(o, "b");
  r.sQ = i32(o, "sQ");
  r.hQ = i32(o, "hQ");
  r.hK = i32(o, "hK");
  r.dQK = i32(o, "dQK");
  r.dV = i32(o, "dV");
  r.numSmParts = i32(o, "numSmParts");
  r.fixedOverhead = i32(o, "fixedOverhead");
  r.topk = i32(o, "topk");
  r.extraTopk = i32(o, "extraTopk");
  r.scale = static_cast<float>(num(o, "scale"));
  r.scaleLog2 = static_cast<float>(num(o, "scaleLog2"));
  r.causal = flag(o, "causal");
  r.numBlocks = i32(o, "numBlocks");
  r.pageBlockSize = i32(o, "pageBlockSize");
  r.extraNumBlocks = i32(o, "extraNumBlocks");
  r.extraPageBlockSize = i32(o, "extraPageBlockSize");
  r.elemBytes = i32(o, "elemBytes");
  auto triple = [&](const char* name, int64_t (&dst)[3]) {
    Napi::Array a = o.Get(name).As<Napi::Array>();
    for (uint32_t i = 0; i < 3; i++) dst[i] = static_cast<int64_t>(a.Get(i).As<Napi::Number>().DoubleValue());
  };
  triple("qStrides", r.qStrides);
  r.regroupQ = flag(o, "regroupQ");
  triple("qReStrides", r.qReStrides);
  triple("kStrides", r.kStrides);
  r.blockTableStride = i64(o, "blockTableStride");
  r.strideKvBlock = i32(o, "strideKvBlock");
  r.strideKvRow = i32(o, "strideKvRow");
  r.strideIndices[0] = i32(o, "strideIndicesB");
  r.strideIndices[1] = i32(o, "strideIndicesS");
  r.strideExtraKvBlock = i32(o, "strideExtraKvBlock");
  r.strideExtraKvRow = i32(o, "strideExtraKvRow");
  r.strideExtraIndices[0] = i32(o, "strideExtraIndicesB");
  r.strideExtraIndices[1] = i32(o, "strideExtraIndicesS");
  r.outDirect = flag(o, "outDirect");
  r.lseDirect = flag(o, "lseDirect");
  auto optionalAddress = [&](const char* name) -> uint64_t {
    Napi::Value v = o.Get(name);
    return v.IsUndefined() || v.IsNull() ? 0 : address(v, name);
  };
  r.outAddress = optionalAddress("outAddress");
  r.lseAddress = optionalAddress("lseAddress");
  readHostBuffer(o, "hostOut", r.hostOut, r.hostOutBytes, keepAlive);
  readHostBuffer(o, "hostLse", r.hostLse, r.hostLseBytes, keepAlive);
  Napi::Object ops = o.Get("operands").As<Napi::Object>();
  for (int i = 0; i < kOperandCount; i++) r.ops[i] = readOperand(ops.Get(kOperandNames[i]), kOperandNames[i], keepAlive);
  if (!r.ops[kQ].present || !r.ops[kKv].present) throw NativeError("E_INTERNAL", "q and the KV cache are required");
  if ((r.hostOut == nullptr) != (r.hostLse == nullptr)) throw NativeError("E_INTERNAL", "hostOut and hostLse go together");
  if (r.hostOut != nullptr && (r.outAddress != 0 || r.lseAddress != 0)) throw NativeError("E_INTERNAL", "host outputs cannot be preallocated");
  return r;
}

namespace {

// Where everything of one call lives in the instance's scratch memory: host operand uploads, the
// regrouped q, raw out/lse (when the kernels cannot write the public layouts), the split
// accumulators (T = b + P rows, docs/flashmla-interface.md#workspaces), and host-bound outputs.
struct WorkspaceLayout {
  std::size_t rows = 0, totalSplits = 0, outBytes = 0, lseBytes = 0;
  std::size_t opAt[kOperandCount] = {};
  std::size_t qReAt = 0, outRawAt = 0, lseRawAt = 0, lseAccumAt = 0, oAccumAt = 0, hostOutAt = 0, hostLseAt = 0;
  std::size_t total = 0;
};

WorkspaceLayout layoutWorkspace(const DecodeRequest& r) {
  WorkspaceLayout w;
  w.rows = static_cast<std::size_t>(r.b) * r.sQ * r.hQ;
  w.totalSplits = static_cast<std::size_t>(r.b) + r.numSmParts;
  w.outBytes = w.rows * 512 * r.elemBytes;
  w.lseBytes = w.rows * sizeof(float);
  const bool hostOutputs = r.hostOut != nullptr;
  if (hostOutputs && (r.hostOutBytes != w.outBytes || r.hostLseBytes != w.lseBytes)) fail("host output buffers have the wrong size");
  auto region = [&](std::size_t bytes) {
    const std::size_t at = w.total;
    w.total += alignUp(bytes);
    return at;
  };
  for (int i = 0; i < kOperandCount; i++) {
    if (r.ops[i].present && r.ops[i].host != nullptr) w.opAt[i] = region(r.ops[i].hostBytes);
  }
  w.qReAt = region(r.regroupQ ? w.rows * r.dQK * r.elemBytes : 0);
  w.outRawAt = region(r.outDirect ? 0 : w.outBytes);
  w.lseRawAt = region(r.lseDirect ? 0 : w.lseBytes);
  w.lseAccumAt = region(w.totalSplits * r.sQ * r.hQ * sizeof(float));
  w.oAccumAt = region(w.totalSplits * r.sQ * r.hQ * 512 * sizeof(float));
  w.hostOutAt = region(hostOutputs ? w.outBytes : 0);
  w.hostLseAt = region(hostOutputs ? w.lseBytes : 0);
  return w;
}

// Host operands are copied into the workspace on the stream; device operands are used in place.
void uploadOperands(DeviceContext& ctx, const DecodeRequest& r, const WorkspaceLayout& w, uint8_t* ws, DecodeBuffers& d) {
  for (int i = 0; i < kOperandCount; i++) {
    const OperandSource& s = r.ops[i];
    if (!s.present) continue;
    if (s.host != nullptr) {
      d.ptr[i] = ws + w.opAt[i];
      ctx.check(ctx.cuda().MemcpyAsync(d.ptr[i], s.host, s.hostBytes, cudaMemcpyHostToDevice, d.stream), "cudaMemcpyAsync (upload)");
    } else {
      d.ptr[i] = reinterpret_cast<uint8_t*>(s.device);
    }
  }
}

// Dense h_k > 1 with s_q > 1: q regrouped as a physical copy laid out (b, h_k, q_seq_per_hk, d),
// q_re[b, k, s·hpk + j, :] = q[b, s, k·hpk + j, :] (docs/flashmla-interface.md#q-regrouping);
// otherwise q_re is a view with the strides the host layer computed.
void regroupQ(DeviceContext& ctx, const DecodeRequest& r, const WorkspaceLayout& w, uint8_t* ws, DecodeBuffers& d) {
  d.q = d.ptr[kQ];
  for (int i = 0; i < 3; i++) d.qStrides[i] = r.qReStrides[i];
  if (!r.regroupQ) return;
  const int hpk = r.hQ / r.hK;
  const int qSeqPerHk = r.sQ * hpk;
  uint8_t* dst = ws + w.qReAt;
  const std::size_t row = static_cast<std::size_t>(r.dQK) * r.elemBytes;
  const bool headsAdjacent = r.qStrides[2] == r.dQK;
  for (int bi = 0; bi < r.b; bi++)
    for (int s = 0; s < r.sQ; s++)
      for (int k = 0; k < r.hK; k++) {
        const int64_t src = bi * r.qStrides[0] + s * r.qStrides[1] + static_cast<int64_t>(k) * hpk * r.qStrides[2];
        uint8_t* to = dst + ((static_cast<std::size_t>(bi) * r.hK + k) * qSeqPerHk + static_cast<std::size_t>(s) * hpk) * row;
        if (headsAdjacent) {
          ctx.check(ctx.cuda().MemcpyAsync(to, d.q + src * r.elemBytes, row * hpk, cudaMemcpyDeviceToDevice, d.stream), "cudaMemcpyAsync (q regroup)");
        } else {
          for (int j = 0; j < hpk; j++) {
            ctx.check(ctx.cuda().MemcpyAsync(to + j * row, d.q + (src + j * r.qStrides[2]) * r.elemBytes, row, cudaMemcpyDeviceToDevice, d.stream),
                      "cudaMemcpyAsync (q regroup)");
          }
        }
      }
  d.q = dst;
  d.qStrides[0] = static_cast<int64_t>(r.hK) * qSeqPerHk * r.dQK;
  d.qStrides[1] = r.dQK;
  d.qStrides[2] = static_cast<int64_t>(qSeqPerHk) * r.dQK;
}

// The tile-scheduler metadata, computed once per FlashMLASchedMeta and kept on the device
// (docs/flashmla-interface.md#sched-meta-caching). Returns whether the scheduler ran.
bool ensureSchedMeta(DeviceContext& ctx, const DecodeRequest& r, DecodeBuffers& d) {
  SchedSlot& slot = ctx.slot(r.slot);
  if (slot.computed && (slot.numSmParts != r.numSmParts || slot.b != r.b)) {
    throw NativeError("E_SCHED_META", "schedMeta was computed for b = " + std::to_string(slot.b) + ", num_sm_parts = " +
                                          std::to_string(slot.numSmParts) + " on this device");
  }
  const bool ran = !slot.computed;
  if (ran) {
    ctx.free(slot.metadataId);
    ctx.free(slot.numSplitsId);
    slot.metadataId = ctx.allocatePooled(static_cast<std::size_t>(r.numSmParts) * sizeof(DecodingSchedMeta)).first;
    slot.numSplitsId = ctx.allocatePooled((static_cast<std::size_t>(r.b) + 1) * sizeof(int)).first;
    GetDecodeSchedMetaParams p;
    std::memset(&p, 0, sizeof p);
    p.b = r.b;
    p.s_q = r.sQ;
    p.block_size_n = 64;
    p.fixed_overhead_num_blocks = r.fixedOverhead;
    p.topk = r.topk;
    p.extra_topk = r.extraTopk;
    p.topk_length = reinterpret_cast<int*>(d.ptr[kTopkLength]);
    p.extra_topk_length = reinterpret_cast<int*>(d.ptr[kExtraTopkLength]);
    p.seqlens_k_ptr = reinterpret_cast<int*>(d.ptr[kSeqlens]);
    p.tile_scheduler_metadata_ptr = static_cast<DecodingSchedMeta*>(ctx.pointer(slot.metadataId));
    p.num_splits_ptr = static_cast<int*>(ctx.pointer(slot.numSplitsId));
    p.num_sm_parts = r.numSmParts;
    p.stream = d.stream;
    callLauncher(ctx, Launcher::SchedMeta, p);
    slot.computed = true;
    ctx.noteCapturedSlot(r.slot);
    slot.numSmParts = r.numSmParts;
    slot.b = r.b;
  }
  d.meta = static_cast<DecodingSchedMeta*>(ctx.pointer(slot.metadataId));
  d.numSplits = static_cast<int*>(ctx.pointer(slot.numSplitsId));
  return ran;
}

// The combine, on the same stream right after the main kernel(s), with flat strides
// (docs/flashmla-interface.md#combine).
void launchCombine(const DeviceContext& ctx, const DecodeRequest& r, const DecodeBuffers& d) {
  CombineParams c;
  std::memset(&c, 0, sizeof c);
  c.lse = d.lse;
  c.out = d.out;
  fillSplitOutputs(c, r, d);
  c.attn_sink = r.dense ? nullptr : reinterpret_cast<float*>(d.ptr[kAttnSink]);
  callLauncher(ctx, r.combine, c);
}

// The public layouts (docs/flashmla-interface.md#dense-output-reshape): out[b, s, k·hpk + j] =
// out_raw[b, k, s·hpk + j] and lse[b, k·hpk + j, s] = lse_raw[b, k·q_seq_per_hk + s·hpk + j], as
// device-to-device copies on the stream (the lse transposition as strided 2-D copies: the addon has
// no kernels of its own, and nothing here waits for the device); then the downloads of host-bound
// outputs. Only dense calls with h_k > 1 need either: with one kv head the kernels' lse is returned as
// a view (src/cuda/host-layer.ts lseStrides, docs/cuda-path.md#output-layouts).
void finishOutputs(DeviceContext& ctx, const DecodeRequest& r, const WorkspaceLayout& w, uint8_t* ws, uint8_t* out, uint8_t* lse,
                   const DecodeBuffers& d) {
  const CudaApi& cuda = ctx.cuda();
  const int hpk = r.hQ / r.hK;
  const int qSeqPerHk = r.sQ * hpk;
  if (!r.outDirect) {
    const std::size_t row = 512 * static_cast<std::size_t>(r.elemBytes);
    const uint8_t* raw = ws + w.outRawAt;
    for (int bi = 0; bi < r.b; bi++)
      for (int k = 0; k < r.hK; k++)
        for (int s = 0; s < r.sQ; s++) {
          const std::size_t from = (static_cast<std::size_t>(bi) * r.hK + k) * qSeqPerHk + static_cast<std::size_t>(s) * hpk;
          const std::size_t to = (static_cast<std::size_t>(bi) * r.sQ + s) * r.hQ + static_cast<std::size_t>(k) * hpk;
          ctx.check(cuda.MemcpyAsync(out + to * row, raw + from * row, row * hpk, cudaMemcpyDeviceToDevice, d.stream), "cudaMemcpyAsync (out reshape)");
        }
  }
  if (!r.lseDirect) {
    const auto* raw = reinterpret_cast<const float*>(ws + w.lseRawAt);
    auto* pub = reinterpret_cast<float*>(lse);
    for (int bi = 0; bi < r.b; bi++)
      for (int k = 0; k < r.hK; k++)
        for (int s = 0; s < r.sQ; s++) {
          const std::size_t base = static_cast<std::size_t>(bi) * r.sQ * r.hQ;
          // hpk values, contiguous in lse_raw, to a column of lse (a stride of s_q floats).
          ctx.check(cuda.Memcpy2DAsync(pub + base + static_cast<std::size_t>(k) * hpk * r.sQ + s, sizeof(float) * r.sQ,
                                       raw + base + static_cast<std::size_t>(k) * qSeqPerHk + static_cast<std::size_t>(s) * hpk, sizeof(float),
                                       sizeof(float), hpk, cudaMemcpyDeviceToDevice, d.stream),
                    "cudaMemcpy2DAsync (lse transpose)");
        }
  }
  if (r.hostOut != nullptr) {
    ctx.check(cuda.MemcpyAsync(r.hostLse, lse, w.lseBytes, cudaMemcpyDeviceToHost, d.stream), "cudaMemcpyAsync (lse download)");
    ctx.check(cuda.MemcpyAsync(r.hostOut, out, w.outBytes, cudaMemcpyDeviceToHost, d.stream), "cudaMemcpyAsync (out download)");
  }
}

}  // namespace

DecodeOutcome runDecode(DeviceContext& ctx, int major, int minor, const DecodeRequest& r) {
  lastLineChecks(ctx.library(), major, minor, r);
  const WorkspaceLayout w = layoutWorkspace(r);
  auto* ws = static_cast<uint8_t*>(ctx.scratch(w.total));

  DecodeOutcome outcome;
  OutputGuard guard{ctx, outcome};
  uint8_t* out;
  uint8_t* lse;
  if (r.hostOut != nullptr) {
    out = ws + w.hostOutAt;
    lse = ws + w.hostLseAt;
  } else {
    // Preallocated outputs (checked by the TypeScript layer: this instance's live device tensors
    // of the call's shape and dtype), else blocks of the pool.
    if (r.outAddress != 0) outcome.outPtr = reinterpret_cast<void*>(r.outAddress);
    else std::tie(outcome.outId, outcome.outPtr) = ctx.allocatePooled(w.outBytes);
    if (r.lseAddress != 0) outcome.lsePtr = reinterpret_cast<void*>(r.lseAddress);
    else std::tie(outcome.lseId, outcome.lsePtr) = ctx.allocatePooled(w.lseBytes);
    out = static_cast<uint8_t*>(outcome.outPtr);
    lse = static_cast<uint8_t*>(outcome.lsePtr);
  }

  ctx.cuda().GetLastError();  // nothing stale may be blamed on this call's copies
  DecodeBuffers d;
  d.stream = ctx.stream();
  d.totalSplits = w.totalSplits;
  uploadOperands(ctx, r, w, ws, d);
  regroupQ(ctx, r, w, ws, d);
  outcome.schedMetaRan = ensureSchedMeta(ctx, r, d);
  // Graph capture: the blocks a replay will use stay out of the pool while the graph lives.
  ctx.pin(ws);
  ctx.pin(d.meta);
  ctx.pin(d.numSplits);
  if (outcome.outId != 0) ctx.pin(out);
  if (outcome.lseId != 0) ctx.pin(lse);
  d.out = r.outDirect ? out : ws + w.outRawAt;
  d.lse = reinterpret_cast<float*>(r.lseDirect ? lse : ws + w.lseRawAt);
  d.lseAccum = reinterpret_cast<float*>(ws + w.lseAccumAt);
  d.oAccum = reinterpret_cast<float*>(ws + w.oAccumAt);
  if (r.dense) launchDense(ctx, r, d);
  else launchSparse(ctx, r, d);
  launchCombine(ctx, r, d);
  finishOutputs(ctx, r, w, ws, out, lse, d);
  // Host-bound outputs are complete only once the stream has passed the downloads; device outputs
  // are stream-ordered like everything else, so nothing waits for them.
  if (r.hostOut != nullptr) ctx.sync();
  ctx.check(ctx.cuda().GetLastError(), "decode");
  guard.keep = true;
  return outcome;
}

}  // namespace fmla
