import { Rng } from '../harness/random.js';
import type { HostSparseFwdArgs } from '../types.js';
import { poolFill, type BenchTarget } from './flashmla-shapes.js';

/** Inputs of one sparse prefill benchmark call, with FlashMLA's FLOP and byte counts for it. */
export interface PrefillBenchInputs {
  args: HostSparseFwdArgs;
  flops: number;
  bytes: number;
}

/** One sparse prefill benchmark shape. */
export interface PrefillBenchShape {
  /** Series: the model configuration of FlashMLA's template. */
  group: string;
  name: string;
  /** Chart x value: s_kv, which the series sweeps. */
  seqlen: number;
  build(): PrefillBenchInputs;
}

interface PrefillBench {
  sQ: number;
  sKv: number;
  topk: number;
  hQ: 64 | 128;
  dQK: 576 | 512;
}

/**
 * Indices of `sQ` query tokens, each `topk` distinct tokens of [0, sKv) in random order (FlashMLA's
 * generator draws a random permutation per token). Rejection sampling with a per-token stamp:
 * topk ≤ sKv / 4 in every benchmark shape, so a draw is rarely repeated, where a full shuffle of
 * s_kv per token would cost s_q·s_kv.
 */
function distinctIndices(rng: Rng, sQ: number, sKv: number, topk: number): Int32Array {
  const out = new Int32Array(sQ * topk);
  const stamp = new Int32Array(sKv).fill(-1);
  for (let s = 0; s < sQ; s++) {
    for (let j = 0; j < topk;) {
      const t = rng.int(0, sKv);
      if (stamp[t] === s) continue;
      stamp[t] = s;
      out[s * topk + j++] = t;
    }
  }
  return out;
}

/**
 * A prefill case with a finite sink per head (FlashMLA's performance cases set have_attn_sink) and
 * FlashMLA's `count_flop_and_mem_vol` (tests/lib.py @ 9241ae3): FLOPs 2·s_q·topk·h_q·(d_qk + 512);
 * bytes: every valid index's kv row (d_qk bf16) plus q and out.
 */
function buildPrefill(p: PrefillBench, seed: number): PrefillBenchInputs {
  if (p.topk * 4 > p.sKv) throw new RangeError(`benchmark shapes need s_kv ≥ 4·topk, got ${p.sKv} and ${p.topk}`);
  const rng = new Rng(seed);
  const q = new Uint16Array(p.sQ * p.hQ * p.dQK);
  poolFill(q, rng, 0.1);
  const kv = new Uint16Array(p.sKv * p.dQK);
  poolFill(kv, rng, 0.1);
  return {
    args: {
      q: { dtype: 'bf16', shape: [p.sQ, p.hQ, p.dQK], data: q },
      kv: { dtype: 'bf16', shape: [p.sKv, 1, p.dQK], data: kv },
      indices: { dtype: 'int32', shape: [p.sQ, 1, p.topk], data: distinctIndices(rng, p.sQ, p.sKv, p.topk) },
      smScale: 1 / Math.sqrt(p.dQK),
      dV: 512,
      attnSink: { dtype: 'fp32', shape: [p.hQ], data: Float32Array.from({ length: p.hQ }, () => rng.randn()) },
    },
    flops: 2 * p.sQ * p.topk * p.hQ * (p.dQK + 512),
    bytes: p.sQ * p.topk * p.dQK * 2 + p.sQ * p.hQ * (p.dQK + 512) * 2,
  };
}

/**
 * FlashMLA's prefill `performance_case_templates` (tests/test_flash_mla_sparse_prefill.py @
 * 9241ae3): (d_qk, h_q, topk) and the s_kv each is run at, s_q 4096.
 */
const TEMPLATES: readonly { group: string; dQK: 576 | 512; hQ: 64 | 128; topk: number; sKv: readonly number[] }[] = [
  { group: 'V3.2', dQK: 576, hQ: 128, topk: 2048, sKv: [8192, 32768, 65536, 98304, 131072] },
  { group: 'MODEL1 config 1', dQK: 512, hQ: 64, topk: 512, sKv: [8192, 32768, 49152, 65536] },
  { group: 'MODEL1 config 2', dQK: 512, hQ: 128, topk: 1024, sKv: [8192, 32768, 49152, 65536] },
];

/** Query tokens per call on the CPU: FlashMLA's 4096 would take a minute a call on the reference. */
const CPU_S_Q = 32;

/**
 * The sparse prefill benchmark shapes. On the GPU, FlashMLA's performance cases as they are; on the
 * CPU, s_q cut from 4096 to 32 and each template at its smallest and largest s_kv (the work per call
 * does not grow with s_kv, only the cache the indices scatter over).
 */
export function prefillShapes(target: BenchTarget): { shapes: PrefillBenchShape[]; note: string } {
  const gpu = target === 'gpu';
  const sQ = gpu ? 4096 : CPU_S_Q;
  const shapes: PrefillBenchShape[] = [];
  TEMPLATES.forEach((t, ti) => {
    const list = gpu ? t.sKv : [t.sKv[0]!, t.sKv.at(-1)!];
    for (const sKv of list) {
      const p: PrefillBench = { sQ, sKv, topk: t.topk, hQ: t.hQ, dQK: t.dQK };
      shapes.push({
        group: t.group, seqlen: sKv,
        name: `${t.group} s_q=${sQ} s_kv=${sKv} topk=${t.topk} h_q=${t.hQ} d_qk=${t.dQK} sink`,
        build: () => buildPrefill(p, 400 + ti * 1000 + sKv / 1024),
      });
    }
  });
  const note = gpu
    ? "FlashMLA's sparse prefill performance cases (s_q 4096, attention sinks)"
    : `FlashMLA's sparse prefill performance cases scaled for a CPU: s_q 4096 → ${CPU_S_Q}, smallest and largest s_kv of each template`;
  return { shapes, note };
}
