// smxx::decode::run_get_decoding_sched_meta_kernel: FlashMLA's tile scheduler (docs/flashmla-interface.md#tile-scheduler),
// emulated the way the single-warp kernel computes it, shared-memory layout included, because the
// leftover parts read past the end of one shared array into the next (docs/flashmla-interface.md#scheduler-leftover).
#include <cstdint>
#include <string>
#include <vector>

#include "launch.h"
#include "launchers.h"

namespace emu {
namespace {

constexpr int kMaxDynamicSmemBytes = 227 * 1024;  // sm90/sm100 opt-in limit

// The kernel's dynamic shared memory: 5b+1 ints holding, in order, num_blocks[b],
// num_splits[b+1], seqlens[b], first_block[b], last_block[b]. Reads outside it return 0 (they do
// not happen for b >= 1).
class SchedSmem {
 public:
  explicit SchedSmem(int b) : b_(b), words_(static_cast<std::size_t>(5 * b + 1), 0) {}
  int& numBlocks(int i) { return at(i); }
  int& numSplits(int i) { return at(b_ + i); }
  int& seqlen(int i) { return at(2 * b_ + 1 + i); }
  int& firstBlock(int i) { return at(3 * b_ + 1 + i); }  // firstBlock(b) aliases lastBlock(0)
  int& lastBlock(int i) { return at(4 * b_ + 1 + i); }

 private:
  int& at(int w) {
    if (w < 0 || w >= static_cast<int>(words_.size())) {
      outside_ = 0;
      return outside_;
    }
    return words_[static_cast<std::size_t>(w)];
  }
  int b_;
  std::vector<int> words_;
  int outside_ = 0;
};

int ceilTo(int x, int m) { return (x + m - 1) / m * m; }

void schedMetaKernel(KernelScope& k, const GetDecodeSchedMetaParams& p) {
  const int b = p.b;
  const int bs = p.block_size_n;
  const int F = p.fixed_overhead_num_blocks;
  SchedSmem sm(b);

  // Per-request lengths (docs/flashmla-interface.md#tile-scheduler): dense = seqlens_k; sparse = topk_length or topk, forced to
  // >= 1, plus the extra list after rounding the main one up to a whole block.
  int total = 0;
  for (int i = 0; i < b; ++i) {
    int len;
    if (p.topk == -1) {
      len = k.load<int>(p.seqlens_k_ptr + i);
    } else {
      len = p.topk_length != nullptr ? k.load<int>(p.topk_length + i) : p.topk;
      if (len == 0) len = 1;
      if (p.extra_topk != 0) {
        len = ceilTo(len, bs);
        len += p.extra_topk_length != nullptr ? k.load<int>(p.extra_topk_length + i) : p.extra_topk;
      }
    }
    sm.seqlen(i) = len;
    int first = 0;
    int last = (len - 1 > 0 ? len - 1 : 0) / bs;
    sm.firstBlock(i) = first;
    sm.lastBlock(i) = last;
    sm.numBlocks(i) = last - first + 1;  // a zero-length request still counts one block
    total += sm.numBlocks(i) + F;
  }

  int req = 0, block = 0, splitOrdinal = 0, cumSplits = 0;
  sm.numSplits(0) = 0;
  if (p.num_sm_parts > 0) {
    const int payload = (total + p.num_sm_parts - 1) / p.num_sm_parts + F;
    for (int part = 0; part < p.num_sm_parts; ++part) {
      DecodingSchedMeta m;
      std::memset(&m, 0xFF, sizeof m);  // _pad stays "uninitialised"
      m.begin_req_idx = req;
      m.begin_block_idx = block + sm.firstBlock(req);  // for req == b: lastBlock(0)
      m.begin_split_idx = splitOrdinal;
      m.is_first_req_splitted = block != 0;
      int budget = payload;
      while (req < b) {
        int remaining = sm.numBlocks(req) - block;
        if (budget >= remaining + F) {
          cumSplits += splitOrdinal + 1;
          sm.numSplits(req + 1) = cumSplits;
          budget -= remaining + F;
          ++req;
          block = 0;
          splitOrdinal = 0;
        } else {
          if (budget - F > 0) {
            block += budget - F;
            ++splitOrdinal;
          }
          break;
        }
      }
      m.end_req_idx = block > 0 ? req : req - 1;
      m.end_block_idx = block > 0 ? block + sm.firstBlock(req)
                                  : (sm.seqlen(req - 1) == 0 ? 0 : sm.lastBlock(req - 1) + 1);
      m.is_last_req_splitted =
          m.end_block_idx != sm.lastBlock(m.end_req_idx) + 1 && sm.seqlen(m.end_req_idx) != 0;
      if (m.begin_req_idx == m.end_req_idx) {
        m.is_first_req_splitted = m.is_last_req_splitted = m.is_first_req_splitted || m.is_last_req_splitted;
      }
      k.write(p.tile_scheduler_metadata_ptr + part, sizeof m, &m);
    }
  }
  // FLASH_DEVICE_ASSERT: the cursor must end exactly after the last request.
  if (!(req == b && block == 0 && splitOrdinal == 0)) {
    k.trap("sched-meta consistency assert (now_req_idx == batch_size && now_block == 0 && now_n_split_idx == 0)");
  }
  for (int i = 0; i <= b; ++i) k.store<int>(p.num_splits_ptr + i, sm.numSplits(i));
}

}  // namespace
}  // namespace emu

namespace smxx::decode {

void run_get_decoding_sched_meta_kernel(GetDecodeSchedMetaParams& params) {
  using namespace emu;
  const char* launcher = "run_get_decoding_sched_meta_kernel";
  // cudaFuncSetAttribute(MaxDynamicSharedMemorySize, 4*(5b+1)) fails beyond the device limit.
  long long smem = 4LL * (5LL * params.b + 1);
  LaunchSpec spec{launcher, "get_mla_metadata_kernel", "sched_meta", FailStyle::Exit, KernelArch::Any, params.stream};
  if (smem < 0 || smem > kMaxDynamicSmemBytes) {
    fail(FailStyle::Exit, std::string(launcher) + ": CUDA error 1 (invalid argument): dynamic shared memory " +
                              std::to_string(smem) + " bytes");
  }
  launch(spec, [=](KernelScope& k) { schedMetaKernel(k, params); });  // by value: a captured launch runs later
}

}  // namespace smxx::decode
