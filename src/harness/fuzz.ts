import { FlashMLAError, type FlashMLAErrorCode } from '../errors.js';
import { getMlaMetadata } from '../sched-meta.js';
import { extentOf, isHostTensor, viewOf, type HostTensor, type Tensor } from '../tensor.js';
import type { DecodeArgs, DecodeResult, HostDecodeArgs } from '../types.js';
import { generateDenseCase, generateSparseCase, type DecodeCase } from './cases.js';
import { checkIsAllclose, TOLERANCES } from './metrics.js';
import { oracleDecode } from './oracle.js';
import { Rng } from './random.js';

type Args = Omit<HostDecodeArgs, 'schedMeta'>;
/** What a mutated call must do: throw a FlashMLAError, succeed and match the oracle, or either (sanely). */
type Expect = 'error' | 'match';

interface Mutation {
  name: string;
  expect: Expect;
  /** Returns the mutated arguments (schedMeta included when the mutation is about it), or null if it does not apply. */
  apply(c: DecodeCase, rng: Rng): DecodeArgs | null;
}

/** A decode entry point under test: the public API with a fixed backend, or an instance's method. */
export type DecodeFn = (args: DecodeArgs) => Promise<DecodeResult<Tensor>>;

export interface FuzzFailure {
  call: number;
  mutation: string;
  caseName: string;
  problem: string;
}

export interface FuzzReport {
  calls: number;
  /** Calls that returned a result (checked against the oracle where the call was valid). */
  results: number;
  /** FlashMLAErrors thrown, by code. */
  errors: Partial<Record<FlashMLAErrorCode, number>>;
  /** Anything else: a non-FlashMLAError throw, a hang past the time bound, NaN output, a wrong result, a missed error. */
  failures: FuzzFailure[];
  elapsedMs: number;
}

export interface FuzzOptions {
  decode: DecodeFn;
  calls: number;
  seed: number;
  /** Per-call time bound (a call past it counts as a hang). Default 30 s. */
  timeBoundMs?: number;
  onProgress?: (done: number, report: FuzzReport) => void;
}

const withMeta = (a: Args): DecodeArgs => ({ ...a, schedMeta: getMlaMetadata() });
const pick = <T>(rng: Rng, xs: readonly T[]): T => xs[rng.int(0, xs.length)]!;
const retensor = (t: HostTensor, patch: Record<string, unknown>): HostTensor => ({ ...t, ...patch }) as HostTensor;
/** int32 values that are never a valid token, block or length here. */
const HUGE = [2 ** 31 - 1, -(2 ** 31), -2];

/** A small valid case of a random kind (dense, V3.2, MODEL1 with or without the extras). */
function baseCase(rng: Rng, seed: number): DecodeCase {
  const kind = rng.int(0, 3);
  if (kind === 0) {
    const hK = pick(rng, [1, 1, 2]);
    return generateDenseCase({
      b: rng.int(1, 4), sQ: rng.int(1, 3), sK: pick(rng, [1, 20, 64, 130]), hQ: hK * pick(rng, [1, 2, 4]), hK,
      varlen: rng.next() < 0.5, causal: rng.next() < 0.5, zeroSeqlen: rng.next() < 0.2,
      dtype: rng.next() < 0.3 ? 'fp16' : 'bf16', nonContiguous: rng.next() < 0.3,
    }, seed);
  }
  const dQK = kind === 1 ? 576 : 512;
  const scope = () => ({
    sK: pick(rng, [1, 40, 200]), topk: pick(rng, [64, 128]), blockSize: pick(rng, [1, 2, 61, 64]),
    varlen: rng.next() < 0.5, zeroSeqlen: rng.next() < 0.2, allInvalid: rng.next() < 0.1,
    withLength: dQK === 512 && rng.next() < 0.5,
  });
  return generateSparseCase({
    b: rng.int(1, 3), sQ: rng.int(1, 3), hQ: rng.next() < 0.2 ? 128 : 64, dQK, main: scope(),
    extra: dQK === 512 && rng.next() < 0.5 ? scope() : undefined, sink: rng.next() < 0.5,
  }, seed);
}

/** Replaces one int32 element inside the used part of an index-like tensor. */
function setInt(t: HostTensor, at: number, v: number): HostTensor {
  const data = new Int32Array(t.data as Int32Array);
  data[at] = v;
  return retensor(t, { data });
}

