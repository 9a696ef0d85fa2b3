import { closeSync, mkdtempSync, openSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkConfig, type EngramConfig } from '../engram/config.js';
import { forwardV41 } from '../engram/forward-v41.js';
import { layout, type EngramLayerLayout } from '../engram/layout.js';
import { gate } from '../engram/gate.js';
import { calcDiff, forwardV41Oracle, gateOracle, roundBf16 } from '../engram/oracle.js';
import { EngramStore, type EngramRequest, type EngramStep } from '../engram/store.js';
import { EngramTable, type EngramTableIo } from '../engram/table.js';
import { writeEngramTable } from '../engram/table-writer.js';
import type { TokenMap } from '../engram/types.js';
import { f32ToBf16 } from '../formats/bf16.js';
import { Rng } from '../harness/random.js';
import type { HostTensor } from '../tensor.js';
import { choice, integer, UsageError, type Command } from './args.js';
import { fmtErr, fmtMs } from './table.js';

/** Raw tokenizer ids of the synthetic vocabulary; the token map folds them onto V′ canonical ids. */
const RAW_VOCAB = 1500;
/** V′ of the synthetic config. */
const CANONICAL_VOCAB = 1000;
/** TileKernels' gate test tolerance on calc_diff (docs/engram-math.md#tolerances). */
const GATE_TOLERANCE = 2e-10;
/**
 * kv is accumulated in float32 and rounded to bf16, so next to a rounding midpoint it may land on the
 * other bf16 neighbour of the exact product: each value must be within one bf16 ulp of it.
 */
const KV_LIMIT_ULP = 1;

/**
 * DeepSeek-V4.1's Engram structure (layers [1, 14], N = 4, K = 8, 256 values per fp8 row, M = 4)
 * with prime searches from 1000 instead of 16,000,000, so each layer's table has ~24,000 rows (~6 MiB).
 */
function demoConfig(hiddenSize: number): EngramConfig {
  return checkConfig({
    variant: 'v4.1', layerIds: [1, 14], maxNgramSize: 4, nHeads: 8, headDim: 256, vocabSizes: [1000, 1000, 1000],
    compressedVocabSize: CANONICAL_VOCAB, padTokenId: 2, numEmbeddings: undefined, seed: 0, hcMult: 4, hiddenSize,
    rmsNormEps: 1e-20, tableDtype: 'fp8-e4m3-e8m0', convKernel: undefined, convDilation: undefined,
  });
}

/** Row r of layer l: 256 random e4m3 codes (no NaN code) then 8 e8m0 scales in 2^-9 … 2^-2, from a per-row seed. */
function rowBytes(layerId: number, r: number, out: Uint8Array, at: number): void {
  const rng = new Rng((layerId * 0x1000193) ^ Math.imul(r, 0x9e3779b1));
  for (let j = 0; j < 256; j++) {
    const c = rng.int(0, 256);
    out[at + j] = (c & 0x7f) === 0x7f ? c ^ 1 : c;
  }
  for (let g = 0; g < 8; g++) out[at + 256 + g] = rng.int(118, 126);
}

/** e4m3fn code → value from its bit fields (bias 7, subnormals below exponent 1), written apart from src/formats. */
function decodeE4m3(code: number): number {
  const sign = code & 0x80 ? -1 : 1;
  const exp = (code >> 3) & 0xf;
  const man = code & 7;
  return sign * (exp === 0 ? man * 2 ** -9 : (1 + man / 8) * 2 ** (exp - 7));
}

const widened = new DataView(new ArrayBuffer(4));

/** The bf16 spacing at |x| (from its float32 exponent field: Math.log2 can miss by one at a power of two). */
function bf16Ulp(x: number): number {
  widened.setFloat32(0, Math.abs(x));
  return 2 ** (Math.max(1, (widened.getUint32(0) >>> 23) & 0xff) - 127 - 7);
}

/** bf16 bits → value by widening to float32 bits. */
function bf16Value(bits: number): number {
  widened.setUint32(0, bits << 16);
  return widened.getFloat32(0);
}

