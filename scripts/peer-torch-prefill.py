#!/usr/bin/env python3
"""PyTorch CPU peer for the reference backend's sparse prefill benchmark (scripts/bench-prefill-reference.mjs).

Usage: peer-torch-prefill.py DIR [--threads 1,2] [--reps N]
DIR holds meta.json (s_q, h_q, d_qk, d_v, s_kv, topk, sm_scale, sink) and the raw inputs written by
the bench: q.bin (s_q, h_q, d_qk) bf16, kv.bin (s_kv, d_qk) bf16, indices.bin (s_q, topk) int32 and,
with a sink, sink.bin (h_q,) float32. Prints one JSON line {"ms": {"<threads>": median_ms, ...}}.

The computation is the sensible CPU reference of FlashMLA's sparse prefill: kv converted to float32
once; per query token, its used rows (index in [0, s_kv)) gathered once, one matmul Q.K^T for all
heads, masked logsumexp and max, the sink folded into the normaliser, one matmul with V.
Run with Debian's torch and the OpenMP OpenBLAS (LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-openmp)
so torch's and BLAS's thread pools agree.
"""

import numpy as np
import torch

from peer_timing import load, print_medians, read_args


@torch.inference_mode()
def prefill(meta, q, kv, idx, sink):
    s_q, h_q, d_v = meta["s_q"], meta["h_q"], meta["d_v"]
    scale = meta["sm_scale"]
    kvf = kv.float()
    out = torch.empty(s_q, h_q, d_v)
    max_logits = torch.empty(s_q, h_q)
    lse = torch.empty(s_q, h_q)
    valid = (idx >= 0) & (idx < meta["s_kv"])
    for s in range(s_q):
        k = kvf.index_select(0, idx[s][valid[s]].long())          # [used, d_qk]: only the used rows
        w = (q[s].float() @ k.t()) * scale                         # [h_q, used]
        if k.shape[0] == 0:
            out[s].zero_()
            max_logits[s] = float("-inf")
            lse[s] = float("inf")
            continue
        max_logits[s] = w.amax(-1)
        lse[s] = w.logsumexp(-1)
        norm = lse[s] if sink is None else torch.logaddexp(lse[s], sink)
        out[s] = torch.exp(w - norm[:, None]) @ k[:, :d_v]
    return out.to(torch.bfloat16), max_logits, lse


def main():
    d, meta, threads, reps = read_args()
    q = load(d, "q.bin", np.int16).view(torch.bfloat16).view(meta["s_q"], meta["h_q"], meta["d_qk"])
    kv = load(d, "kv.bin", np.int16).view(torch.bfloat16).view(meta["s_kv"], meta["d_qk"])
    idx = load(d, "indices.bin", np.int32).view(meta["s_q"], meta["topk"])
    sink = load(d, "sink.bin", np.float32) if meta["sink"] else None
    fn = lambda: prefill(meta, q, kv, idx, sink)
    print_medians(fn, threads, reps, warmup=2)


if __name__ == "__main__":
    main()