const MUTATIONS: readonly Mutation[] = [
  // Valid calls, some extreme: must succeed and match the float64 oracle.
  { name: 'valid', expect: 'match', apply: (c) => withMeta(c.args) },
  { name: 'sink ±inf', expect: 'match', apply: (c, rng) => c.kind === 'sparse'
    ? withMeta({ ...c.args, attnSink: { dtype: 'fp32', shape: [c.args.q.shape[2]!], data: Float32Array.from({ length: c.args.q.shape[2]! }, () => pick(rng, [Infinity, -Infinity, 0, 30, -30])) } })
    : null },
  { name: 'all lengths 0', expect: 'match', apply: (c) => c.kind === 'dense'
    ? withMeta({ ...c.args, cacheSeqlens: { dtype: 'int32', shape: [c.args.q.shape[0]!], data: new Int32Array(c.args.q.shape[0]!) } })
    : c.args.topkLength ? withMeta({ ...c.args, topkLength: retensor(c.args.topkLength, { data: new Int32Array(c.args.q.shape[0]!) }) }) : null },
  { name: 'all indices -1', expect: 'match', apply: (c) => c.kind === 'sparse'
    ? withMeta({ ...c.args, indices: retensor(c.args.indices!, { data: new Int32Array(c.args.indices!.data.length).fill(-1) }) }) : null },
  // Malformed calls: must throw a FlashMLAError.
  { name: 'args not an object', expect: 'error', apply: (_, rng) => pick(rng, [null, 5, 'q']) as never },
  { name: 'schedMeta forged', expect: 'error', apply: (c, rng) => ({ ...c.args, schedMeta: pick(rng, [{}, null, undefined]) as never }) },
  { name: 'schedMeta of another config', expect: 'error', apply: (c) => {
    const meta = getMlaMetadata();
    meta.bind({ b: 999, sQ: 1, hQ: 1, pageBlockSize: 64, hK: 1, causal: false, isFp8Kvcache: false, topk: null, extraPageBlockSize: null, extraTopk: null });
    return { ...c.args, schedMeta: meta };
  } },
  { name: 'q missing', expect: 'error', apply: (c) => withMeta({ ...c.args, q: undefined as never }) },
  { name: 'q wrong rank', expect: 'error', apply: (c) => {
    const [b, s, h, d] = c.args.q.shape as number[];
    return withMeta({ ...c.args, q: { dtype: c.args.q.dtype, shape: [b! * s!, h!, d!], data: new Uint16Array(b! * s! * h! * d!) } as HostTensor });
  } },
  { name: 'q dtype', expect: 'error', apply: (c, rng) => withMeta({ ...c.args, q: retensor(c.args.q, pick(rng, [{ dtype: 'fp32' }, { dtype: 'int32' }, { dtype: 'uint8' }, { dtype: 'f8' }])) }) },
  { name: 'q bad size', expect: 'error', apply: (c, rng) => {
    const shape = [...c.args.q.shape];
    shape[rng.int(0, 4)] = pick(rng, [-1, NaN, 1.5, 2 ** 40, 0, Infinity]);
    return withMeta({ ...c.args, q: retensor(c.args.q, { shape }) });
  } },
  { name: 'q bad strides', expect: 'error', apply: (c, rng) => {
    const base = c.args.q.strides ?? [1, 1, 1, 1];
    const strides = pick(rng, [[...base].slice(1), [...base.slice(0, 3), 2], base.map((s) => -s), [...base.slice(0, 3), 0.5], base.map((s, i) => (i === 2 ? s + 1 : s))]);
    return withMeta({ ...c.args, q: retensor(c.args.q, { strides }) });
  } },
  { name: 'q buffer too short', expect: 'error', apply: (c, rng) => withMeta({ ...c.args, q: retensor(c.args.q, pick(rng, [
    { data: (c.args.q.data as Uint16Array).subarray(0, extentOf(viewOf(c.args.q, 'q')) - 1) }, { offset: c.args.q.data.length }, { offset: -8 }])) }) },
  { name: 'q detached buffer', expect: 'error', apply: (c) => {
    const data = new Uint16Array(c.args.q.data as Uint16Array);
    structuredClone(data.buffer, { transfer: [data.buffer] });
    return withMeta({ ...c.args, q: retensor(c.args.q, { data }) });
  } },
  { name: 'q NaN value', expect: 'error', apply: (c) => {
    const data = new Uint16Array(c.args.q.data as Uint16Array);
    const o = c.args.q.offset ?? 0;
    data[o] = 0x7fc0;
    return withMeta({ ...c.args, q: retensor(c.args.q, { data }) });
  } },
  { name: 'fake device tensor', expect: 'error', apply: (c) => withMeta({
    ...c.args, q: { dtype: c.args.q.dtype, shape: c.args.q.shape, device: 0, capacity: 2 ** 30, address: 0n, disposed: false } as never,
  }) },
  { name: 'headDimV', expect: 'error', apply: (c, rng) => withMeta({ ...c.args, headDimV: pick(rng, [576, 0, NaN, '512']) as never }) },
  { name: 'softmaxScale non-finite', expect: 'error', apply: (c, rng) => withMeta({ ...c.args, softmaxScale: pick(rng, [NaN, Infinity, -Infinity, 'x']) as never }) },
  { name: 'empty batch', expect: 'error', apply: (c) => {
    const [, s, h, d] = c.args.q.shape as number[];
    return withMeta({ ...c.args, q: { dtype: c.args.q.dtype, shape: [0, s!, h!, d!], data: new Uint16Array(0) } as HostTensor });
  } },
  { name: 'kCache dtype/layout', expect: 'error', apply: (c, rng) => withMeta({ ...c.args, kCache: retensor(c.args.kCache, pick(rng, [
    { dtype: c.kind === 'dense' ? 'uint8' : 'bf16' }, { strides: [...(c.args.kCache.strides ?? []).slice(0, 1), 1, 1, 1] }, { shape: [...c.args.kCache.shape.slice(0, 3), 600] }])) }) },
  { name: 'dense: used block id out of range', expect: 'error', apply: (c, rng) => {
    if (c.kind !== 'dense') return null;
    const L = c.args.cacheSeqlens!.data as Int32Array;
    const i = L.findIndex((x) => x > 0);
    if (i < 0) return null;
    const cols = c.args.blockTable!.shape[1]!;
    return withMeta({ ...c.args, blockTable: setInt(c.args.blockTable!, i * cols, pick(rng, [...HUGE, c.args.kCache.shape[0]!, -1])) });
  } },
  { name: 'dense: cacheSeqlens out of range', expect: 'error', apply: (c, rng) => c.kind === 'dense'
    ? withMeta({ ...c.args, cacheSeqlens: setInt(c.args.cacheSeqlens!, 0, pick(rng, [-1, ...HUGE, c.args.blockTable!.shape[1]! * 64 + 1])) }) : null },
  { name: 'dense: sparse-only argument', expect: 'error', apply: (c) => c.kind === 'dense'
    ? withMeta({ ...c.args, topkLength: { dtype: 'int32', shape: [c.args.q.shape[0]!], data: new Int32Array(c.args.q.shape[0]!) } }) : null },
  { name: 'sparse: used index out of range', expect: 'error', apply: (c, rng) => {
    if (c.kind !== 'sparse') return null;
    const lens = c.args.topkLength?.data as Int32Array | undefined;
    if (lens && lens[0] === 0) return null;
    const tokens = c.args.kCache.shape[0]! * c.args.kCache.shape[1]!;
    return withMeta({ ...c.args, indices: setInt(c.args.indices!, 0, pick(rng, [...HUGE, tokens, -3])) });
  } },
  { name: 'sparse: topkLength out of range', expect: 'error', apply: (c, rng) => c.args.topkLength
    ? withMeta({ ...c.args, topkLength: setInt(c.args.topkLength, 0, pick(rng, [-1, c.args.indices!.shape[2]! + 1, 2 ** 31 - 1])) }) : null },
  { name: 'sparse: extraTopkLength out of range', expect: 'error', apply: (c) => c.args.extraTopkLength
    ? withMeta({ ...c.args, extraTopkLength: setInt(c.args.extraTopkLength, 0, c.args.extraIndicesInKvcache!.shape[2]! + 64) }) : null },
  { name: 'sparse: topk not a multiple of 64', expect: 'error', apply: (c) => c.kind === 'sparse'
    ? withMeta({ ...c.args, indices: retensor(c.args.indices!, { shape: [...c.args.indices!.shape.slice(0, 2), 32] }) }) : null },
  { name: 'sparse: causal / not fp8', expect: 'error', apply: (c, rng) => c.kind === 'sparse'
    ? withMeta({ ...c.args, ...pick(rng, [{ causal: true }, { isFp8Kvcache: false }]) }) : null },
  { name: 'sparse: wrong layout for q', expect: 'error', apply: (c) => {
    if (c.kind !== 'sparse') return null;
    const [b, s, h, d] = c.args.q.shape as number[];
    const d2 = d === 576 ? 512 : 576;
    return withMeta({ ...c.args, q: { dtype: 'bf16', shape: [b!, s!, h!, d2], data: new Uint16Array(b! * s! * h! * d2) } });
  } },
  { name: 'sparse: NaN sink', expect: 'error', apply: (c) => c.kind === 'sparse'
    ? withMeta({ ...c.args, attnSink: { dtype: 'fp32', shape: [c.args.q.shape[2]!], data: new Float32Array(c.args.q.shape[2]!).fill(NaN) } }) : null },
  { name: 'sparse: extra cache without extra indices', expect: 'error', apply: (c) => c.kind === 'sparse'
    ? withMeta({ ...c.args, extraKCache: c.args.kCache, extraIndicesInKvcache: null }) : null },
  { name: 'sparse: unsupported h_q', expect: 'error', apply: (c, rng) => {
    if (c.kind !== 'sparse') return null;
    const [b, s, , d] = c.args.q.shape as number[];
    const h = pick(rng, [1, 32, 96, 256]);
    return withMeta({ ...c.args, q: { dtype: 'bf16', shape: [b!, s!, h, d!], data: new Uint16Array(b! * s! * h * d!) } });
  } },
];