/**
 * Row ids of positions `from…to−1` of a whole sequence, straight from the definition with BigInt
 * (docs/engram-hashing.md#hash): slot s of position t is the canonical id of token t−s, or the
 * canonical pad when t−s < 0 or a token at t…t−s is dead; mix_n = XOR of x_s·m_s for s < n;
 * id = mix_n mod prime + offset. Laid out [token][layer][(order, head)].
 */
function bigintRowIds(seq: readonly number[], dead: readonly boolean[], from: number, to: number, map: TokenMap, pad: number, layouts: readonly EngramLayerLayout[], n: number, k: number): Int32Array {
  const out: number[] = [];
  for (let t = from; t < to; t++) {
    const x: bigint[] = [];
    let blocked = false;
    for (let s = 0; s < n; s++) {
      blocked ||= t - s < 0 || dead[t - s]!;
      x.push(BigInt(blocked ? map.map[pad]! : map.map[seq[t - s]!]!));
    }
    for (const l of layouts) {
      for (let order = 2; order <= n; order++) {
        let mix = 0n;
        for (let s = 0; s < order; s++) mix ^= x[s]! * l.multipliers[s]!;
        for (let h = 0; h < k; h++) {
          const col = (order - 2) * k + h;
          out.push(Number(mix % BigInt(l.primes[col]!)) + l.offsets[col]!);
        }
      }
    }
  }
  return Int32Array.from(out);
}

/** One line of the report. */
interface Check {
  name: string;
  pass: boolean;
  ms: number;
  detail: string;
}

/** A request as the demo drives it: its whole token sequence so far (after rollbacks) and dead flags. */
interface Sequence {
  id: string;
  tokens: number[];
  dead: boolean[];
}

/**
 * Compares a step with the independent hash and the file's bytes: every row id, then every bf16
 * value of every row against the e4m3 × e8m0 decode of the bytes at that row in the file.
 */
function checkStep(step: EngramStep, seqs: readonly Sequence[], counts: readonly number[], ctx: {
  map: TokenMap; pad: number; layouts: readonly EngramLayerLayout[]; n: number; k: number; fds: readonly number[]; rowsOffsets: readonly number[];
}): string | null {
  const perToken = (ctx.n - 1) * ctx.k;
  const L = ctx.layouts.length;
  for (const [i, r] of step.requests.entries()) {
    const seq = seqs[i]!;
    const end = seq.tokens.length;
    const want = bigintRowIds(seq.tokens, seq.dead, end - counts[i]!, end, ctx.map, ctx.pad, ctx.layouts, ctx.n, ctx.k);
    const got = step.rowIds.data.subarray(r.start * L * perToken, (r.start + r.count) * L * perToken);
    const bad = want.findIndex((v, j) => v !== got[j]);
    if (bad >= 0 || want.length !== got.length) return `request ${seq.id}: row id ${bad} is ${got[bad]}, the BigInt hash says ${want[bad]}`;
  }
  const ids = step.rowIds.data;
  const rows = step.rows.data as Uint16Array;
  const bytes = new Uint8Array(264);
  for (let i = 0; i < ids.length; i++) {
    const layer = Math.floor(i / perToken) % L;
    readSync(ctx.fds[layer]!, bytes, 0, 264, ctx.rowsOffsets[layer]! + ids[i]! * 264);
    for (let j = 0; j < 256; j++) {
      const want = decodeE4m3(bytes[j]!) * 2 ** (bytes[256 + (j >> 5)]! - 127);
      if (bf16Value(rows[i * 256 + j]!) !== want) return `row ${ids[i]} (layer ${ctx.layouts[layer]!.layerId}) value ${j} is ${bf16Value(rows[i * 256 + j]!)}, the file's bytes decode to ${want}`;
    }
  }
  return null;
}

