#!/usr/bin/env python3
"""PyTorch CPU peer for the reference backend's anchor benchmark (src/bench/anchors.ts).

Usage: peer-torch.py DIR [--threads 1,2] [--reps N]
DIR holds meta.json and the raw inputs written by anchors.ts (q.bin bf16, kcache.bin, and
block_table.bin + cache_seqlens.bin (dense) or indices.bin (sparse V3.2 FP8)). Prints one JSON line
{"ms": {"<threads>": median_ms, ...}}.

The computation is the sensible CPU reference of FlashMLA decode: per request, gather the pages
(or the selected FP8 tokens, dequantised through a 256-entry e4m3 table), convert to float32 once,
one matmul for Q.K^T over all heads (one KV head), logsumexp, softmax, one matmul with V.
Run with Debian's torch and the OpenMP OpenBLAS (LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-openmp)
so torch's and BLAS's thread pools agree.
"""

import numpy as np
import torch

from peer_timing import load, print_medians, read_args


def bf16(t):
    return t.view(torch.bfloat16)


def e4m3_table():
    v = np.zeros(256, dtype=np.float32)
    for code in range(256):
        e, m = (code >> 3) & 15, code & 7
        mag = np.nan if (e == 15 and m == 7) else (m / 8 * 2.0 ** -6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7))
        v[code] = -mag if code & 128 else mag
    return torch.from_numpy(v)


@torch.inference_mode()
def dense(meta, q, kc, table, seqlens):
    b, s_q, h_q, d = q.shape
    d_v, scale = meta["d_v"], meta["softmax_scale"]
    out = torch.empty(b, s_q, h_q, d_v)
    lse = torch.empty(b, h_q, s_q)
    for i in range(b):
        L = int(seqlens[i])
        pages = kc.index_select(0, table[i, : (L + 63) // 64].long())
        k = pages.reshape(-1, d)[:L].float()
        w = q[i].float().transpose(0, 1) @ k.t() * scale            # [h_q, s_q, L]
        if meta["causal"] and s_q > 1:
            visible = torch.ones(s_q, L, dtype=torch.bool).tril(L - s_q)
            w.masked_fill_(~visible, float("-inf"))
        lse[i] = w.logsumexp(-1)
        out[i] = (torch.softmax(w, -1) @ k[:, :d_v]).transpose(0, 1)
    return out.to(torch.bfloat16), lse


@torch.inference_mode()
def sparse(meta, q, cache, idx, table):
    b, s_q, h_q, d = q.shape
    d_v, scale = meta["d_v"], meta["softmax_scale"]
    B = meta["cache_shape"][1]
    stride0 = meta["stride0"]
    flat = idx.reshape(-1).clamp_min(0).long()
    start = (flat // B) * stride0 + (flat % B) * 656
    rows = cache[start[:, None] + torch.arange(656)]                # [n, 656] uint8: only the selected tokens
    n = rows.shape[0]
    nope = table[rows[:, :512].long()].view(n, 4, 128) * rows[:, 512:528].contiguous().view(torch.float32)[:, :, None]
    rope = rows[:, 528:].contiguous().view(torch.bfloat16).float()
    k = torch.cat([nope.view(n, 512), rope], -1).view(b * s_q, -1, d)
    w = q.float().view(b * s_q, h_q, d) @ k.transpose(1, 2) * scale
    w.masked_fill_((idx == -1).view(b * s_q, 1, -1), float("-inf"))
    lse = w.logsumexp(-1)
    out = torch.exp(w - lse[..., None]) @ k[..., :d_v]
    return out.view(b, s_q, h_q, d_v).to(torch.bfloat16), lse.view(b, s_q, h_q).transpose(1, 2)


def main():
    d, meta, threads, reps = read_args()
    q = bf16(load(d, "q.bin", np.int16)).view(meta["b"], meta["s_q"], meta["h_q"], meta["d_qk"])
    if meta["kind"] == "dense":
        nb = meta["cache_shape"][0]
        kc = bf16(load(d, "kcache.bin", np.int16)).view(nb, 64, 1, meta["d_qk"])
        table = load(d, "block_table.bin", np.int32).view(meta["b"], -1)
        seqlens = load(d, "cache_seqlens.bin", np.int32)
        fn = lambda: dense(meta, q, kc, table, seqlens)
    else:
        cache = load(d, "kcache.bin", np.uint8)
        idx = load(d, "indices.bin", np.int32).view(meta["b"], meta["s_q"], -1)
        table = e4m3_table()
        fn = lambda: sparse(meta, q, cache, idx, table)
    print_medians(fn, threads, reps, warmup=3)


if __name__ == "__main__":
    main()
