#include "decode.h"

#include <cstring>
#include <string>

#include "flashmla_params.h"
#include "js_values.h"

namespace fmla {

using namespace cuda_abi;
using flashmla_abi::Launcher;

namespace {

const char* const kOperandNames[kOperandCount] = {"q", "kv", "blockTable", "seqlens", "indices",
                                                  "topkLength", "attnSink", "extraKv", "extraIndices", "extraTopkLength"};

constexpr std::size_t kAlign = 256;  // cudaMalloc alignment; covers TMA's 16 B and sched meta's 32 B
std::size_t alignUp(std::size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

const char* launcherKey(Launcher id) { return flashmla_abi::kLauncherSymbols[static_cast<int>(id)].key; }

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

// Clears a stale error so that a launcher's own check does not exit(1) on it (docs/flashmla-interface.md#pending-errors); a sticky
// error (the context is dead) cannot be cleared and stops the call.
void clearStaleError(const DeviceContext& ctx, Launcher before) {
  ctx.cuda().GetLastError();
  const int err = ctx.cuda().GetLastError();
  if (err != cudaSuccess) {
    throw NativeError("E_CUDA", std::string("the CUDA context is in an unrecoverable error state (") + ctx.cuda().describe(err) +
                                    "); not calling " + launcherKey(before) + ". Restart the process.", err);
  }
}

template <typename Params>
void callLauncher(const DeviceContext& ctx, Launcher id, Params& params) {
  clearStaleError(ctx, id);
  using Fn = void (*)(Params&);
  auto fn = reinterpret_cast<Fn>(ctx.library().launcher(id));
  try {
    fn(params);  // docs/flashmla-interface.md#launcher-checks: KU_ASSERT failures throw kerutils::KUException (a std::exception)
  } catch (const std::exception& e) {
    const int err = ctx.cuda().GetLastError();
    throw NativeError("E_CUDA", std::string("FlashMLA launcher ") + launcherKey(id) + " failed: " + e.what(), err);
  } catch (...) {
    const int err = ctx.cuda().GetLastError();
    throw NativeError("E_CUDA", std::string("FlashMLA launcher ") + launcherKey(id) + " threw a non-standard exception", err);
  }
  const int err = ctx.cuda().GetLastError();
  if (err != cudaSuccess) {
    throw NativeError("E_CUDA", std::string("FlashMLA launcher ") + launcherKey(id) + ": " + ctx.cuda().describe(err), err);
  }
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
  auto hostBuffer = [&](const char* name, void*& ptr, std::size_t& bytes) {
    Napi::Value v = o.Get(name);
    if (!v.IsTypedArray()) return;
    Napi::TypedArray t = v.As<Napi::TypedArray>();
    ptr = static_cast<uint8_t*>(t.ArrayBuffer().Data()) + t.ByteOffset();
    bytes = t.ByteLength();
    keepAlive.push_back(Napi::Persistent(v));
  };
  hostBuffer("hostOut", r.hostOut, r.hostOutBytes);
  hostBuffer("hostLse", r.hostLse, r.hostLseBytes);
  Napi::Object ops = o.Get("operands").As<Napi::Object>();
  for (int i = 0; i < kOperandCount; i++) {
    Napi::Value v = ops.Get(kOperandNames[i]);
    if (v.IsUndefined() || v.IsNull()) continue;
    OperandSource& s = r.ops[i];
    s.present = true;
    if (v.IsBigInt()) {
      s.device = address(v, kOperandNames[i]);
    } else if (v.IsTypedArray()) {
      Napi::TypedArray t = v.As<Napi::TypedArray>();
      s.host = static_cast<uint8_t*>(t.ArrayBuffer().Data()) + t.ByteOffset();
      s.hostBytes = t.ByteLength();
      keepAlive.push_back(Napi::Persistent(v));
    } else {
      throw NativeError("E_INTERNAL", std::string("operand ") + kOperandNames[i] + " is neither an address nor a typed array");
    }
  }
  if (!r.ops[kQ].present || !r.ops[kKv].present) throw NativeError("E_INTERNAL", "q and the KV cache are required");
  if ((r.hostOut == nullptr) != (r.hostLse == nullptr)) throw NativeError("E_INTERNAL", "hostOut and hostLse go together");
  return r;
}

DecodeOutcome runDecode(DeviceContext& ctx, int major, int minor, const DecodeRequest& r) {
  lastLineChecks(ctx.library(), major, minor, r);
  const CudaApi& cuda = ctx.cuda();
  void* const stream = ctx.stream();
  auto check = [&](int err, const char* what) { ctx.check(err, what); };

  // Buffer sizes (docs/flashmla-interface.md#dense-host-layer / docs/flashmla-interface.md#sparse-host-layer "Workspaces": T = b + P rows of split results).
  const std::size_t rows = static_cast<std::size_t>(r.b) * r.sQ * r.hQ;
  const std::size_t totalSplits = static_cast<std::size_t>(r.b) + r.numSmParts;
  const std::size_t outBytes = rows * 512 * r.elemBytes;
  const std::size_t lseBytes = rows * sizeof(float);
  const std::size_t lseAccumBytes = totalSplits * r.sQ * r.hQ * sizeof(float);
  const std::size_t oAccumBytes = totalSplits * r.sQ * r.hQ * 512 * sizeof(float);
  const std::size_t qReBytes = r.regroupQ ? rows * r.dQK * r.elemBytes : 0;
  const bool hostOutputs = r.hostOut != nullptr;
  if (hostOutputs && (r.hostOutBytes != outBytes || r.hostLseBytes != lseBytes)) fail("host output buffers have the wrong size");

  // Workspace layout: host operand uploads, q_re, raw out/lse, accumulators, host-bound outputs.
  std::size_t cursor = 0;
  std::size_t opOffset[kOperandCount] = {};
  for (int i = 0; i < kOperandCount; i++) {
    if (r.ops[i].present && r.ops[i].host != nullptr) {
      opOffset[i] = cursor;
      cursor += alignUp(r.ops[i].hostBytes);
    }
  }
  auto region = [&](std::size_t bytes) {
    const std::size_t at = cursor;
    cursor += alignUp(bytes);
    return at;
  };
  const std::size_t qReAt = region(qReBytes);
  const std::size_t outRawAt = region(r.outDirect ? 0 : outBytes);
  const std::size_t lseRawAt = region(r.lseDirect ? 0 : lseBytes);
  const std::size_t lseAccumAt = region(lseAccumBytes);
  const std::size_t oAccumAt = region(oAccumBytes);
  const std::size_t hostOutAt = region(hostOutputs ? outBytes : 0);
  const std::size_t hostLseAt = region(hostOutputs ? lseBytes : 0);
  auto* ws = static_cast<uint8_t*>(ctx.scratch(cursor));

  DecodeOutcome outcome;
  OutputGuard guard{ctx, outcome};
  uint8_t* out;
  uint8_t* lse;
  if (hostOutputs) {
    out = ws + hostOutAt;
    lse = ws + hostLseAt;
  } else {
    std::tie(outcome.outId, outcome.outPtr) = ctx.allocate(outBytes);
    std::tie(outcome.lseId, outcome.lsePtr) = ctx.allocate(lseBytes);
    out = static_cast<uint8_t*>(outcome.outPtr);
    lse = static_cast<uint8_t*>(outcome.lsePtr);
  }

  cuda.GetLastError();  // nothing stale may be blamed on this call's copies
  uint8_t* ptr[kOperandCount] = {};
  for (int i = 0; i < kOperandCount; i++) {
    const OperandSource& s = r.ops[i];
    if (!s.present) continue;
    if (s.host != nullptr) {
      ptr[i] = ws + opOffset[i];
      check(cuda.MemcpyAsync(ptr[i], s.host, s.hostBytes, cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync (upload)");
    } else {
      ptr[i] = reinterpret_cast<uint8_t*>(s.device);
    }
  }

  const int hpk = r.hQ / r.hK;
  const int qSeqPerHk = r.sQ * hpk;
  uint8_t* q = ptr[kQ];
  int64_t qRe[3] = {r.qReStrides[0], r.qReStrides[1], r.qReStrides[2]};
  if (r.regroupQ) {
    // docs/flashmla-interface.md#dense-host-layer q regrouping as a physical copy laid out (b, h_k, q_seq_per_hk, d):
    // q_re[b, k, s·hpk + j, :] = q[b, s, k·hpk + j, :].
    uint8_t* dst = ws + qReAt;
    const std::size_t row = static_cast<std::size_t>(r.dQK) * r.elemBytes;
    const bool headsAdjacent = r.qStrides[2] == r.dQK;
    for (int bi = 0; bi < r.b; bi++)
      for (int s = 0; s < r.sQ; s++)
        for (int k = 0; k < r.hK; k++) {
          const int64_t src = bi * r.qStrides[0] + s * r.qStrides[1] + static_cast<int64_t>(k) * hpk * r.qStrides[2];
          uint8_t* d = dst + ((static_cast<std::size_t>(bi) * r.hK + k) * qSeqPerHk + static_cast<std::size_t>(s) * hpk) * row;
          if (headsAdjacent) {
            check(cuda.MemcpyAsync(d, q + src * r.elemBytes, row * hpk, cudaMemcpyDeviceToDevice, stream), "cudaMemcpyAsync (q regroup)");
          } else {
            for (int j = 0; j < hpk; j++) {
              check(cuda.MemcpyAsync(d + j * row, q + (src + j * r.qStrides[2]) * r.elemBytes, row, cudaMemcpyDeviceToDevice, stream),
                    "cudaMemcpyAsync (q regroup)");
            }
          }
        }
    q = dst;
    qRe[0] = static_cast<int64_t>(r.hK) * qSeqPerHk * r.dQK;
    qRe[1] = r.dQK;
    qRe[2] = static_cast<int64_t>(qSeqPerHk) * r.dQK;
  }

  // Sched meta, computed once per FlashMLASchedMeta and kept on the device (docs/flashmla-interface.md#sched-meta-caching).
  SchedSlot& slot = ctx.slot(r.slot);
  if (slot.computed && (slot.numSmParts != r.numSmParts || slot.b != r.b)) {
    throw NativeError("E_SCHED_META", "schedMeta was computed for b = " + std::to_string(slot.b) + ", num_sm_parts = " +
                                          std::to_string(slot.numSmParts) + " on this device");
  }
  if (!slot.computed) {
    ctx.free(slot.metadataId);
    ctx.free(slot.numSplitsId);
    slot.metadataId = ctx.allocate(static_cast<std::size_t>(r.numSmParts) * sizeof(DecodingSchedMeta)).first;
    slot.numSplitsId = ctx.allocate((static_cast<std::size_t>(r.b) + 1) * sizeof(int)).first;
    GetDecodeSchedMetaParams p;
    std::memset(&p, 0, sizeof p);
    p.b = r.b;
    p.s_q = r.sQ;
    p.block_size_n = 64;
    p.fixed_overhead_num_blocks = r.fixedOverhead;
    p.topk = r.topk;
    p.extra_topk = r.extraTopk;
    p.topk_length = reinterpret_cast<int*>(ptr[kTopkLength]);
    p.extra_topk_length = reinterpret_cast<int*>(ptr[kExtraTopkLength]);
    p.seqlens_k_ptr = reinterpret_cast<int*>(ptr[kSeqlens]);
    p.tile_scheduler_metadata_ptr = static_cast<DecodingSchedMeta*>(ctx.pointer(slot.metadataId));
    p.num_splits_ptr = static_cast<int*>(ctx.pointer(slot.numSplitsId));
    p.num_sm_parts = r.numSmParts;
    p.stream = stream;
    callLauncher(ctx, Launcher::SchedMeta, p);
    slot.computed = true;
    slot.numSmParts = r.numSmParts;
    slot.b = r.b;
    outcome.schedMetaRan = true;
  }
  auto* meta = static_cast<DecodingSchedMeta*>(ctx.pointer(slot.metadataId));
  auto* numSplits = static_cast<int*>(ctx.pointer(slot.numSplitsId));

  uint8_t* outK = r.outDirect ? out : ws + outRawAt;  // what the kernels write
  auto* lseK = reinterpret_cast<float*>(r.lseDirect ? lse : ws + lseRawAt);
  auto* lseAccum = reinterpret_cast<float*>(ws + lseAccumAt);
  auto* oAccum = reinterpret_cast<float*>(ws + oAccumAt);
  const int hq512 = r.hQ * 512;

  if (r.dense) {
    // docs/flashmla-interface.md#dense-host-layer DenseAttnDecodeParams filling.
    DenseAttnDecodeParams p;
    std::memset(&p, 0, sizeof p);
    p.b = r.b;
    p.s_q = r.sQ;
    p.q_seq_per_hk = qSeqPerHk;
    p.d = r.dQK;
    p.d_v = r.dV;
    p.h_q = r.hQ;
    p.h_k = r.hK;
    p.num_blocks = r.numBlocks;
    p.q_head_per_hk = hpk;
    p.is_causal = r.causal;
    p.scale_softmax = r.scale;
    p.scale_softmax_log2 = r.scaleLog2;
    p.q_ptr = q;
    p.k_ptr = ptr[kKv];
    p.o_ptr = outK;
    p.softmax_lse_ptr = lseK;
    p.q_batch_stride = qRe[0];
    p.q_row_stride = qRe[1];
    p.q_head_stride = qRe[2];
    p.k_batch_stride = r.kStrides[0];
    p.k_row_stride = r.kStrides[1];
    p.k_head_stride = r.kStrides[2];
    p.o_batch_stride = static_cast<int64_t>(r.sQ) * hq512;  // out (b, h_k, q_seq_per_hk, 512) contiguous
    p.o_row_stride = 512;
    p.o_head_stride = static_cast<int64_t>(qSeqPerHk) * 512;
    p.block_table = reinterpret_cast<int*>(ptr[kBlockTable]);
    p.block_table_batch_stride = r.blockTableStride;
    p.page_block_size = r.pageBlockSize;
    p.seqlens_k_ptr = reinterpret_cast<int*>(ptr[kSeqlens]);
    p.tile_scheduler_metadata_ptr = meta;
    p.num_sm_parts = r.numSmParts;
    p.num_splits_ptr = numSplits;
    p.total_num_splits = static_cast<int>(totalSplits);
    p.softmax_lseaccum_ptr = lseAccum;
    p.oaccum_ptr = oAccum;
    p.stream = stream;
    callLauncher(ctx, r.main, p);
  } else {
    // docs/flashmla-interface.md#sparse-host-layer SparseAttnDecodeParams filling.
    SparseAttnDecodeParams p;
    std::memset(&p, 0, sizeof p);
    p.b = r.b;
    p.s_q = r.sQ;
    p.h_q = r.hQ;
    p.h_kv = 1;
    p.d_qk = r.dQK;
    p.d_v = r.dV;
    p.sm_scale = r.scale;
    p.sm_scale_div_log2 = r.scaleLog2;
    p.num_blocks = r.numBlocks;
    p.page_block_size = r.pageBlockSize;
    p.topk = r.topk;
    p.model_type = r.dQK == 576 ? V32 : MODEL1;
    p.q = reinterpret_cast<cutlass::bfloat16_t*>(q);
    p.kv = reinterpret_cast<cutlass::bfloat16_t*>(ptr[kKv]);
    p.indices = reinterpret_cast<int*>(ptr[kIndices]);
    p.topk_length = reinterpret_cast<int*>(ptr[kTopkLength]);
    p.attn_sink = reinterpret_cast<float*>(ptr[kAttnSink]);
    p.lse = lseK;
    p.out = reinterpret_cast<cutlass::bfloat16_t*>(outK);
    p.extra_num_blocks = r.extraNumBlocks;
    p.extra_page_block_size = r.extraPageBlockSize;
    p.extra_topk = r.extraTopk;
    p.extra_kv = reinterpret_cast<cutlass::bfloat16_t*>(ptr[kExtraKv]);
    p.extra_indices = reinterpret_cast<int*>(ptr[kExtraIndices]);
    p.extra_topk_length = reinterpret_cast<int*>(ptr[kExtraTopkLength]);
    p.stride_q_b = static_cast<int>(r.qStrides[0]);
    p.stride_q_s_q = static_cast<int>(r.qStrides[1]);
    p.stride_q_h_q = static_cast<int>(r.qStrides[2]);
    p.stride_kv_block = r.strideKvBlock;
    p.stride_kv_row = r.strideKvRow;
    p.stride_indices_b = r.strideIndices[0];
    p.stride_indices_s_q = r.strideIndices[1];
    p.stride_lse_b = r.sQ * r.hQ;  // lse (b, s_q, h_q) contiguous
    p.stride_lse_s_q = r.hQ;
    p.stride_o_b = r.sQ * hq512;   // out (b, s_q, h_q, 512) contiguous
    p.stride_o_s_q = hq512;
    p.stride_o_h_q = 512;
    p.stride_extra_kv_block = r.strideExtraKvBlock;
    p.stride_extra_kv_row = r.strideExtraKvRow;
    p.stride_extra_indices_b = r.strideExtraIndices[0];
    p.stride_extra_indices_s_q = r.strideExtraIndices[1];
    p.stream = stream;
    p.lse_accum = lseAccum;
    p.o_accum = oAccum;
    p.stride_lse_accum_split = r.sQ * r.hQ;
    p.stride_lse_accum_s_q = r.hQ;
    p.stride_o_accum_split = r.sQ * hq512;
    p.stride_o_accum_s_q = hq512;
    p.stride_o_accum_h_q = 512;
    p.tile_scheduler_metadata_ptr = meta;
    p.num_splits_ptr = numSplits;
    p.num_sm_parts = r.numSmParts;
    if (!r.twice) {
      callLauncher(ctx, r.main, p);
    } else {
      // docs/flashmla-interface.md#sparse-host-layer "Head64 ×2": heads 0–63 then 64–127, shifted pointers, shared sched meta.
      for (int start : {0, 64}) {
        SparseAttnDecodeParams half = p;
        half.q = p.q + static_cast<int64_t>(start) * p.stride_q_h_q;
        if (p.attn_sink != nullptr) half.attn_sink = p.attn_sink + start;
        half.lse = p.lse + start;
        half.out = p.out + static_cast<int64_t>(start) * p.stride_o_h_q;
        half.lse_accum = p.lse_accum + start;
        half.o_accum = p.o_accum + static_cast<int64_t>(start) * p.stride_o_accum_h_q;
        half.h_q = 64;
        callLauncher(ctx, r.main, half);
      }
    }
  }

  // Combine, on the same stream right after the main kernel(s) (docs/flashmla-interface.md#stream-order), flat strides.
  CombineParams c;
  std::memset(&c, 0, sizeof c);
  c.b = r.b;
  c.s_q = r.sQ;
  c.h_q = r.hQ;
  c.d_v = r.dV;
  c.lse = lseK;
  c.out = outK;
  c.stride_lse_b = r.sQ * r.hQ;
  c.stride_lse_s_q = r.hQ;
  c.stride_o_b = r.sQ * hq512;
  c.stride_o_s_q = hq512;
  c.stride_o_h_q = 512;
  c.lse_accum = lseAccum;
  c.o_accum = oAccum;
  c.stride_lse_accum_split = r.sQ * r.hQ;
  c.stride_lse_accum_s_q = r.hQ;
  c.stride_o_accum_split = r.sQ * hq512;
  c.stride_o_accum_s_q = hq512;
  c.stride_o_accum_h_q = 512;
  c.tile_scheduler_metadata_ptr = meta;
  c.num_splits_ptr = numSplits;
  c.num_sm_parts = r.numSmParts;
  c.attn_sink = r.dense ? nullptr : reinterpret_cast<float*>(ptr[kAttnSink]);
  c.stream = stream;
  callLauncher(ctx, r.combine, c);

  if (!r.outDirect) {
    // docs/flashmla-interface.md#dense-host-layer step 4: out[b, s, k·hpk + j] = out_raw[b, k, s·hpk + j].
    const std::size_t row = 512 * static_cast<std::size_t>(r.elemBytes);
    const uint8_t* raw = ws + outRawAt;
    for (int bi = 0; bi < r.b; bi++)
      for (int k = 0; k < r.hK; k++)
        for (int s = 0; s < r.sQ; s++) {
          const std::size_t from = (static_cast<std::size_t>(bi) * r.hK + k) * qSeqPerHk + static_cast<std::size_t>(s) * hpk;
          const std::size_t to = (static_cast<std::size_t>(bi) * r.sQ + s) * r.hQ + static_cast<std::size_t>(k) * hpk;
          check(cuda.MemcpyAsync(out + to * row, raw + from * row, row * hpk, cudaMemcpyDeviceToDevice, stream),
                "cudaMemcpyAsync (out reshape)");
        }
  }
  if (!r.lseDirect) {
    // lse[b, k·hpk + j, s] = lse_raw[b, k·q_seq_per_hk + s·hpk + j] (docs/flashmla-interface.md#dense-host-layer step 4; sparse is the
    // h_k = 1 case). A small transposition, done on the host: the addon has no kernels of its own.
    std::vector<float> raw(rows), pub(rows);
    check(cuda.MemcpyAsync(raw.data(), lseK, lseBytes, cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync (lse)");
    ctx.sync();
    for (int bi = 0; bi < r.b; bi++)
      for (int k = 0; k < r.hK; k++)
        for (int s = 0; s < r.sQ; s++)
          for (int j = 0; j < hpk; j++) {
            const std::size_t base = static_cast<std::size_t>(bi) * r.sQ * r.hQ;
            pub[base + (static_cast<std::size_t>(k) * hpk + j) * r.sQ + s] = raw[base + static_cast<std::size_t>(k) * qSeqPerHk + s * hpk + j];
          }
    if (hostOutputs) {
      std::memcpy(r.hostLse, pub.data(), lseBytes);
    } else {
      check(cuda.MemcpyAsync(lse, pub.data(), lseBytes, cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync (lse)");
      ctx.sync();  // `pub` is a pageable stack-owned buffer
    }
  } else if (hostOutputs) {
    check(cuda.MemcpyAsync(r.hostLse, lse, lseBytes, cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync (lse download)");
  }
  if (hostOutputs) {
    check(cuda.MemcpyAsync(r.hostOut, out, outBytes, cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync (out download)");
  }
  ctx.sync();
  check(cuda.GetLastError(), "decode");
  guard.keep = true;
  return outcome;
}

}  // namespace fmla