function bf16Random(rng: Rng, shape: number[]): HostTensor<'bf16'> {
  const data = new Uint16Array(shape.reduce((a, b) => a * b, 1));
  for (let i = 0; i < data.length; i++) data[i] = f32ToBf16(rng.randn());
  return { dtype: 'bf16', shape, data } as HostTensor<'bf16'>;
}

/** Runs the scenario; returns the checks in order. */
async function runDemo(io: EngramTableIo, hidden: number, dir: string): Promise<Check[]> {
  const checks: Check[] = [];
  const timed = async <T>(name: string, fn: () => Promise<T> | T, judge: (r: T) => { pass: boolean; detail: string }): Promise<T> => {
    const t0 = performance.now();
    const r = await fn();
    checks.push({ name, ms: performance.now() - t0, ...judge(r) });
    return r;
  };
  const config = demoConfig(hidden);
  const layouts = layout(config);
  const map: TokenMap = { map: Int32Array.from({ length: RAW_VOCAB }, (_, i) => (i * 7) % CANONICAL_VOCAB), size: CANONICAL_VOCAB };
  const paths = layouts.map((l) => join(dir, `layer-${l.layerId}.engram`));
  await timed('write two fp8 tables (own format, token map stored)', async () => {
    for (const [i, l] of layouts.entries()) {
      await writeEngramTable(paths[i]!, {
        layout: l, headDim: 256, format: 'fp8', config, tokenMap: map,
        rows: (first, count) => { const out = new Uint8Array(count * 264); for (let r = 0; r < count; r++) rowBytes(l.layerId, first + r, out, r * 264); return out; },
      });
    }
  }, () => ({ pass: true, detail: layouts.map((l) => `layer ${l.layerId}: ${l.numEmbeddings} rows × 264 B`).join(', ') }));
  const tables = paths.map((p) => EngramTable.open(p, { config, io }));
  const fds = paths.map((p) => openSync(p, 'r'));
  try {
    const stored = tables[0]!.tokenMap!;
    const storedLayout = tables.map((t) => t.layout!);
    checks.push({
      name: 'stored token map and layouts (primes, multipliers) read back', ms: 0,
      pass: stored.size === map.size && stored.map.every((v, i) => v === map.map[i]) && storedLayout.every((l, i) => l.multipliers.every((m, j) => m === layouts[i]!.multipliers[j]) && l.primes.every((q, j) => q === layouts[i]!.primes[j])),
      detail: `io ${tables[0]!.io}, V′ ${stored.size}, ${stored.map.length} raw ids`,
    });
    const store = EngramStore.open({ config, tables, tokenMap: stored, threads: 2 });
    const ctx = { map: stored, pad: config.padTokenId, layouts: storedLayout, n: config.maxNgramSize, k: config.nHeads, fds, rowsOffsets: tables.map((t) => t.placement.weightOffset) };
    const rng = new Rng(2026);
    const seqs: Sequence[] = ['a', 'b', 'c'].map((id) => ({ id, tokens: [], dead: [] }));
    // Each step: per request, how many new tokens and which of them are dead (an image placeholder).
    const plan: { name: string; add: number[]; dead?: [number, number][]; rollback?: [number, number] }[] = [
      { name: 'prefill (7, 5 with a dead token, 1 tokens)', add: [7, 5, 1], dead: [[1, 2]] },
      { name: 'decode step 1', add: [1, 1, 1] },
      { name: 'decode step 2 (request c: a chunk of 3)', add: [1, 1, 3] },
      { name: 'decode step 3 after rolling request a back by 2', add: [1, 1, 1], rollback: [0, 2] },
      { name: 'decode step 4 (request b: a dead token)', add: [1, 1, 1], dead: [[1, 0]] },
    ];
    let last: { step: EngramStep; mask: boolean[] } | undefined;
    for (const p of plan) {
      if (p.rollback !== undefined) {
        const [who, n] = p.rollback;
        store.rollback(seqs[who]!.id, n);
        seqs[who]!.tokens.splice(-n);
        seqs[who]!.dead.splice(-n);
      }
      const batch: EngramRequest[] = seqs.map((s, i) => {
        const tokens = Array.from({ length: p.add[i]! }, () => rng.int(0, RAW_VOCAB));
        const mask = tokens.map((_, j) => p.dead?.some(([r, at]) => r === i && at === j) === true);
        s.tokens.push(...tokens);
        s.dead.push(...mask);
        return { id: s.id, tokens, mask };
      });
      const step = await timed(`${p.name}: prefetch, row ids = BigInt hash of the whole sequence, rows = decode of the file's bytes`,
        () => store.prefetch(batch), (st) => {
          const why = checkStep(st, seqs, p.add, ctx);
          return { pass: why === null, detail: why ?? `${st.rowIds.shape[0]} tokens × ${st.rowIds.shape[1]} layers × ${st.rowIds.shape[2]} rows` };
        });
      last = { step, mask: batch.flatMap((b) => (b.mask as boolean[])) };
    }
    store.close();
    // The V4.1 module on the last step's rows: e = the 24 rows of each token concatenated, per layer.
    const { step, mask } = last!;
    const T = step.rows.shape[0]!;
    const M = config.hcMult;
    const d = hidden;
    const N = d * (M + 1);
    const K = 24 * 256;
    const wrng = new Rng(41);
    for (const [l, lay] of storedLayout.entries()) {
      const e = new Uint16Array(T * K);
      const rows = step.rows.data as Uint16Array;
      for (let t = 0; t < T; t++) e.set(rows.subarray((t * 2 + l) * K, (t * 2 + l + 1) * K), t * K);
      const wkv = new Uint8Array(N * K);
      for (let i = 0; i < wkv.length; i++) { const c = wrng.int(0, 256); wkv[i] = (c & 0x7f) === 0x7f ? c ^ 1 : c; }
      const wkvScale = Uint8Array.from({ length: Math.ceil(N / 32) * (K / 32) }, () => wrng.int(112, 116));
      const args = {
        e: { dtype: 'bf16', shape: [T, K], data: e } as HostTensor<'bf16'>,
        h: bf16Random(wrng, [T, M, d]),
        wkv: { dtype: 'uint8', shape: [N, K], data: wkv } as HostTensor<'uint8'>,
        wkvScale: { dtype: 'uint8', shape: [Math.ceil(N / 32), K / 32], data: wkvScale } as HostTensor<'uint8'>,
        qWeight: bf16Random(wrng, [M, d]), kWeight: bf16Random(wrng, [M, d]),
        tokenMask: mask.map((x) => !x),
      };
      const t0 = performance.now();
      const ref = forwardV41(args, { eps: config.rmsNormEps! });
      const ms = performance.now() - t0;
      // The wkv product: a bf16 neighbour of the exact FP8 product; values other than its correct
      // rounding (float32 accumulation next to a midpoint) are counted.
      const exact = forwardV41Oracle(args, { eps: config.rmsNormEps! });
      const kv = ref.kv.data;
      let worst = 0;
      let flips = 0;
      for (let i = 0; i < kv.length; i++) {
        const x = exact.kv[i]!;
        const ulp = bf16Ulp(x);
        worst = Math.max(worst, Math.abs(bf16Value(kv[i]!) - x) / ulp);
        if (bf16Value(kv[i]!) !== roundBf16(x)) flips++;
      }
      checks.push({
        name: `layer ${lay.layerId}: V4.1 wkv (${N}×${K} fp8, activation quantised to e4m3) on the last step's rows vs the exact product`,
        ms, pass: worst < KV_LIMIT_ULP, detail: `largest |kv − exact| ${worst.toFixed(6)} bf16 ulp (limit: below 1); ${flips} of ${kv.length} not the exact product's correct rounding`,
      });
      // The gate on that kv, as TileKernels' gate test does it: the same bf16 inputs, float32 vs float64.
      const key = new Uint16Array(T * M * d);
      const value = new Uint16Array(T * d);
      for (let t = 0; t < T; t++) {
        key.set(kv.subarray(t * N, t * N + M * d), t * M * d);
        value.set(kv.subarray(t * N + M * d, (t + 1) * N), t * d);
      }
      const gateArgs = {
        h: args.h, qWeight: args.qWeight, kWeight: args.kWeight, tokenMask: args.tokenMask,
        key: { dtype: 'bf16', shape: [T, M, d], data: key } as HostTensor<'bf16'>, value: { dtype: 'bf16', shape: [T, d], data: value } as HostTensor<'bf16'>,
      };
      const g0 = performance.now();
      const g = gate(gateArgs, { eps: config.rmsNormEps! });
      const gms = performance.now() - g0;
      const go = gateOracle(gateArgs, { eps: config.rmsNormEps! });
      const diffs = { gate: calcDiff(g.gate.data, go.gate), dot: calcDiff(g.dot.data, go.dot) };
      const same = g.gate.data.every((v, i) => v === ref.gate.data[i]);
      checks.push({
        name: `layer ${lay.layerId}: V4.1 gate (M ${M}, d ${d}) on that kv vs the float64 oracle`,
        ms: gms, pass: same && diffs.gate < GATE_TOLERANCE && diffs.dot < GATE_TOLERANCE,
        detail: `calc_diff gate ${fmtErr(diffs.gate)}, dot ${fmtErr(diffs.dot)} (tolerance ${GATE_TOLERANCE}); ${mask.filter(Boolean).length} masked token(s); ` +
          (same ? 'forwardV41 computed the same gates' : 'forwardV41 computed DIFFERENT gates'),
      });
    }
  } finally {
    for (const fd of fds) closeSync(fd);
    for (const t of tables) t.close();
  }
  return checks;
}

