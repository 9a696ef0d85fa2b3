import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FlashMLAError, type FlashMLAErrorCode } from '../errors.js';
import { DeviceTensor as DeviceTensorClass, type DeviceTensor } from '../native/device-tensor.js';
import { getMlaMetadata } from '../sched-meta.js';
import { extentOf, isHostTensor, viewOf, type DeviceTensorMeta, type HostTensor, type Tensor, type TensorMeta } from '../tensor.js';
import type { CallOptions, DecodeArgs, DecodeResult, HostDecodeArgs } from '../types.js';
import { generateDenseCase, generateSparseCase, type DecodeCase } from './cases.js';
import { checkIsAllclose, TOLERANCES } from './metrics.js';
import { oracleDecode } from './oracle.js';
import { Rng } from './random.js';

type Args = Omit<HostDecodeArgs, 'schedMeta'>;
/**
 * What a mutated call must do: throw a FlashMLAError, succeed and match the oracle, or either
 * (calls whose inputs change while they run: a clean error or the result for the inputs it read).
 */
type Expect = 'error' | 'match' | 'either';

interface Mutation {
  name: string;
  expect: Expect;
  /** The FlashMLAError codes the mutation may produce (required for 'error' and 'either'). */
  codes?: readonly FlashMLAErrorCode[];
  /** Corrupts element values of an index-like tensor (checked on the device only with `validate: true`). */
  values?: true;
  /** Returns the mutated arguments (schedMeta included when the mutation is about it), or null if it does not apply. */
  apply(c: DecodeCase, rng: Rng): DecodeArgs | null;
  /** The call's objects misbehave when read again (getters, Proxies): the oracle gets the generated case instead. */
  oracleFromCase?: true;
  /** Per-call options (e.g. a thread count). */
  options?(rng: Rng): CallOptions;
  /** What the caller does right after issuing the call, while it runs (rewrites, detaches, …). */
  during?(args: DecodeArgs, rng: Rng): void;
  /**
   * A global change (prototype pollution) made just before the call is issued, and its undoing:
   * once the call has settled, or right after it was issued (a planted `then` would also capture
   * the fuzzer's own promises).
   */
  global?: { make(rng: Rng): void; undo(): void; until: 'issued' | 'settled' };
}

/** A decode entry point under test: the public API with a fixed backend, or an instance's method. */
export type DecodeFn = (args: DecodeArgs, options?: CallOptions) => Promise<DecodeResult<Tensor>>;

/**
 * The device side of a CUDA backend under test (FlashMLA instances over one build). With it, the
 * fuzzer also makes device-resident calls: untouched inputs uploaded, device-resident hostile
 * values under `validate: true`, disposed and misaligned device tensors, and tensors of another
 * device.
 */
export interface FuzzDevice {
  /** Copies a host tensor to the device under test. */
  upload(t: HostTensor): Promise<DeviceTensor>;
  download(t: DeviceTensorMeta): Promise<HostTensor>;
  /** Wraps memory of the device under test without owning it. */
  wrap(address: bigint, meta: TensorMeta & { capacity?: number }): Promise<DeviceTensor>;
  /** Copies a host tensor to another device (a second instance), for mixed-device calls. */
  uploadElsewhere?: (t: HostTensor) => Promise<DeviceTensor>;
}

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
  /**
   * Anything else: a non-FlashMLAError throw, E_CUDA / E_INTERNAL (hostile input reached the device),
   * a hang past the time bound, NaN output, a wrong result, a missed error, outputs on the wrong side.
   */
  failures: FuzzFailure[];
  elapsedMs: number;
}

export interface FuzzOptions {
  decode: DecodeFn;
  calls: number;
  seed: number;
  /** Per-call time bound (a call past it counts as a hang). Default 30 s. */
  timeBoundMs?: number;
  /** Kinds of base case (default both; sm100 has no dense kernel, docs/flashmla-interface.md#dense-host-layer). */
  kinds?: readonly ('dense' | 'sparse')[];
  /** Device-resident calls for a CUDA backend (see FuzzDevice). */
  device?: FuzzDevice;
  /** Another backend sharing sched metas with the one under test (docs/flashmla-interface.md#sched-meta-caching consistency across backends). */
  other?: DecodeFn;
  /** Mutation names left out (to measure the rest while a known bug is open). */
  exclude?: readonly string[];
  /** Opens a build the way users do (`FlashMLA.open({ backend: 'cuda', library })`): enables the hostile-loader family. */
  openBuild?: (path: string) => Promise<unknown>;
  onProgress?: (done: number, report: FuzzReport) => void;
}

const withMeta = (a: Args): DecodeArgs => ({ ...a, schedMeta: getMlaMetadata() });
const pick = <T>(rng: Rng, xs: readonly T[]): T => xs[rng.int(0, xs.length)]!;
const retensor = (t: HostTensor, patch: Record<string, unknown>): HostTensor => ({ ...t, ...patch }) as HostTensor;
/** int32 values that are never a valid token, block or length here. */
const HUGE = [2 ** 31 - 1, -(2 ** 31), -2];

