/**
 * The five CPU anchor shapes of the performance issue (dense and sparse MLA decode on a 2-core
 * machine), timed on the reference backend at given thread counts and, when Debian's PyTorch is
 * installed, against our PyTorch CPU peer (scripts/peer-torch.py) on the same inputs in the same
 * run. FLOPs = 2·b·s_q·h_q·s_k_eff·(d_qk + d_v), s_k_eff counted exactly under the causal mask.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { f32ToBf16 } from '../formats/bf16.js';
import { Rng } from '../harness/random.js';
import { quantizeKCache } from '../kvcache/quantize.js';
import { referenceDecode, type Tier } from '../reference/index.js';
import { warmup } from '../reference/warmup.js';
import { getMlaMetadata } from '../sched-meta.js';
import type { HostTensor } from '../tensor.js';
import type { DecodeArgs } from '../types.js';
import { timeCalls } from './timing.js';

export interface AnchorShape {
  name: string;
  kind: 'dense' | 'sparse';
  b: number;
  sQ: number;
  hQ: number;
  /** Dense: cache length of every request; sparse: topk. */
  sK: number;
  causal: boolean;
  /** Sparse: tokens in the FP8 (V3.2) cache the indices draw from. */
  cacheTokens: number;
}

export const ANCHOR_SHAPES: readonly AnchorShape[] = [
  { name: 'dense b=1 s_q=1 h_q=128 s_k=4096', kind: 'dense', b: 1, sQ: 1, hQ: 128, sK: 4096, causal: false, cacheTokens: 0 },
  { name: 'dense b=4 s_q=1 h_q=16 s_k=8192', kind: 'dense', b: 4, sQ: 1, hQ: 16, sK: 8192, causal: false, cacheTokens: 0 },
  { name: 'dense b=1 s_q=2 causal h_q=128 s_k=32768', kind: 'dense', b: 1, sQ: 2, hQ: 128, sK: 32768, causal: true, cacheTokens: 0 },
  { name: 'sparse V3.2 b=1 h_q=128 topk=2048', kind: 'sparse', b: 1, sQ: 1, hQ: 128, sK: 2048, causal: false, cacheTokens: 65536 },
  { name: 'sparse V3.2 b=4 h_q=64 topk=2048', kind: 'sparse', b: 4, sQ: 1, hQ: 64, sK: 2048, causal: false, cacheTokens: 65536 },
];

export interface AnchorRow {
  shape: string;
  threads: number;
  tier: Tier;
  ms: number;
  gflops: number;
  /** The PyTorch peer's median at the same thread count, or null when not measured. */
  torchMs: number | null;
  /** ms / torchMs (< 1: we are faster). */
  ratio: number | null;
}

export interface AnchorBenchOptions {
  threads: number[];
  reps: number;
  /** Also time the PyTorch peer when `python3 -c "import torch"` works. */
  torch: boolean;
  log?: (line: string) => void;
}

const D_QK = 576;
const D_V = 512;
const PAGE = 64;

/** FLOPs of a shape: every (query row, visible key) pair costs 2·(d_qk + d_v) per head. */
export function anchorFlops(s: AnchorShape): number {
  let pairs = 0;
  for (let r = 0; r < s.sQ; r++) pairs += s.kind === 'dense' && s.causal && s.sQ > 1 ? s.sK - s.sQ + r + 1 : s.sK;
  return 2 * s.b * pairs * s.hQ * (D_QK + D_V);
}

const randnBf16 = (rng: Rng, n: number, scale: number): Uint16Array => {
  const a = new Uint16Array(n);
  for (let i = 0; i < n; i++) a[i] = f32ToBf16(rng.randn() * scale);
  return a;
};

/** Inputs of one shape (randn q and cache as the peer's own generator would draw them). */
export function anchorArgs(s: AnchorShape, seed = 0): Omit<DecodeArgs, 'schedMeta'> {
  const rng = new Rng(seed);
  const q: HostTensor = { dtype: 'bf16', shape: [s.b, s.sQ, s.hQ, D_QK], data: randnBf16(rng, s.b * s.sQ * s.hQ * D_QK, 1) };
  if (s.kind === 'dense') {
    const perSeq = Math.ceil(s.sK / PAGE);
    const blocks = s.b * perSeq;
    return {
      q,
      kCache: { dtype: 'bf16', shape: [blocks, PAGE, 1, D_QK], data: randnBf16(rng, blocks * PAGE * D_QK, 1) },
      blockTable: { dtype: 'int32', shape: [s.b, perSeq], data: rng.permutation(blocks) },
      cacheSeqlens: { dtype: 'int32', shape: [s.b], data: new Int32Array(s.b).fill(s.sK) },
      headDimV: D_V,
      causal: s.causal,
    };
  }
  const bf16 = randnBf16(rng, s.cacheTokens * D_QK, 1);
  const kCache = quantizeKCache({ dtype: 'bf16', shape: [s.cacheTokens / PAGE, PAGE, 1, D_QK], data: bf16 }, 'v32');
  const indices = new Int32Array(s.b * s.sQ * s.sK);
  for (let r = 0; r < s.b * s.sQ; r++) indices.set(rng.sample(s.cacheTokens, s.sK), r * s.sK);
  return {
    q,
    kCache,
    indices: { dtype: 'int32', shape: [s.b, s.sQ, s.sK], data: indices },
    headDimV: D_V,
    isFp8Kvcache: true,
    softmaxScale: D_QK ** -0.5,
  };
}