/** `flashmla-node engram demo`: a synthetic end-to-end check that needs no files. */
export const engramDemo: Command = {
  name: 'engram demo',
  usage: '[--io auto|mmap|pread] [--hidden D] [--json]',
  summary: 'An end-to-end Engram check with no files needed: two V4.1-shaped fp8 tables (N 4, K 8, 256 values\n' +
    'per row, small primes: ~6 MiB each) written to a temporary folder, three requests served by EngramStore\n' +
    '(prefill, decode steps, a rollback, dead tokens); every row id is checked against a BigInt hash of the\n' +
    'whole sequence, every row against a decode of the file\'s bytes, and the V4.1 forward (wkv + gate) on\n' +
    'the last step\'s rows against float64 oracles (kv within a bf16 ulp, gate calc_diff < 2e-10).',
  options: {
    io: { type: 'string', value: 'MODE', help: 'how the tables are read: auto (default: mmap when the addon has it), mmap or pread' },
    hidden: { type: 'string', value: 'D', help: 'hidden size d of the forward check, a multiple of 32 from 32 to 4096 (default: 256)' },
    json: { type: 'boolean', help: 'print the checks as JSON' },
  },
  async run(values) {
    const io = choice(values, 'io', ['auto', 'mmap', 'pread'] as const, 'auto');
    const hidden = integer(values, 'hidden', 256, 32, 4096);
    if (hidden % 32 !== 0) throw new UsageError(`--hidden must be a multiple of 32, got '${hidden}'`);
    const dir = mkdtempSync(join(tmpdir(), 'flashmla-engram-demo-'));
    let checks: Check[];
    try {
      checks = await runDemo(io, hidden, dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    const pass = checks.every((c) => c.pass);
    if (values.json === true) {
      process.stdout.write(`${JSON.stringify({ pass, checks }, null, 2)}\n`);
    } else {
      process.stdout.write(`${checks.map((c) => `${c.pass ? 'PASS' : 'FAIL'}  ${c.name}  (${fmtMs(c.ms)} ms)\n      ${c.detail}`).join('\n')}\n\n` +
        (pass ? `All ${checks.length} checks passed.\n` : `${checks.filter((c) => !c.pass).length} of ${checks.length} checks FAILED.\n`));
    }
    return pass ? 0 : 1;
  },
};