/** A small valid case of a random kind (dense, V3.2, MODEL1 with or without the extras). */
function baseCase(rng: Rng, seed: number, kinds: readonly ('dense' | 'sparse')[]): DecodeCase {
  let kind = rng.int(0, 3);
  if (kind === 0 && !kinds.includes('dense')) kind = rng.int(1, 3);
  if (kind !== 0 && !kinds.includes('sparse')) kind = 0;
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
  { name: 'args not an object', expect: 'error', codes: ['E_VALUE'], apply: (_, rng) => pick(rng, [null, 5, 'q']) as never },
  { name: 'schedMeta forged', expect: 'error', codes: ['E_VALUE'], apply: (c, rng) => ({ ...c.args, schedMeta: pick(rng, [{}, null, undefined]) as never }) },
  { name: 'schedMeta of another config', expect: 'error', codes: ['E_SCHED_META'], apply: (c) => {
    const meta = getMlaMetadata();
    meta.bind({ b: 999, sQ: 1, hQ: 1, pageBlockSize: 64, hK: 1, causal: false, isFp8Kvcache: false, topk: null, extraPageBlockSize: null, extraTopk: null });
    return { ...c.args, schedMeta: meta };
  } },
  { name: 'q missing', expect: 'error', codes: ['E_VALUE'], apply: (c) => withMeta({ ...c.args, q: undefined as never }) },
  { name: 'q wrong rank', expect: 'error', codes: ['E_SHAPE'], apply: (c) => {
    const [b, s, h, d] = c.args.q.shape as number[];
    return withMeta({ ...c.args, q: { dtype: c.args.q.dtype, shape: [b! * s!, h!, d!], data: new Uint16Array(b! * s! * h! * d!) } as HostTensor });
  } },
  { name: 'q dtype', expect: 'error', codes: ['E_DTYPE'], apply: (c, rng) => withMeta({ ...c.args, q: retensor(c.args.q, pick(rng, [{ dtype: 'fp32' }, { dtype: 'int32' }, { dtype: 'uint8' }, { dtype: 'f8' }])) }) },
  { name: 'q bad size', expect: 'error', codes: ['E_SHAPE', 'E_BUFFER', 'E_UNSUPPORTED'], apply: (c, rng) => {
    const shape = [...c.args.q.shape];
    shape[rng.int(0, 4)] = pick(rng, [-1, NaN, 1.5, 2 ** 40, 0, Infinity]);
    return withMeta({ ...c.args, q: retensor(c.args.q, { shape }) });
  } },
  { name: 'q bad strides', expect: 'error', codes: ['E_STRIDE', 'E_BUFFER'], apply: (c, rng) => {
    const base = c.args.q.strides ?? [1, 1, 1, 1];
    const strides = pick(rng, [[...base].slice(1), [...base.slice(0, 3), 2], base.map((s) => -s), [...base.slice(0, 3), 0.5], base.map((s, i) => (i === 2 ? s + 1 : s))]);
    return withMeta({ ...c.args, q: retensor(c.args.q, { strides }) });
  } },
  { name: 'q buffer too short', expect: 'error', codes: ['E_BUFFER', 'E_STRIDE'], apply: (c, rng) => withMeta({ ...c.args, q: retensor(c.args.q, pick(rng, [
    { data: (c.args.q.data as Uint16Array).subarray(0, extentOf(viewOf(c.args.q, 'q')) - 1) }, { offset: c.args.q.data.length }, { offset: -8 }])) }) },
  { name: 'q detached buffer', expect: 'error', codes: ['E_BUFFER'], apply: (c) => {
    const data = new Uint16Array(c.args.q.data as Uint16Array);
    structuredClone(data.buffer, { transfer: [data.buffer] });
    return withMeta({ ...c.args, q: retensor(c.args.q, { data }) });
  } },
  { name: 'q NaN value', expect: 'error', codes: ['E_VALUE'], apply: (c) => {
    const data = new Uint16Array(c.args.q.data as Uint16Array);
    const o = c.args.q.offset ?? 0;
    data[o] = 0x7fc0;
    return withMeta({ ...c.args, q: retensor(c.args.q, { data }) });
  } },
  { name: 'fake device tensor', expect: 'error', codes: ['E_VALUE'], apply: (c) => withMeta({
    ...c.args, q: { dtype: c.args.q.dtype, shape: c.args.q.shape, device: 0, capacity: 2 ** 30, address: 0n, disposed: false } as never,
  }) },
  { name: 'headDimV', expect: 'error', codes: ['E_VALUE'], apply: (c, rng) => withMeta({ ...c.args, headDimV: pick(rng, [576, 0, NaN, '512']) as never }) },
  { name: 'softmaxScale non-finite', expect: 'error', codes: ['E_VALUE'], apply: (c, rng) => withMeta({ ...c.args, softmaxScale: pick(rng, [NaN, Infinity, -Infinity, 'x']) as never }) },
  { name: 'empty batch', expect: 'error', codes: ['E_SHAPE'], apply: (c) => {
    const [, s, h, d] = c.args.q.shape as number[];
    return withMeta({ ...c.args, q: { dtype: c.args.q.dtype, shape: [0, s!, h!, d!], data: new Uint16Array(0) } as HostTensor });
  } },
  { name: 'kCache dtype/layout', expect: 'error', codes: ['E_DTYPE', 'E_STRIDE', 'E_SHAPE', 'E_BUFFER'], apply: (c, rng) => withMeta({ ...c.args, kCache: retensor(c.args.kCache, pick(rng, [
    { dtype: c.kind === 'dense' ? 'uint8' : 'bf16' }, { strides: [...(c.args.kCache.strides ?? []).slice(0, 1), 1, 1, 1] }, { shape: [...c.args.kCache.shape.slice(0, 3), 600] }])) }) },
  { name: 'dense: used block id out of range', expect: 'error', codes: ['E_RANGE'], values: true, apply: (c, rng) => {
    if (c.kind !== 'dense') return null;
    const L = c.args.cacheSeqlens!.data as Int32Array;
    const i = L.findIndex((x) => x > 0);
    if (i < 0) return null;
    const cols = c.args.blockTable!.shape[1]!;
    return withMeta({ ...c.args, blockTable: setInt(c.args.blockTable!, i * cols, pick(rng, [...HUGE, c.args.kCache.shape[0]!, -1])) });
  } },
  { name: 'dense: cacheSeqlens out of range', expect: 'error', codes: ['E_RANGE'], values: true, apply: (c, rng) => c.kind === 'dense'
    ? withMeta({ ...c.args, cacheSeqlens: setInt(c.args.cacheSeqlens!, 0, pick(rng, [-1, ...HUGE, c.args.blockTable!.shape[1]! * 64 + 1])) }) : null },
  { name: 'dense: sparse-only argument', expect: 'error', codes: ['E_UNSUPPORTED'], apply: (c) => c.kind === 'dense'
    ? withMeta({ ...c.args, topkLength: { dtype: 'int32', shape: [c.args.q.shape[0]!], data: new Int32Array(c.args.q.shape[0]!) } }) : null },
  { name: 'sparse: used index out of range', expect: 'error', codes: ['E_RANGE'], values: true, apply: (c, rng) => {
    if (c.kind !== 'sparse') return null;
    const lens = c.args.topkLength?.data as Int32Array | undefined;
    if (lens && lens[0] === 0) return null;
    const tokens = c.args.kCache.shape[0]! * c.args.kCache.shape[1]!;
    return withMeta({ ...c.args, indices: setInt(c.args.indices!, 0, pick(rng, [...HUGE, tokens, -3])) });
  } },
  { name: 'sparse: topkLength out of range', expect: 'error', codes: ['E_RANGE'], values: true, apply: (c, rng) => c.args.topkLength
    ? withMeta({ ...c.args, topkLength: setInt(c.args.topkLength, 0, pick(rng, [-1, c.args.indices!.shape[2]! + 1, 2 ** 31 - 1])) }) : null },
  { name: 'sparse: extraTopkLength out of range', expect: 'error', codes: ['E_RANGE'], values: true, apply: (c) => c.args.extraTopkLength
    ? withMeta({ ...c.args, extraTopkLength: setInt(c.args.extraTopkLength, 0, c.args.extraIndicesInKvcache!.shape[2]! + 64) }) : null },
  { name: 'sparse: topk not a multiple of 64', expect: 'error', codes: ['E_UNSUPPORTED', 'E_SHAPE', 'E_BUFFER'], apply: (c) => c.kind === 'sparse'
    ? withMeta({ ...c.args, indices: retensor(c.args.indices!, { shape: [...c.args.indices!.shape.slice(0, 2), 32] }) }) : null },
  { name: 'sparse: causal / not fp8', expect: 'error', codes: ['E_UNSUPPORTED'], apply: (c, rng) => c.kind === 'sparse'
    ? withMeta({ ...c.args, ...pick(rng, [{ causal: true }, { isFp8Kvcache: false }]) }) : null },
  { name: 'sparse: wrong layout for q', expect: 'error', codes: ['E_SHAPE', 'E_UNSUPPORTED'], apply: (c) => {
    if (c.kind !== 'sparse') return null;
    const [b, s, h, d] = c.args.q.shape as number[];
    const d2 = d === 576 ? 512 : 576;
    return withMeta({ ...c.args, q: { dtype: 'bf16', shape: [b!, s!, h!, d2], data: new Uint16Array(b! * s! * h! * d2) } });
  } },
  { name: 'sparse: NaN sink', expect: 'error', codes: ['E_VALUE'], apply: (c) => c.kind === 'sparse'
    ? withMeta({ ...c.args, attnSink: { dtype: 'fp32', shape: [c.args.q.shape[2]!], data: new Float32Array(c.args.q.shape[2]!).fill(NaN) } }) : null },
  { name: 'sparse: extra cache without extra indices', expect: 'error', codes: ['E_VALUE'], apply: (c) => c.kind === 'sparse'
    ? withMeta({ ...c.args, extraKCache: c.args.kCache, extraIndicesInKvcache: null }) : null },
  { name: 'sparse: unsupported h_q', expect: 'error', codes: ['E_UNSUPPORTED', 'E_SHAPE'], apply: (c, rng) => {
    if (c.kind !== 'sparse') return null;
    const [b, s, , d] = c.args.q.shape as number[];
    const h = pick(rng, [1, 32, 96, 256]);
    return withMeta({ ...c.args, q: { dtype: 'bf16', shape: [b!, s!, h, d!], data: new Uint16Array(b! * s! * h * d!) } });
  } },
  // Round two: inputs that change under the call, look-alikes, pollution, sizes, threads.
  { name: 'int32 inputs rewritten while the call runs', expect: 'match', apply: (c) => withMeta(c.args), during: (args) => {
    for (const f of INDEX_LIKE) {
      const t = args[f];
      if (t !== null && t !== undefined && isHostTensor(t)) (t.data as Int32Array).fill(2 ** 30);
    }
  } },
  { name: 'q or cache detached while the call runs', expect: 'either', codes: ['E_BUFFER'], apply: (c) => withMeta(c.args), during: (args, rng) => {
    const t = (rng.next() < 0.5 ? args.q : args.kCache) as HostTensor;
    structuredClone(t.data.buffer, { transfer: [t.data.buffer as ArrayBuffer] });
  } },
  { name: 'data getter answers differently on a second read', expect: 'match', oracleFromCase: true, apply: (c) => {
    const q = c.args.q;
    let reads = 0;
    const sneaky = { dtype: q.dtype, shape: q.shape, strides: q.strides, offset: q.offset, get data() { return reads++ === 0 ? q.data : new Uint16Array(1); } };
    return withMeta({ ...c.args, q: sneaky as HostTensor });
  } },
  { name: 'typed-array subclass with a lying length', expect: 'match', oracleFromCase: true, apply: (c) => {
    class Liar extends Uint8Array {
      override get length(): number {
        return 1;
      }
    }
    const kv = c.args.kCache;
    if (kv.dtype !== 'uint8') return null;
    return withMeta({ ...c.args, kCache: retensor(kv, { data: new Liar(kv.data.buffer as ArrayBuffer, kv.data.byteOffset, kv.data.length) }) });
  } },
  { name: 'shape Proxy answering differently each read', expect: 'match', oracleFromCase: true, apply: (c) => {
    let n = 0;
    const real = [...c.args.q.shape];
    const shape = new Proxy(real, { get: (t, k) => (k === '0' && n++ > 0 ? 2 ** 40 : Reflect.get(t, k)) });
    return withMeta({ ...c.args, q: retensor(c.args.q, { shape }) });
  } },
  { name: 'uncloneable tensor objects (own method, Proxy)', expect: 'match', oracleFromCase: true, apply: (c, rng) => withMeta({
    ...c.args, q: rng.next() < 0.5 ? retensor(c.args.q, { toJSON: () => 'x', valueOf: () => 1 }) : new Proxy({ ...c.args.q }, {}),
  }) },
  { name: 'throwing getter', expect: 'error', codes: ['E_VALUE'], apply: (c, rng) => {
    const key = pick(rng, ['shape', 'dtype', 'data', 'strides']);
    const q = { ...c.args.q };
    Object.defineProperty(q, key, { get: () => { throw new Error('getter'); }, enumerable: true });
    return withMeta({ ...c.args, q: q as HostTensor });
  } },
  { name: 'inherited dtype names', expect: 'error', codes: ['E_DTYPE'], apply: (c, rng) => withMeta({
    ...c.args, q: retensor(c.args.q, { dtype: pick(rng, ['constructor', 'toString', '__proto__', 'hasOwnProperty']) }),
  }) },
  { name: 'prototype pollution (offset, strides, scale, options)', expect: 'match', apply: (c) => withMeta(c.args), global: {
    make: (rng) => {
      const key = pick(rng, POLLUTED);
      (Object.prototype as Record<string, unknown>)[key] = key === 'strides' ? [0, 0, 0, 0] : key === 'validate' ? true : 8;
    },
    undo: () => { for (const k of POLLUTED) delete (Object.prototype as Record<string, unknown>)[k]; },
    until: 'settled',
  } },
  { name: 'Object.prototype.then planted', expect: 'error', codes: ['E_VALUE'], apply: (c) => withMeta(c.args), global: {
    make: () => { (Object.prototype as Record<string, unknown>).then = () => undefined; },
    undo: () => { delete (Object.prototype as Record<string, unknown>).then; },
    until: 'issued',
  } },
  { name: 'DeviceTensor prototype without a tensor', expect: 'error', codes: ['E_VALUE'], apply: (c) => withMeta({ ...c.args, q: Object.create(DeviceTensorClass.prototype) as never }) },
  { name: 'zero strides claiming a huge extent', expect: 'error', codes: ['E_UNSUPPORTED', 'E_SHAPE'], apply: (c, rng) => {
    const [b, s, h, d] = c.args.q.shape as number[];
    const shape = pick(rng, [[b!, s!, 2 ** 40, d!], [2 ** 40, s!, h!, d!], [b!, 2 ** 33, h!, d!]]);
    return withMeta({ ...c.args, q: retensor(c.args.q, { shape, strides: [0, 0, 0, 1], offset: 0 }) });
  } },
  { name: 'cache at a byte offset past 4 GiB', expect: 'match', apply: (c) => {
    const kv = c.args.kCache;
    const big = farBuffer(kv.data.byteLength + 64);
    const at = 2 ** 32 + 16;
    const Ctor = kv.data.constructor as new (b: ArrayBuffer, o: number, n: number) => typeof kv.data;
    const data = new Ctor(big, at, kv.data.length);
    data.set(kv.data as never);
    return withMeta({ ...c.args, kCache: retensor(kv, { data }) });
  } },
  { name: 'thread counts', expect: 'either', codes: ['E_VALUE'], apply: (c) => withMeta(c.args),
    options: (rng) => ({ threads: pick(rng, [0, -1, 1.5, NaN, 200, 1e9, 1, 2, 3, '2'] as number[]) }) },
];