function checkOutputs(args: DecodeArgs, res: DecodeResult<Tensor>): string | null {
  const { out, lse } = res;
  if (!isHostTensor(out) || !isHostTensor(lse)) return 'outputs of host inputs must be host tensors';
  const [b, s, h] = args.q.shape as number[];
  if (out.shape.join() !== [b, s, h, 512].join() || lse.shape.join() !== [b, h, s].join()) return `wrong output shapes ${out.shape} / ${lse.shape}`;
  const lseData = lse.data as Float32Array;
  for (let i = 0; i < lseData.length; i++) if (!(Number.isFinite(lseData[i]!) || lseData[i] === Infinity)) return `lse[${i}] = ${lseData[i]}`;
  const o = out.data as Uint16Array;
  const nanMask = out.dtype === 'fp16' ? 0x7c00 : 0x7f80;
  for (let i = 0; i < o.length; i++) if ((o[i]! & nanMask) === nanMask) return `out[${i}] is not finite`;
  return null;
}

async function withTimeout<T>(p: Promise<T>, ms: number): Promise<T | 'timeout'> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<'timeout'>((resolve) => { timer = setTimeout(() => resolve('timeout'), ms); });
  try {
    return await Promise.race([p, t]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Seeded fuzzing of a decode entry point with malformed and valid-but-extreme calls (issue: hostile
 * input). Every call must end in a FlashMLAError (malformed) or in a result that matches the
 * float64 oracle within SPEC §7.1 tolerances (valid), within the time bound.
 */
export async function fuzz(opts: FuzzOptions): Promise<FuzzReport> {
  const rng = new Rng(opts.seed);
  const bound = opts.timeBoundMs ?? 30_000;
  const report: FuzzReport = { calls: 0, results: 0, errors: {}, failures: [], elapsedMs: 0 };
  const start = performance.now();
  for (let call = 0; call < opts.calls; call++) {
    const c = baseCase(rng, opts.seed * 1_000_003 + call);
    let m: Mutation;
    let args: DecodeArgs | null;
    do {
      m = pick(rng, MUTATIONS);
      args = m.apply(c, rng);
    } while (args === null && m.name !== 'args not an object');
    const fail = (problem: string) => report.failures.push({ call, mutation: m.name, caseName: c.name, problem });
    report.calls++;
    try {
      const res = await withTimeout(opts.decode(args as DecodeArgs), bound);
      if (res === 'timeout') { fail(`no answer within ${bound} ms`); continue; }
      report.results++;
      if (m.expect === 'error') { fail('malformed call was accepted'); continue; }
      const bad = checkOutputs(args as DecodeArgs, res);
      if (bad) { fail(bad); continue; }
      const want = oracleDecode(args as DecodeArgs);
      const tol = c.kind === 'dense' ? [TOLERANCES.denseOut, TOLERANCES.denseLse] : [TOLERANCES.sparseOut, TOLERANCES.sparseLse];
      const o = checkIsAllclose('out', res.out as HostTensor, want.out, tol[0]!);
      const l = checkIsAllclose('lse', res.lse as HostTensor, want.lse, tol[1]!);
      if (!o.pass || !l.pass) fail(`differs from the oracle: ${o.reason || l.reason}`);
    } catch (e) {
      if (e instanceof FlashMLAError) {
        report.errors[e.code] = (report.errors[e.code] ?? 0) + 1;
        if (m.expect === 'match') fail(`valid call rejected: ${e.code} ${e.message}`);
      } else {
        fail(`threw a non-FlashMLAError: ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`);
      }
    }
    opts.onProgress?.(call + 1, report);
  }
  report.elapsedMs = performance.now() - start;
  return report;
}
