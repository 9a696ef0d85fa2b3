// The fuzzer's catalogue: the base cases and every mutation family, each with what it must do
// (a declared FlashMLAError code, or a result that matches the oracle). The runner is fuzz.ts.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FlashMLAErrorCode } from '../errors.js';
import { DeviceTensor as DeviceTensorClass, type DeviceTensor } from '../device-tensor.js';
import type { FlashMLA } from '../flashmla.js';
import { getMlaMetadata } from '../sched-meta.js';
import { extentOf, isHostTensor, viewOf, type DeviceTensorMeta, type HostTensor, type Tensor, type TensorMeta } from '../tensor.js';
import type { CallOptions, DecodeArgs, DecodeResult, HostDecodeArgs } from '../types.js';
import { TENSOR_ARG_KEYS } from '../validate/args.js';
import { generateDenseCase, generateSparseCase, type DecodeCase } from './cases.js';
import { Rng } from './random.js';

export type Args = Omit<HostDecodeArgs, 'schedMeta'>;
/**
 * What a mutated call must do: throw a FlashMLAError, succeed and match the oracle, or either
 * (calls whose inputs change while they run: a clean error or the result for the inputs it read).
 */
export type Expect = 'error' | 'match' | 'either';

export interface Mutation {
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
  global?: GlobalMutation;
}

/** A global change (prototype pollution) made just before a fuzz call is issued, and its undoing. */
export interface GlobalMutation {
  make(rng: Rng): void;
  undo(): void;
  /** Undone once the call has settled, or right after it was issued. */
  until: 'issued' | 'settled';
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
  /** Copies a device tensor of the device under test to the host. */
  download(t: DeviceTensorMeta): Promise<HostTensor>;
  /** Wraps memory of the device under test without owning it. */
  wrap(address: bigint, meta: TensorMeta & { capacity?: number }): Promise<DeviceTensor>;
  /** Copies a host tensor to another device (a second instance), for mixed-device calls. */
  uploadElsewhere?: (t: HostTensor) => Promise<DeviceTensor>;
}

/** The device side of a fuzz run: `fm` is the instance under test, `elsewhere` one on another device. */
export function fuzzDeviceOf(fm: Pick<FlashMLA, 'upload' | 'download' | 'wrap'>, elsewhere: Pick<FlashMLA, 'upload'>): FuzzDevice {
  return {
    upload: (t) => fm.upload(t),
    download: (t) => fm.download(t),
    wrap: (address, meta) => fm.wrap(address, meta),
    uploadElsewhere: (t) => elsewhere.upload(t),
  };
}

export const withMeta = (a: Args): DecodeArgs => ({ ...a, schedMeta: getMlaMetadata() });
export const pick = <T>(rng: Rng, xs: readonly T[]): T => xs[rng.int(0, xs.length)]!;
const retensor = (t: HostTensor, patch: Record<string, unknown>): HostTensor => ({ ...t, ...patch }) as HostTensor;
/** int32 values that are never a valid token, block or length here. */
const HUGE = [2 ** 31 - 1, -(2 ** 31), -2];

/** A small valid case of a random kind (dense, V3.2, MODEL1 with or without the extras). */
export function baseCase(rng: Rng, seed: number, kinds: readonly ('dense' | 'sparse')[]): DecodeCase {
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

export const MUTATIONS: readonly Mutation[] = [
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
export const TENSOR_FIELDS = TENSOR_ARG_KEYS;
export type TensorField = (typeof TENSOR_FIELDS)[number];
export const INDEX_LIKE: readonly TensorField[] = ['blockTable', 'cacheSeqlens', 'indices', 'extraIndicesInKvcache', 'topkLength', 'extraTopkLength'];

/** One prepared call: what is passed, its all-host equivalent (for the oracle), and device memory to free after it. */
export interface Call {
  args: DecodeArgs;
  options?: CallOptions;
  host: DecodeArgs;
  uploads: DeviceTensor[];
  /** Instead of a decode: another operation that must fail cleanly (loading a hostile build). */
  instead?: () => Promise<unknown>;
}

/** A mutation that needs a device or a second backend and builds the whole call itself. */
export interface CallMutation {
  name: string;
  expect: Expect;
  codes?: readonly FlashMLAErrorCode[];
  needs: 'device' | 'elsewhere' | 'other' | 'loader';
  prepare(c: DecodeCase, rng: Rng, env: { device: FuzzDevice; other: DecodeFn; openBuild: (path: string) => Promise<unknown> }): Promise<Call | null>;
}

export const presentFields = (args: DecodeArgs): TensorField[] => TENSOR_FIELDS.filter((f) => args[f] !== null && args[f] !== undefined);

/** `args` with the host tensors named in `fields` replaced by device copies (recorded in `uploads`). */
export async function uploadFields(dev: FuzzDevice, args: DecodeArgs, fields: readonly TensorField[], uploads: DeviceTensor[]): Promise<DecodeArgs> {
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

export const CALL_MUTATIONS: readonly CallMutation[] = [
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