const POLLUTED = ['offset', 'strides', 'softmaxScale', 'validate', 'threads', 'device', 'data'] as const;

let far: ArrayBuffer | undefined;
/** One buffer larger than 4 GiB, made once (its pages are committed only where written). */
function farBuffer(bytes: number): ArrayBuffer {
  if (far === undefined || far.byteLength < 2 ** 32 + 16 + bytes) far = new ArrayBuffer(2 ** 32 + 16 + Math.max(bytes, 1 << 24));
  return far;
}

/** The tensor arguments of DecodeArgs, in the order they are uploaded. */
const TENSOR_FIELDS = [
  'q', 'kCache', 'blockTable', 'cacheSeqlens', 'indices', 'attnSink', 'extraKCache', 'extraIndicesInKvcache', 'topkLength', 'extraTopkLength',
] as const;
type TensorField = (typeof TENSOR_FIELDS)[number];
const INDEX_LIKE: readonly TensorField[] = ['blockTable', 'cacheSeqlens', 'indices', 'extraIndicesInKvcache', 'topkLength', 'extraTopkLength'];

/** One prepared call: what is passed, its all-host equivalent (for the oracle), and device memory to free after it. */
interface Call {
  args: DecodeArgs;
  options?: CallOptions;
  host: DecodeArgs;
  uploads: DeviceTensor[];
  /** Instead of a decode: another operation that must fail cleanly (loading a hostile build). */
  instead?: () => Promise<unknown>;
}