const PEER = fileURLToPath(new URL('../../scripts/peer-torch.py', import.meta.url));
const OPENBLAS_OPENMP = '/usr/lib/x86_64-linux-gnu/openblas-openmp';

/** Environment for Debian's torch: the OpenMP OpenBLAS, so torch's threads and BLAS's do not fight. */
function peerEnv(): NodeJS.ProcessEnv {
  return existsSync(OPENBLAS_OPENMP) ? { ...process.env, LD_LIBRARY_PATH: OPENBLAS_OPENMP } : process.env;
}

/**
 * A Python that imports torch: $FLASHMLA_PYTHON, else `python3` on the PATH, else Debian's
 * /usr/bin/python3 (python3-torch is installed there even when the PATH leads to another Python).
 */
export function torchPython(): string | null {
  if (!existsSync(PEER)) return null;
  const candidates = process.env.FLASHMLA_PYTHON ? [process.env.FLASHMLA_PYTHON] : ['python3', '/usr/bin/python3'];
  return candidates.find((py) => spawnSync(py, ['-c', 'import torch'], { env: peerEnv(), stdio: 'ignore' }).status === 0) ?? null;
}

const raw = (t: unknown): Uint8Array => {
  const a = (t as HostTensor).data;
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
};

/** Writes a shape's inputs for the peer and returns its median ms per thread count. */
function timeTorch(python: string, s: AnchorShape, args: Omit<DecodeArgs, 'schedMeta'>, threads: number[], reps: number): Map<number, number> {
  const dir = mkdtempSync(join(tmpdir(), 'flashmla-anchor-'));
  try {
    const kc = args.kCache as HostTensor;
    const meta = {
      kind: s.kind, b: s.b, s_q: s.sQ, h_q: s.hQ, s_k: s.sK, causal: s.causal, d_qk: D_QK, d_v: D_V,
      softmax_scale: D_QK ** -0.5, cache_shape: kc.shape,
      // Elements (dense bf16) or bytes (FP8) from one cache block to the next.
      stride0: kc.strides?.[0] ?? kc.shape[1]! * kc.shape[2]! * kc.shape[3]!,
    };
    writeFileSync(join(dir, 'meta.json'), JSON.stringify(meta));
    writeFileSync(join(dir, 'q.bin'), raw(args.q));
    writeFileSync(join(dir, 'kcache.bin'), raw(kc));
    if (s.kind === 'dense') {
      writeFileSync(join(dir, 'block_table.bin'), raw(args.blockTable));
      writeFileSync(join(dir, 'cache_seqlens.bin'), raw(args.cacheSeqlens));
    } else {
      writeFileSync(join(dir, 'indices.bin'), raw(args.indices));
    }
    const r = spawnSync(python, [PEER, dir, '--threads', threads.join(','), '--reps', String(reps)], { env: peerEnv(), encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`peer-torch.py failed: ${r.stderr}`);
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as { ms: Record<string, number> };
    return new Map(Object.entries(out.ms).map(([t, ms]) => [Number(t), ms]));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Untimed calls before timing each thread count, after `warmup()`: the steady state of the
 * WebAssembly and TypeScript tiers, whose workers' loops V8 compiles after about 10 calls (the
 * native tier is steady from its first call or two: docs/reference-backend.md#cold-start).
 */
export const ANCHOR_WARMUP = 12;

/**
 * Times every anchor shape on the reference backend (tier from $FLASHMLA_REFERENCE_TIER or the
 * fastest available) at each thread count: `warmup()` once, then per shape and thread count
 * ANCHOR_WARMUP untimed calls and `reps` timed calls, median. Then the torch peer on the same
 * inputs when asked and available.
 */
export async function runAnchorBench(opts: AnchorBenchOptions): Promise<AnchorRow[]> {
  const log = opts.log ?? (() => undefined);
  const ready = await warmup({ threads: Math.max(...opts.threads) });
  log(`warm-up: ${ready.ms.toFixed(1)} ms (${ready.tier} tier, ${ready.threads} threads)`);
  const tier = ready.tier;
  const python = opts.torch ? torchPython() : null;
  if (opts.torch && !python) log('PyTorch peer skipped: no python3 imports torch (apt-get install python3-torch libopenblas0-openmp)');
  const rows: AnchorRow[] = [];
  for (const shape of ANCHOR_SHAPES) {
    log(`${shape.name}: generating inputs`);
    const args = anchorArgs(shape);
    const flops = anchorFlops(shape);
    const schedMeta = getMlaMetadata();
    const ours = new Map<number, number>();
    for (const threads of opts.threads) {
      const t = await timeCalls(() => referenceDecode({ ...args, schedMeta }, { threads, tier }), ANCHOR_WARMUP, opts.reps);
      ours.set(threads, t.medianMs);
      log(`${shape.name}: ${threads} thread(s), ${tier}: ${t.medianMs.toFixed(2)} ms`);
    }
    const peer = python ? timeTorch(python, shape, args, opts.threads, opts.reps) : null;
    for (const threads of opts.threads) {
      const ms = ours.get(threads)!;
      const torchMs = peer?.get(threads) ?? null;
      rows.push({ shape: shape.name, threads, tier, ms, gflops: flops / ms / 1e6, torchMs, ratio: torchMs === null ? null : ms / torchMs });
    }
  }
  return rows;
}
