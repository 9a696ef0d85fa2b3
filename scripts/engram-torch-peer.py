#!/usr/bin/env python3
"""PyTorch CPU peer for the Engram math tests (tests/unit/engram/forward-torch-peer.test.ts).

Usage: engram-torch-peer.py DIR
DIR holds meta.json and raw little-endian inputs written by the test; the peer writes its outputs
next to them. Two cases (docs/engram-math.md#torch-peer):

- "gate": the V4.1 gate as torch float32 tensor expressions on bf16 inputs, each operation one
  torch op (so every intermediate is a float32 tensor, as in the V4.1 reference module), output
  cast back to bf16. Writes out.bin (bf16 bits), dot.bin and gate.bin (float32).
- "demo": the paper demo's module after the lookup in float32: Linear projections with bias,
  RMSNorm (x * rsqrt(mean(x^2) + eps) * w), the sign() sqrt-sigmoid gate, and the ShortConv
  (per-branch RMSNorm, torch's depthwise Conv1d with left+right padding cut to the first T
  outputs, SiLU) added to the gated value. Writes out.bin and gate.bin (float32).

Runs on Debian's torch (1.13, CPU); no GPU, no float8 needed.
"""
import json
import os
import sys

import numpy as np
import torch


def read(d, name, shape, dtype):
    path = os.path.join(d, name)
    if dtype == "bf16":
        return torch.from_numpy(np.fromfile(path, dtype=np.int16).reshape(shape)).view(torch.bfloat16)
    return torch.from_numpy(np.fromfile(path, dtype=np.float32).reshape(shape))


def write(d, name, t):
    if t.dtype == torch.bfloat16:
        t.contiguous().view(torch.int16).numpy().tofile(os.path.join(d, name))
    else:
        t.contiguous().numpy().astype(np.float32).tofile(os.path.join(d, name))


def gate_case(d, meta):
    T, M, D = meta["T"], meta["M"], meta["d"]
    h = read(d, "h.bin", (T, M, D), "bf16")
    key = read(d, "key.bin", (T, M, D), "bf16").float()
    value = read(d, "value.bin", (T, D), "bf16").float()
    w = read(d, "q.bin", (M, D), "bf16").float() * read(d, "k.bin", (M, D), "bf16").float()
    x = h.float()
    inv_h = torch.rsqrt(x.square().mean(-1) + meta["eps"])
    inv_k = torch.rsqrt(key.square().mean(-1) + meta["eps"])
    raw = (x * w * key).sum(-1)
    score = raw * (inv_h * inv_k) * D ** -0.5
    root = score.abs().clamp_min(meta["clamp"]).sqrt()
    signed = torch.copysign(root, score) if meta["sign"] == "copysign" else root * score.sign()
    g = torch.sigmoid(signed)
    write(d, "out.bin", (x + g.unsqueeze(-1) * value.unsqueeze(-2)).to(h.dtype))
    write(d, "dot.bin", raw)
    write(d, "gate.bin", g)


def rms(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def demo_case(d, meta):
    T, M, D, Ke, k, dil = meta["T"], meta["M"], meta["D"], meta["Ke"], meta["kernel"], meta["dilation"]
    e = read(d, "e.bin", (T, Ke), "fp32")
    h = read(d, "h.bin", (T, M, D), "fp32")
    wk = read(d, "wk.bin", (M, D, Ke), "fp32")
    bk = read(d, "bk.bin", (M, D), "fp32")
    wv = read(d, "wv.bin", (D, Ke), "fp32")
    bv = read(d, "bv.bin", (D,), "fp32")
    n1 = read(d, "n1.bin", (M, D), "fp32")
    n2 = read(d, "n2.bin", (M, D), "fp32")
    n3 = read(d, "n3.bin", (M, D), "fp32")
    cw = read(d, "cw.bin", (M * D, 1, k), "fp32")
    eps = float(np.finfo(np.float32).eps)
    v = torch.nn.functional.linear(e, wv, bv)
    gates = []
    for m in range(M):
        nk = rms(torch.nn.functional.linear(e, wk[m], bk[m]), n1[m], eps)
        nq = rms(h[:, m, :], n2[m], eps)
        s = (nk * nq).sum(-1) / (D ** 0.5)
        gates.append(torch.sigmoid(s.abs().clamp_min(1e-6).sqrt() * s.sign()))
    g = torch.stack(gates, dim=1)
    tilde = g.unsqueeze(-1) * v.unsqueeze(1)
    normed = torch.cat([rms(tilde[:, m, :], n3[m], meta["conv_eps"]) for m in range(M)], dim=-1)
    conv = torch.nn.functional.conv1d(normed.t().unsqueeze(0), cw, padding=(k - 1) * dil, dilation=dil, groups=M * D)
    y = torch.nn.functional.silu(conv[0, :, :T].t()).reshape(T, M, D)
    write(d, "out.bin", tilde + y)
    write(d, "gate.bin", g)


def main():
    d = sys.argv[1]
    torch.set_num_threads(1)
    with open(os.path.join(d, "meta.json")) as f:
        meta = json.load(f)
    {"gate": gate_case, "demo": demo_case}[meta["case"]](d, meta)


if __name__ == "__main__":
    main()