/** A mutation that needs a device or a second backend and builds the whole call itself. */
interface CallMutation {
  name: string;
  expect: Expect;
  codes?: readonly FlashMLAErrorCode[];
  needs: 'device' | 'elsewhere' | 'other' | 'loader';
  prepare(c: DecodeCase, rng: Rng, env: { device: FuzzDevice; other: DecodeFn; openBuild: (path: string) => Promise<unknown> }): Promise<Call | null>;
}

const presentFields = (args: DecodeArgs): TensorField[] => TENSOR_FIELDS.filter((f) => args[f] !== null && args[f] !== undefined);

/** `args` with the host tensors named in `fields` replaced by device copies (recorded in `uploads`). */
async function uploadFields(dev: FuzzDevice, args: DecodeArgs, fields: readonly TensorField[], uploads: DeviceTensor[]): Promise<DecodeArgs> {
  const out: DecodeArgs = { ...args };
  for (const f of fields) {
    const t = args[f];
    if (t === null || t === undefined || !isHostTensor(t)) continue;
    const d = await dev.upload(t);
    uploads.push(d);
    (out as unknown as Record<TensorField, Tensor>)[f] = d;
  }
  return out;
}

/** A small valid case of the other family, so that its sched-meta config differs (isFp8Kvcache). */
function otherFamily(c: DecodeCase, seed: number): DecodeCase {
  return c.kind === 'dense'
    ? generateSparseCase({ b: 1, sQ: 1, hQ: 64, dQK: 512, main: { sK: 40, topk: 64, blockSize: 64 } }, seed)
    : generateDenseCase({ b: 1, sQ: 1, sK: 20, hQ: 1, hK: 1, varlen: false, causal: false }, seed);
}

const VALUE_MUTATIONS = MUTATIONS.filter((m) => m.values);

/** Files that are no FlashMLA build: each must be refused with a reason, never loaded. */
const HOSTILE_TARGETS: readonly ((dir: string) => string)[] = [
  (dir) => { const p = join(dir, 'fifo.so'); if (!existsSync(p)) execFileSync('mkfifo', [p]); return p; },
  (dir) => dir,
  () => '/dev/zero',
  (dir) => { const p = join(dir, 'text.so'); writeFileSync(p, 'not a library'); return p; },
  (dir) => { const p = join(dir, 'short.so'); writeFileSync(p, Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1])); return p; },
  (dir) => { const p = join(dir, 'truncated.so'); writeFileSync(p, readFileSync(process.execPath).subarray(0, 8192)); return p; },
  (dir) => join(dir, 'missing.so'),
];
let targetDir: string | undefined;

const CALL_MUTATIONS: readonly CallMutation[] = [
  { name: 'hostile loader target', expect: 'error', codes: ['E_BACKEND'], needs: 'loader', prepare: async (c, rng, { openBuild }) => {
    targetDir ??= mkdtempSync(join(tmpdir(), 'flashmla-fuzz-targets-'));
    const path = pick(rng, HOSTILE_TARGETS)(targetDir);
    const host = withMeta(c.args);
    return { args: host, host, uploads: [], instead: () => openBuild(path) };
  } },
  { name: 'device: all inputs resident', expect: 'match', needs: 'device', prepare: async (c, rng, { device }) => {
    const host = withMeta(c.args);
    const uploads: DeviceTensor[] = [];
    return { args: await uploadFields(device, host, presentFields(host), uploads), options: { validate: rng.next() < 0.5 }, host, uploads };
  } },
  // Device-resident indices are the caller's contract unless validate: true (docs/robustness.md).
  { name: 'device: hostile index values, validate: true', expect: 'error', codes: ['E_RANGE'], needs: 'device', prepare: async (c, rng, { device }) => {
    const host = pick(rng, VALUE_MUTATIONS).apply(c, rng);
    if (host === null) return null;
    const uploads: DeviceTensor[] = [];
    return { args: await uploadFields(device, host, presentFields(host), uploads), options: { validate: true }, host, uploads };
  } },
  { name: 'device: disposed tensor', expect: 'error', codes: ['E_DISPOSED'], needs: 'device', prepare: async (c, rng, { device }) => {
    const host = withMeta(c.args);
    const uploads: DeviceTensor[] = [];
    const fields = presentFields(host);
    const args = await uploadFields(device, host, fields, uploads);
    (args[pick(rng, fields)] as DeviceTensor).dispose();
    return { args, host, uploads };
  } },
  // docs/flashmla-interface.md#device-and-stream: one device per call.
  { name: 'device: tensor of another device', expect: 'error', codes: ['E_DEVICE'], needs: 'elsewhere', prepare: async (c, rng, { device }) => {
    const host = withMeta(c.args);
    const uploads: DeviceTensor[] = [];
    const fields = presentFields(host);
    const victim = pick(rng, fields);
    const args = await uploadFields(device, host, fields.filter((f) => f !== victim && rng.next() < 0.7), uploads);
    const foreign = await device.uploadElsewhere!(host[victim] as HostTensor);
    uploads.push(foreign);
    return { args: { ...args, [victim]: foreign }, host, uploads };
  } },
  // docs/flashmla-interface.md#sm90-cache-loads / docs/flashmla-interface.md#tma-alignment: q and the cache need 16-byte aligned bases; a wrapped pointer 2–8 bytes past one.
  { name: 'device: misaligned base', expect: 'error', codes: ['E_STRIDE'], needs: 'device', prepare: async (c, rng, { device }) => {
    const host = withMeta(c.args);
    const victim = pick(rng, ['q', 'kCache'] as const);
    const t = host[victim] as HostTensor;
    const view = viewOf(t, victim);
    const shift = pick(rng, t.dtype === 'uint8' ? [1, 4, 8] : [1, 2, 4]);
    const used = t.data.subarray(view.offset, extentOf(view));
    const padded = new (used.constructor as new (n: number) => typeof used)(used.length + shift);
    padded.set(used as never, shift);
    const uploads: DeviceTensor[] = [];
    const raw = await device.upload({ dtype: t.dtype, shape: [padded.length], data: padded } as HostTensor);
    uploads.push(raw);
    const wrapped = await device.wrap(raw.address, { dtype: t.dtype, shape: view.shape, strides: view.strides, offset: shift, capacity: padded.length });
    uploads.push(wrapped);
    const args = await uploadFields(device, host, presentFields(host).filter((f) => f !== victim && rng.next() < 0.5), uploads);
    return { args: { ...args, [victim]: wrapped }, host, uploads };
  } },
  // docs/flashmla-interface.md#sched-meta-caching: a sched meta records the first call's config, whichever backend made it.
  { name: 'schedMeta shared with another backend', expect: 'match', needs: 'other', prepare: async (c, _rng, { other }) => {
    const host = withMeta(c.args);
    await other(host);
    return { args: host, host, uploads: [] };
  } },
  { name: 'schedMeta bound by another backend to another config', expect: 'error', codes: ['E_SCHED_META'], needs: 'other', prepare: async (c, rng, { other }) => {
    const meta = getMlaMetadata();
    await other({ ...otherFamily(c, rng.int(0, 2 ** 30)).args, schedMeta: meta });
    const host = { ...c.args, schedMeta: meta };
    return { args: host, host, uploads: [] };
  } },
];

function checkOutputs(args: DecodeArgs, res: DecodeResult<HostTensor>): string | null {
  const { out, lse } = res;
  const [b, s, h] = args.q.shape as number[];
  if (out.shape.join() !== [b, s, h, 512].join() || lse.shape.join() !== [b, h, s].join()) return `wrong output shapes ${out.shape} / ${lse.shape}`;
  const lseData = lse.data as Float32Array;
  for (let i = 0; i < lseData.length; i++) if (!(Number.isFinite(lseData[i]!) || lseData[i] === Infinity)) return `lse[${i}] = ${lseData[i]}`;
  const o = out.data as Uint16Array;
  const nanMask = out.dtype === 'fp16' ? 0x7c00 : 0x7f80;
  for (let i = 0; i < o.length; i++) if ((o[i]! & nanMask) === nanMask) return `out[${i}] is not finite`;
  return null;
}

/** Host copies of the outputs (device outputs are downloaded, then disposed), or what is wrong with where they live. */
async function hostOutputs(args: DecodeArgs, res: DecodeResult<Tensor>, device: FuzzDevice | undefined): Promise<DecodeResult<HostTensor> | string> {
  const onDevice = !isHostTensor(args.q);
  if (isHostTensor(res.out) && isHostTensor(res.lse)) return onDevice ? 'outputs of a device-resident q must be device tensors' : { out: res.out, lse: res.lse };
  if (!onDevice || device === undefined) return 'outputs of a host q must be host tensors';
  try {
    return { out: await device.download(res.out as DeviceTensorMeta), lse: await device.download(res.lse as DeviceTensorMeta) };
  } finally {
    (res.out as DeviceTensor).dispose();
    (res.lse as DeviceTensor).dispose();
  }
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
 * Picks a mutation and builds its call. Plain mutations keep their inputs on the host, or (with a
 * device, half the time) get their untouched inputs uploaded: the mutated ones stay on the host,
 * where their values are always checked.
 */
interface Prepared {
  name: string;
  expect: Expect;
  codes: readonly FlashMLAErrorCode[] | undefined;
  call: Call;
  during?: Mutation['during'];
  global?: Mutation['global'];
}

/** A deep copy of a call's host tensors: the oracle's inputs when the caller changes them mid-call. */
function snapshotHost(args: DecodeArgs): DecodeArgs {
  const out: Record<string, unknown> = { ...args };
  for (const f of TENSOR_FIELDS) {
    const t = args[f];
    if (t !== null && t !== undefined && isHostTensor(t)) out[f] = { ...t, data: t.data.slice() };
  }
  return out as unknown as DecodeArgs;
}

async function prepare(c: DecodeCase, rng: Rng, opts: FuzzOptions, extra: readonly CallMutation[]): Promise<Prepared> {
  for (;;) {
    const i = rng.int(0, MUTATIONS.length + extra.length);
    if (i >= MUTATIONS.length) {
      const m = extra[i - MUTATIONS.length]!;
      if (opts.exclude?.includes(m.name)) continue;
      const call = await m.prepare(c, rng, { device: opts.device!, other: opts.other!, openBuild: opts.openBuild! });
      if (call !== null) return { name: m.name, expect: m.expect, codes: m.codes, call };
      continue;
    }
    const m = MUTATIONS[i]!;
    if (opts.exclude?.includes(m.name)) continue;
    const args = m.apply(c, rng);
    if (args === null && m.name !== 'args not an object') continue;
    const host = m.oracleFromCase ? withMeta(c.args) : m.during !== undefined ? snapshotHost(args as DecodeArgs) : args as DecodeArgs;
    const call: Call = { args: args as DecodeArgs, host, uploads: [], options: m.options?.(rng) };
    const hooks = { codes: m.codes, during: m.during, global: m.global };
    if (opts.device === undefined || args === null || typeof args !== 'object' || m.during !== undefined || rng.next() < 0.5) {
      return { name: m.name, expect: m.expect, call, ...hooks };
    }
    // Which block-table entries and indices are used depends on the lengths: with hostile values
    // on the host, the index-like tensors stay there too (on the device they are the caller's contract).
    const untouched = presentFields(args).filter((f) => args[f] === c.args[f] && !(m.values && INDEX_LIKE.includes(f)));
    call.args = await uploadFields(opts.device, args, untouched, call.uploads);
    return { name: `${m.name} [device-resident]`, expect: m.expect, call, ...hooks };
  }
}

/**
 * Seeded fuzzing of a decode entry point with malformed and valid-but-extreme calls (hostile
 * input). Every call must end in a FlashMLAError (malformed) or in a result that matches the
 * float64 oracle within FlashMLA's tolerances (valid), within the time bound.
 */
export async function fuzz(opts: FuzzOptions): Promise<FuzzReport> {
  const rng = new Rng(opts.seed);
  const bound = opts.timeBoundMs ?? 30_000;
  const kinds = opts.kinds ?? ['dense', 'sparse'];
  const extra = CALL_MUTATIONS.filter((m) => (m.needs === 'other' ? opts.other !== undefined
    : m.needs === 'loader' ? opts.openBuild !== undefined
      : opts.device !== undefined && (m.needs === 'device' || opts.device.uploadElsewhere !== undefined)));
  const report: FuzzReport = { calls: 0, results: 0, errors: {}, failures: [], elapsedMs: 0 };
  const start = performance.now();
  for (let call = 0; call < opts.calls; call++) {
    const c = baseCase(rng, opts.seed * 1_000_003 + call, kinds);
    report.calls++;
    let prepared: Awaited<ReturnType<typeof prepare>>;
    try {
      prepared = await prepare(c, rng, opts, extra);
    } catch (e) {
      report.failures.push({ call, mutation: '(preparing the call)', caseName: c.name, problem: e instanceof Error ? `${e.name}: ${e.message}` : String(e) });
      opts.onProgress?.(call + 1, report);
      continue;
    }
    const { name, expect, codes, during, global, call: { args, options, host, uploads, instead } } = prepared;
    const fail = (problem: string) => report.failures.push({ call, mutation: name, caseName: c.name, problem });
    try {
      global?.make(rng);
      let pending: Promise<unknown>;
      try {
        pending = instead !== undefined ? instead() : opts.decode(args, options);
      } finally {
        if (global?.until === 'issued') global.undo();
      }
      during?.(args, rng);
      let answer: unknown;
      try {
        answer = await withTimeout(pending, bound);
      } finally {
        if (global?.until === 'settled') global.undo();
      }
      if (answer === 'timeout') { fail(`no answer within ${bound} ms`); continue; }
      if (instead !== undefined) { fail('a hostile build was accepted'); continue; }
      const res = answer as DecodeResult<Tensor>;
      report.results++;
      const got = await hostOutputs(args, res, opts.device);
      if (expect === 'error') { fail('malformed call was accepted'); continue; }
      if (typeof got === 'string') { fail(got); continue; }
      const bad = checkOutputs(host, got);
      if (bad) { fail(bad); continue; }
      const want = oracleDecode(host);
      const tol = c.kind === 'dense' ? [TOLERANCES.denseOut, TOLERANCES.denseLse] : [TOLERANCES.sparseOut, TOLERANCES.sparseLse];
      const o = checkIsAllclose('out', got.out, want.out, tol[0]!);
      const l = checkIsAllclose('lse', got.lse, want.lse, tol[1]!);
      if (!o.pass || !l.pass) fail(`differs from the oracle: ${o.reason || l.reason}`);
    } catch (e) {
      if (e instanceof FlashMLAError) {
        report.errors[e.code] = (report.errors[e.code] ?? 0) + 1;
        if (expect === 'match') fail(`valid call rejected: ${e.code} ${e.message}`);
        // Hostile input must be rejected before any launcher runs: an error the device or a
        // launcher reported, or a broken invariant, is a failure even for a malformed call.
        else if (e.code === 'E_CUDA' || e.code === 'E_INTERNAL' || e.code === 'E_DEVICE_LOST') fail(`reached the device: ${e.code} ${e.message}`);
        // Each malformed input names what is wrong with it: the code must be one it declares.
        else if (codes !== undefined && !codes.includes(e.code)) fail(`wrong error code ${e.code} (expected ${codes.join(' or ')}): ${e.message}`);
      } else {
        fail(`threw a non-FlashMLAError: ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`);
      }
    } finally {
      for (const u of uploads) u.dispose();
      opts.onProgress?.(call + 1, report);
    }
  }
  report.elapsedMs = performance.now() - start;
  return report;
}
