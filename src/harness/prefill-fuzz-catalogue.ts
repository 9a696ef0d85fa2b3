// The sparse prefill fuzzer's catalogue: tiny base cases of FlashMLA's prefill generator and every
// mutation family, each with what it must do (a result matching the yardstick, or a FlashMLAError
// with a declared code naming a declared argument). The runner is prefill-fuzz.ts.
import type { FlashMLAErrorCode } from '../errors.js';
import { DeviceTensor as DeviceTensorClass, type DeviceTensor } from '../device-tensor.js';
import { extentOf, isHostTensor, viewOf, type HostTensor, type Tensor } from '../tensor.js';
import type { CallOptions, HostSparseFwdArgs, SparseFwdArgs, SparseFwdResult } from '../types.js';
import { SPARSE_FWD_TENSOR_KEYS } from '../validate/args.js';
import { pick, type Expect, type FuzzDevice, type GlobalMutation } from './fuzz-catalogue.js';
import { generatePrefillCase, invalidIndexCandidates, type PrefillCase } from './prefill-cases.js';
import type { Rng } from './random.js';

/** A sparse prefill entry point under test: the public API with a fixed backend, or an instance's method. */
export type SparseFwdFn = (args: SparseFwdArgs, options?: CallOptions) => Promise<SparseFwdResult<Tensor>>;

/** The tensor arguments of a prefill call. */
export type PrefillField = (typeof SPARSE_FWD_TENSOR_KEYS)[number];
/** The int32 arguments whose values say which kv rows are read. */
export const PREFILL_INDEX_LIKE: readonly PrefillField[] = ['indices', 'topkLength'];

export interface PrefillMutation {
  name: string;
  expect: Expect;
  /** The FlashMLAError codes it may produce (required for 'error' and 'either'). */
  codes?: readonly FlashMLAErrorCode[];
  /**
   * The arguments the error may name (`FlashMLAError.argument`, or a member of one: 'q.shape').
   * `undefined` in the list: an error about no single argument (a polluted Object.prototype).
   */
  names?: readonly (string | undefined)[];
  /** Corrupts element values of an index-like tensor (checked on the device only with `validate: true`). */
  values?: true;
  /**
   * The outcome depends on which kv rows the indices select: with a device, the index-like inputs
   * stay on the host (device-resident ones are the caller's contract, not read by validation).
   */
  readsIndices?: true;
  /** The arguments object itself misbehaves when read: never uploaded in part. */
  hostOnly?: true;
  /** Returns the mutated arguments, or null if it does not apply to the case (or to the backend's kernels). */
  apply(c: PrefillCase, rng: Rng, arch?: PrefillArch): SparseFwdArgs | null;
  /** The call's objects misbehave when read again: the yardstick gets the generated case instead. */
  oracleFromCase?: true;
  /** Per-call options. */
  options?(rng: Rng): CallOptions;
  /** What the caller does right after issuing the call, while it runs. */
  during?(args: SparseFwdArgs, rng: Rng): void;
  /** A global change made just before the call and undone once it settled (or right after it was issued). */
  global?: GlobalMutation;
}

/** One prepared call: what is passed, its all-host equivalent (for the yardstick), device memory to free after it. */
export interface PrefillCall {
  args: SparseFwdArgs;
  options?: CallOptions;
  host: HostSparseFwdArgs;
  uploads: DeviceTensor[];
  /** Instead of the entry point under test: another call that must fail as declared. */
  instead?: () => Promise<unknown>;
}

/** A mutation that needs a device and builds the whole call itself. */
export interface PrefillCallMutation {
  name: string;
  expect: Expect;
  codes?: readonly FlashMLAErrorCode[];
  names?: readonly (string | undefined)[];
  prepare(c: PrefillCase, rng: Rng, env: { device: FuzzDevice; reference: SparseFwdFn }): Promise<PrefillCall | null>;
}

type Args = HostSparseFwdArgs;
const retensor = (t: HostTensor, patch: Record<string, unknown>): HostTensor => ({ ...t, ...patch }) as HostTensor;
const BF16_NON_FINITE = [0x7fc0, 0x7f80, 0xff80] as const;

/**
 * The kernels a CUDA backend runs, for the rules FlashMLA checks per architecture: sm90's prefill
 * kernel and sm100's head-128 one load indices in blocks of 128 (topk a multiple of 128), sm100's
 * head-64 one in blocks of 64 (docs/flashmla-interface.md#sparse-prefill).
 */
export type PrefillArch = 'sm90' | 'sm100';

/** The topk multiple a case of h_q heads needs: 64 everywhere (the reference), 128 where the kernel says so. */
const topkUnit = (arch: PrefillArch | undefined, hQ: 64 | 128): number => (arch === 'sm90' || (arch === 'sm100' && hQ === 128) ? 128 : 64);

/**
 * A tiny valid case: s_q 1–2, s_kv from 1 (every index but one out of range) to 200, topk one or
 * two multiples of what the kernel takes (64 or 128; sometimes above s_kv), h_q 64 (128 one time
 * in ten), both layouts, each feature at random.
 */
export function prefillBaseCase(rng: Rng, seed: number, arch?: PrefillArch): PrefillCase {
  const hQ = rng.next() < 0.1 ? 128 : 64;
  return generatePrefillCase({
    sQ: rng.int(1, 3), sKv: pick(rng, [1, 20, 64, 130, 200]), topk: topkUnit(arch, hQ) * pick(rng, [1, 1, 2]),
    hQ, dQK: rng.next() < 0.5 ? 576 : 512,
    sink: rng.next() < 0.5, withLength: rng.next() < 0.5, allInvalid: rng.next() < 0.2, nonContiguous: rng.next() < 0.3,
  }, seed);
}

/** Element (i, j, k) of a rank-3 host tensor: its index in `data`. */
function at(t: HostTensor, i: number, j: number, k: number): number {
  const v = viewOf(t, 't');
  return v.offset + i * v.strides[0]! + j * v.strides[1]! + k * v.strides[2]!;
}

/**
 * The kv rows at in-range indices of positions below each token's topkLength (all topk without
 * one), in first-use order: the rows the call uses. With `block`, the positions up to topkLength
 * rounded up to the block (at least one block): the rows sm100's kernels also load, since the
 * index range alone decides their gather (FlashMLA csrc/sm100/prefill/sparse/fwd/head64/phase1.cuh
 * @ 9241ae3); those must be finite too.
 */
export function usedRows(a: Args, block?: number): number[] {
  const [sQ, , topk] = a.indices.shape as number[];
  const sKv = a.kv.shape[0]!;
  const lengths = a.topkLength ? (a.topkLength.data as Int32Array) : null;
  const idx = a.indices.data as Int32Array;
  const seen = new Set<number>();
  for (let s = 0; s < sQ!; s++) {
    const n = !lengths ? topk! : block === undefined ? lengths[s]! : Math.min(topk!, Math.max(Math.ceil(lengths[s]! / block), 1) * block);
    for (let p = 0; p < n; p++) {
      const t = idx[at(a.indices, s, 0, p)]!;
      if (t >= 0 && t < sKv) seen.add(t);
    }
  }
  return [...seen];
}

/** kv with one element of row `row` set to a non-finite bf16. */
function poisonRow(a: Args, row: number, rng: Rng): HostTensor {
  const data = new Uint16Array(a.kv.data as Uint16Array);
  data[at(a.kv, row, 0, rng.int(0, a.kv.shape[2]!))] = pick(rng, BF16_NON_FINITE);
  return retensor(a.kv, { data });
}

/** A contiguous tensor of `shape` filled with zeros of dtype's array class (zeros are finite and valid indices). */
function fresh(dtype: HostTensor['dtype'], shape: number[]): HostTensor {
  const n = shape.reduce((x, y) => x * y, 1);
  const data = dtype === 'fp32' ? new Float32Array(n) : dtype === 'int32' ? new Int32Array(n) : dtype === 'uint8' ? new Uint8Array(n) : new Uint16Array(n);
  return { dtype, shape, data } as HostTensor;
}

/** The same elements in a buffer twice as wide, last-dim stride 2 (not contiguous). */
function strideTwo(t: HostTensor): HostTensor {
  const shape = [...t.shape];
  const strides: number[] = [];
  let s = 2;
  for (let i = shape.length - 1; i >= 0; i--) { strides[i] = s; s *= shape[i]!; }
  const data = new (t.data.constructor as new (n: number) => typeof t.data)(s);
  return { dtype: t.dtype, shape, strides, data } as HostTensor;
}

/** A given field of the case, or a made-up valid one for the optional ones. */
function field(c: PrefillCase, f: PrefillField): HostTensor {
  const a = c.args;
  const [sQ, hQ] = a.q.shape as number[];
  if (f === 'attnSink') return a.attnSink ?? { dtype: 'fp32', shape: [hQ!], data: new Float32Array(hQ!) };
  if (f === 'topkLength') return a.topkLength ?? { dtype: 'int32', shape: [sQ!], data: new Int32Array(sQ!).fill(a.indices.shape[2]!) };
  return a[f];
}

const withField = (c: PrefillCase, f: PrefillField, t: unknown): SparseFwdArgs => ({ ...c.args, [f]: t }) as SparseFwdArgs;
const ALL_FIELDS: readonly PrefillField[] = SPARSE_FWD_TENSOR_KEYS;
const REQUIRED = ['q', 'kv', 'indices'] as const;
/** Wrong dtypes per field (each a valid dtype name of another kind). */
const WRONG_DTYPE: Readonly<Record<PrefillField, readonly HostTensor['dtype'][]>> = {
  q: ['fp16', 'fp32', 'uint8'], kv: ['fp16', 'uint8', 'fp32'], indices: ['fp32', 'uint8', 'bf16'], attnSink: ['bf16', 'int32'], topkLength: ['fp32', 'uint8'],
};

export const PREFILL_MUTATIONS: readonly PrefillMutation[] = [
  // Valid calls, some extreme: must succeed and match the yardstick.
  { name: 'valid', expect: 'match', apply: (c) => c.args },
  { name: 'sink ±inf', expect: 'match', apply: (c, rng) => ({
    ...c.args, attnSink: { dtype: 'fp32', shape: [c.args.q.shape[1]!], data: Float32Array.from({ length: c.args.q.shape[1]! }, () => pick(rng, [Infinity, -Infinity, 0, 30, -30])) },
  }) },
  { name: 'all topkLength 0', expect: 'match', apply: (c) => ({ ...c.args, topkLength: { dtype: 'int32', shape: [c.args.q.shape[0]!], data: new Int32Array(c.args.q.shape[0]!) } }) },
  { name: 'topkLength = topk', expect: 'match', apply: (c) => ({ ...c.args, topkLength: field({ ...c, args: { ...c.args, topkLength: null } }, 'topkLength') }) },
  { name: 'every index invalid', expect: 'match', apply: (c, rng) => ({
    ...c.args, indices: retensor(c.args.indices, { data: new Int32Array(c.args.indices.data.length).fill(pick(rng, invalidIndexCandidates(c.args.kv.shape[0]!))) }),
  }) },
  // Rows no kernel loads may hold anything (docs/flashmla-interface.md#prefill-semantics): unwritten cache slots.
  // Every backend refuses the rows sm100's kernels load past topkLength (up to 128 positions further).
  { name: 'non-finite kv row that is not used', expect: 'match', readsIndices: true, apply: (c, rng) => {
    const used = new Set(usedRows(c.args, 128));
    const free = Array.from({ length: c.args.kv.shape[0]! }, (_, t) => t).filter((t) => !used.has(t));
    return free.length === 0 ? null : { ...c.args, kv: poisonRow(c.args, pick(rng, free), rng) };
  } },
  { name: 'smScale small or large', expect: 'match', apply: (c, rng) => ({ ...c.args, smScale: pick(rng, [1e-3, 0.05, 1.5]) }) },
  { name: 'data getter answers differently on a second read', expect: 'match', oracleFromCase: true, apply: (c) => {
    const q = c.args.q;
    let reads = 0;
    const sneaky = { dtype: q.dtype, shape: q.shape, strides: q.strides, offset: q.offset, get data() { return reads++ === 0 ? q.data : new Uint16Array(1); } };
    return { ...c.args, q: sneaky as HostTensor };
  } },
  { name: 'shape Proxy answering differently each read', expect: 'match', oracleFromCase: true, apply: (c, rng) => {
    const f = pick(rng, REQUIRED);
    let n = 0;
    const shape = new Proxy([...c.args[f].shape], { get: (t, k) => (k === '0' && n++ > 0 ? 2 ** 40 : Reflect.get(t, k)) });
    return withField(c, f, retensor(c.args[f], { shape }));
  } },
  { name: 'uncloneable tensor objects (own method, Proxy)', expect: 'match', oracleFromCase: true, apply: (c, rng) => {
    const f = pick(rng, REQUIRED);
    return withField(c, f, rng.next() < 0.5 ? retensor(c.args[f], { toJSON: () => 'x', valueOf: () => 1 }) : new Proxy({ ...c.args[f] }, {}));
  } },
  { name: 'prototype pollution (offset, strides, dV, attnSink, topkLength, options)', expect: 'match', apply: (c) => c.args, global: {
    make: (rng) => {
      const key = pick(rng, PREFILL_POLLUTED);
      const value: Record<string, unknown> = {
        strides: [0, 0, 0], attnSink: { dtype: 'fp32', shape: [1], data: new Float32Array([NaN]) }, topkLength: { dtype: 'int32', shape: [1], data: new Int32Array([-1]) },
        validate: true, dV: 576,
      };
      (Object.prototype as Record<string, unknown>)[key] = value[key] ?? 8;
    },
    undo: () => { for (const k of PREFILL_POLLUTED) delete (Object.prototype as Record<string, unknown>)[k]; },
    until: 'settled',
  } },
  // Malformed calls: must throw a FlashMLAError naming the argument.
  { name: 'args not an object', expect: 'error', codes: ['E_VALUE'], names: ['args'], apply: (_, rng) => pick(rng, [null, 5, 'q', undefined]) as never },
  { name: 'required tensor missing', expect: 'error', codes: ['E_VALUE'], names: REQUIRED, apply: (c, rng) => withField(c, pick(rng, REQUIRED), pick(rng, [undefined, null])) },
  { name: 'wrong rank', expect: 'error', codes: ['E_SHAPE'], names: ALL_FIELDS, apply: (c, rng) => {
    const f = pick(rng, ALL_FIELDS);
    const t = field(c, f);
    const shape = rng.next() < 0.5 ? [1, ...t.shape] : t.shape.length > 1 ? t.shape.slice(1) : [t.shape[0]!, 1];
    return withField(c, f, fresh(t.dtype, shape));
  } },
  { name: 'wrong dtype', expect: 'error', codes: ['E_DTYPE'], names: ALL_FIELDS, apply: (c, rng) => {
    const f = pick(rng, ALL_FIELDS);
    const t = field(c, f);
    return withField(c, f, fresh(pick(rng, WRONG_DTYPE[f]), [...t.shape]));
  } },
  { name: 'inherited dtype names', expect: 'error', codes: ['E_DTYPE'], names: REQUIRED, apply: (c, rng) => {
    const f = pick(rng, REQUIRED);
    return withField(c, f, retensor(c.args[f], { dtype: pick(rng, ['constructor', 'toString', '__proto__', 'hasOwnProperty']) }));
  } },
  { name: 'h_q not 64 or 128', expect: 'error', codes: ['E_UNSUPPORTED'], names: ['q'], apply: (c, rng) => {
    const [sQ, , d] = c.args.q.shape as number[];
    return { ...c.args, attnSink: null, q: fresh('bf16', [sQ!, pick(rng, [1, 16, 32, 96, 256]), d!]) };
  } },
  { name: 'topk not a multiple of 64', expect: 'error', codes: ['E_UNSUPPORTED'], names: ['indices'], apply: (c, rng) => {
    const sQ = c.args.q.shape[0]!;
    return { ...c.args, indices: fresh('int32', [sQ, 1, pick(rng, [1, 32, 63, 65, 100, 200])]) };
  } },
  { name: 'h_kv not 1', expect: 'error', codes: ['E_UNSUPPORTED', 'E_SHAPE'], names: ['kv', 'indices'], apply: (c, rng) => {
    const [sKv, , d] = c.args.kv.shape as number[];
    const hKv = pick(rng, [2, 4]);
    const [sQ, , topk] = c.args.indices.shape as number[];
    // With indices (s_q, h_kv, topk) to match only the h_kv rule is left; without, the indices' shape is wrong too.
    return { ...c.args, kv: fresh('bf16', [sKv!, hKv, d!]), indices: rng.next() < 0.5 ? fresh('int32', [sQ!, hKv, topk!]) : c.args.indices };
  } },
  { name: 'd_qk not 512 or 576', expect: 'error', codes: ['E_SHAPE'], names: ['q'], apply: (c, rng) => {
    const d = pick(rng, [64, 128, 256, 520, 640, 1024]);
    return { ...c.args, q: fresh('bf16', [...c.args.q.shape.slice(0, 2), d]), kv: fresh('bf16', [...c.args.kv.shape.slice(0, 2), d]) };
  } },
  { name: "kv head dim differs from q's", expect: 'error', codes: ['E_SHAPE'], names: ['kv'], apply: (c) => {
    const d = c.args.q.shape[2] === 576 ? 512 : 576;
    return { ...c.args, kv: fresh('bf16', [...c.args.kv.shape.slice(0, 2), d]) };
  } },
  { name: 'indices s_q differs from q', expect: 'error', codes: ['E_SHAPE'], names: ['indices'], apply: (c) => {
    const [sQ, , topk] = c.args.indices.shape as number[];
    return { ...c.args, indices: fresh('int32', [sQ! + 1, 1, topk!]) };
  } },
  { name: 's_q or s_kv zero', expect: 'error', codes: ['E_SHAPE'], names: ['q', 'kv'], apply: (c, rng) => {
    if (rng.next() < 0.5) return { ...c.args, kv: fresh('bf16', [0, 1, c.args.kv.shape[2]!]) };
    const [, hQ, d] = c.args.q.shape as number[];
    return { ...c.args, q: fresh('bf16', [0, hQ!, d!]), indices: fresh('int32', [0, 1, c.args.indices.shape[2]!]), attnSink: null, topkLength: null };
  } },
  { name: 'dV not 512', expect: 'error', codes: ['E_VALUE'], names: ['dV'], apply: (c, rng) => ({ ...c.args, dV: pick(rng, [576, 0, 256, -512, NaN, '512', Infinity]) as never }) },
  { name: 'smScale not a usable number', expect: 'error', codes: ['E_VALUE'], names: ['smScale'], apply: (c, rng) => ({
    ...c.args, smScale: pick(rng, [NaN, Infinity, -Infinity, 'x', undefined, null, 1e39, 3e38]) as never,
  }) },
  { name: 'topkLength out of [0, topk]', expect: 'error', codes: ['E_RANGE'], names: ['topkLength'], values: true, apply: (c, rng) => {
    const t = field(c, 'topkLength');
    const data = new Int32Array(t.data as Int32Array);
    data[rng.int(0, data.length)] = pick(rng, [-1, c.args.indices.shape[2]! + 1, c.args.indices.shape[2]! + 64, 2 ** 31 - 1, -(2 ** 31)]);
    return { ...c.args, topkLength: retensor(t, { data }) };
  } },
  { name: 'topkLength or attnSink of the wrong length', expect: 'error', codes: ['E_SHAPE'], names: ['topkLength', 'attnSink'], apply: (c, rng) => {
    const f = pick(rng, ['topkLength', 'attnSink'] as const);
    const n = field(c, f).shape[0]!;
    return withField(c, f, fresh(f === 'attnSink' ? 'fp32' : 'int32', [pick(rng, [n + 1, n - 1, 2 * n])]));
  } },
  { name: 'NaN sink', expect: 'error', codes: ['E_VALUE'], names: ['attnSink'], apply: (c, rng) => {
    const t = field(c, 'attnSink');
    const data = new Float32Array(t.data as Float32Array);
    data[rng.int(0, data.length)] = NaN;
    return { ...c.args, attnSink: retensor(t, { data }) };
  } },
  { name: 'non-finite q', expect: 'error', codes: ['E_VALUE'], names: ['q'], apply: (c, rng) => {
    const q = c.args.q;
    const data = new Uint16Array(q.data as Uint16Array);
    data[at(q, rng.int(0, q.shape[0]!), rng.int(0, q.shape[1]!), rng.int(0, q.shape[2]!))] = pick(rng, BF16_NON_FINITE);
    return { ...c.args, q: retensor(q, { data }) };
  } },
  { name: 'non-finite kv row that is used', expect: 'error', codes: ['E_VALUE'], names: ['kv'], readsIndices: true, apply: (c, rng) => {
    const used = usedRows(c.args);
    return used.length === 0 ? null : { ...c.args, kv: poisonRow(c.args, pick(rng, used), rng) };
  } },
  // A last dim of size 1 may have any stride (torch's rule, docs/flashmla-interface.md#sparse-prefill).
  { name: 'last dim not contiguous', expect: 'error', codes: ['E_STRIDE'], names: ALL_FIELDS, apply: (c, rng) => {
    const f = pick(rng, ALL_FIELDS.filter((x) => field(c, x).shape.at(-1)! > 1));
    return withField(c, f, strideTwo(field(c, f)));
  } },
  // docs/flashmla-interface.md#tma-alignment: q and kv are loaded by TMA, whose strides and base are 16-byte multiples.
  { name: 'q or kv strides not TMA-friendly', expect: 'error', codes: ['E_STRIDE'], names: ['q', 'kv'], apply: (c, rng) => {
    const f = pick(rng, ['q', 'kv'] as const);
    const t = c.args[f];
    const [a, b, d] = t.shape as number[];
    const pad = pick(rng, [1, 2, 4]);
    if (rng.next() < 0.5) return withField(c, f, { dtype: 'bf16', shape: [a!, b!, d!], offset: pad, data: new Uint16Array(a! * b! * d! + pad) });
    return withField(c, f, { dtype: 'bf16', shape: [a!, b!, d!], strides: [b! * (d! + pad), d! + pad, 1], data: new Uint16Array(a! * b! * (d! + pad)) });
  } },
  { name: 'bad strides', expect: 'error', codes: ['E_STRIDE', 'E_BUFFER'], names: ALL_FIELDS, apply: (c, rng) => {
    const f = pick(rng, ALL_FIELDS);
    const t = field(c, f);
    const base = t.strides ?? viewOf(t, f).strides;
    const strides = pick(rng, [base.slice(1), base.map((s) => -s), base.map((s, i) => (i === 0 ? s + 0.5 : s)), [...base, 1]]);
    return withField(c, f, retensor(t, { strides }));
  } },
  { name: 'buffer too short or offset outside it', expect: 'error', codes: ['E_BUFFER', 'E_STRIDE'], names: ALL_FIELDS, apply: (c, rng) => {
    const f = pick(rng, ALL_FIELDS);
    const t = field(c, f);
    const patch = pick(rng, [{ data: t.data.subarray(0, extentOf(viewOf(t, f)) - 1) }, { offset: t.data.length }, { offset: -8 }, { offset: 0.5 }]);
    return withField(c, f, retensor(t, patch));
  } },
  // A wrong size in q, kv or indices can also make the shapes of the others wrong: any argument may be named.
  { name: 'bad sizes', expect: 'error', codes: ['E_SHAPE', 'E_BUFFER', 'E_UNSUPPORTED'], names: ALL_FIELDS, apply: (c, rng) => {
    const f = pick(rng, REQUIRED);
    const shape = [...c.args[f].shape];
    shape[rng.int(0, 3)] = pick(rng, [-1, NaN, 1.5, 2 ** 40, Infinity]);
    return withField(c, f, retensor(c.args[f], { shape }));
  } },
  { name: 'zero strides claiming a huge extent', expect: 'error', codes: ['E_UNSUPPORTED', 'E_SHAPE', 'E_BUFFER'], names: ALL_FIELDS, apply: (c, rng) => {
    const f = pick(rng, REQUIRED);
    const [a, b, d] = c.args[f].shape as number[];
    return withField(c, f, retensor(c.args[f], { shape: pick(rng, [[2 ** 40, b!, d!], [a!, 2 ** 33, d!]]), strides: [0, 0, 1], offset: 0 }));
  } },
  { name: 'detached buffer', expect: 'error', codes: ['E_BUFFER'], names: ALL_FIELDS, apply: (c, rng) => {
    const f = pick(rng, ALL_FIELDS);
    const t = field(c, f);
    const data = t.data.slice();
    structuredClone(data.buffer, { transfer: [data.buffer as ArrayBuffer] });
    return withField(c, f, retensor(t, { data }));
  } },
  { name: 'throwing getter', expect: 'error', codes: ['E_VALUE'], names: [...ALL_FIELDS, 'smScale', 'dV'], hostOnly: true, apply: (c, rng) => {
    if (rng.next() < 0.3) {
      const args = { ...c.args };
      Object.defineProperty(args, pick(rng, ['smScale', 'dV', 'q', 'indices']), { get: () => { throw new Error('getter'); }, enumerable: true });
      return args;
    }
    const f = pick(rng, ALL_FIELDS);
    const t = { ...field(c, f) };
    Object.defineProperty(t, pick(rng, ['shape', 'dtype', 'data', 'strides', 'offset']), { get: () => { throw new Error('getter'); }, enumerable: true });
    return withField(c, f, t);
  } },
  { name: 'not a tensor (forged device tensor, number, array)', expect: 'error', codes: ['E_VALUE'], names: ALL_FIELDS, apply: (c, rng) => {
    const f = pick(rng, ALL_FIELDS);
    const t = field(c, f);
    const forged = { dtype: t.dtype, shape: t.shape, device: 0, capacity: 2 ** 30, address: 0n, disposed: false };
    return withField(c, f, pick(rng, [forged, Object.create(DeviceTensorClass.prototype), 7, [1, 2, 3]]));
  } },
  { name: 'Object.prototype.then planted', expect: 'error', codes: ['E_VALUE'], names: [undefined], apply: (c) => c.args, global: {
    make: () => { (Object.prototype as Record<string, unknown>).then = () => undefined; },
    undo: () => { delete (Object.prototype as Record<string, unknown>).then; },
    until: 'issued',
  } },
  { name: 'options with preallocated outputs', expect: 'error', codes: ['E_UNSUPPORTED'], names: ['options.out', 'options.lse'], apply: (c) => c.args,
    options: (rng) => ({ [pick(rng, ['out', 'lse'])]: fresh('bf16', [1]) }) as CallOptions },
  { name: 'thread counts', expect: 'either', codes: ['E_VALUE'], names: ['options.threads'], apply: (c) => c.args,
    options: (rng) => ({ threads: pick(rng, [0, -1, 1.5, NaN, 200, 1e9, 1, 2, 3, '2'] as number[]) }) },
  // The call reads its inputs once: a caller rewriting or detaching them while it runs gets the
  // result for what was read, or a clean E_BUFFER (docs/robustness.md#concurrent-writes).
  { name: 'q, kv or indices detached while the call runs', expect: 'either', codes: ['E_BUFFER'], names: REQUIRED, apply: (c) => c.args, during: (args, rng) => {
    const t = args[pick(rng, REQUIRED)] as HostTensor;
    structuredClone(t.data.buffer, { transfer: [t.data.buffer as ArrayBuffer] });
  } },
  { name: 'indices and topkLength rewritten while the call runs', expect: 'match', apply: (c) => c.args, during: (args) => {
    for (const f of PREFILL_INDEX_LIKE) {
      const t = args[f];
      if (t !== null && t !== undefined && isHostTensor(t)) (t.data as Int32Array).fill(f === 'indices' ? 0 : 2 ** 30);
    }
  } },
];

const PREFILL_POLLUTED = ['offset', 'strides', 'dV', 'attnSink', 'topkLength', 'validate', 'threads', 'data'] as const;

/** `args` with the host tensors named in `fields` replaced by device copies (recorded in `uploads`). */
export async function uploadPrefillFields(dev: FuzzDevice, args: SparseFwdArgs, fields: readonly PrefillField[], uploads: DeviceTensor[]): Promise<SparseFwdArgs> {
  const out: Record<string, unknown> = { ...args };
  for (const f of fields) {
    const t = args[f];
    if (t === null || t === undefined || !isHostTensor(t)) continue;
    const d = await dev.upload(t);
    uploads.push(d);
    out[f] = d;
  }
  return out as unknown as SparseFwdArgs;
}

export const presentPrefillFields = (args: SparseFwdArgs): PrefillField[] => ALL_FIELDS.filter((f) => args[f] !== null && args[f] !== undefined);

const PREFILL_VALUE_MUTATIONS = PREFILL_MUTATIONS.filter((m) => m.values);

/** Families that need a device of the backend under test. */
export const PREFILL_CALL_MUTATIONS: readonly PrefillCallMutation[] = [
  { name: 'device: all inputs resident', expect: 'match', prepare: async (c, rng, { device }) => {
    const uploads: DeviceTensor[] = [];
    return { args: await uploadPrefillFields(device, c.args, presentPrefillFields(c.args), uploads), options: { validate: rng.next() < 0.5 }, host: c.args, uploads };
  } },
  // Device-resident lengths are the caller's contract unless validate: true (docs/robustness.md).
  { name: 'device: hostile topkLength, validate: true', expect: 'error', codes: ['E_RANGE'], names: ['topkLength'], prepare: async (c, rng, { device }) => {
    const host = pick(rng, PREFILL_VALUE_MUTATIONS).apply(c, rng) as HostSparseFwdArgs;
    const uploads: DeviceTensor[] = [];
    return { args: await uploadPrefillFields(device, host, presentPrefillFields(host), uploads), options: { validate: true }, host, uploads };
  } },
  { name: 'device: disposed tensor', expect: 'error', codes: ['E_DISPOSED'], prepare: async (c, rng, { device }) => {
    const uploads: DeviceTensor[] = [];
    const fields = presentPrefillFields(c.args);
    const args = await uploadPrefillFields(device, c.args, fields, uploads);
    (args[pick(rng, fields)] as DeviceTensor).dispose();
    return { args, host: c.args, uploads };
  } },
  // docs/flashmla-interface.md#device-and-stream: one device per call.
  { name: 'device: tensor of another device', expect: 'error', codes: ['E_DEVICE'], prepare: async (c, rng, { device }) => {
    if (device.uploadElsewhere === undefined) return null;
    const uploads: DeviceTensor[] = [];
    const fields = presentPrefillFields(c.args);
    const victim = pick(rng, fields);
    const args = await uploadPrefillFields(device, c.args, fields.filter((f) => f !== victim && rng.next() < 0.7), uploads);
    const foreign = await device.uploadElsewhere(c.args[victim] as HostTensor);
    uploads.push(foreign);
    return { args: { ...args, [victim]: foreign }, host: c.args, uploads };
  } },
  // docs/flashmla-interface.md#tma-alignment: a wrapped q or kv 2–4 bytes past a 16-byte boundary.
  { name: 'device: misaligned q or kv base', expect: 'error', codes: ['E_STRIDE'], names: ['q', 'kv'], prepare: async (c, rng, { device }) => {
    const victim = pick(rng, ['q', 'kv'] as const);
    const t = c.args[victim];
    const view = viewOf(t, victim);
    const shift = pick(rng, [1, 2]);
    const used = (t.data as Uint16Array).subarray(view.offset, extentOf(view));
    const padded = new Uint16Array(used.length + shift);
    padded.set(used, shift);
    const uploads: DeviceTensor[] = [];
    const raw = await device.upload({ dtype: 'bf16', shape: [padded.length], data: padded });
    uploads.push(raw);
    const wrapped = await device.wrap(raw.address, { dtype: 'bf16', shape: view.shape, strides: view.strides, offset: shift, capacity: padded.length });
    uploads.push(wrapped);
    const args = await uploadPrefillFields(device, c.args, presentPrefillFields(c.args).filter((f) => f !== victim && rng.next() < 0.5), uploads);
    return { args: { ...args, [victim]: wrapped }, host: c.args, uploads };
  } },
  { name: 'device tensors given to the reference backend', expect: 'error', codes: ['E_DEVICE'], prepare: async (c, rng, { device, reference }) => {
    const uploads: DeviceTensor[] = [];
    const fields = presentPrefillFields(c.args);
    const args = await uploadPrefillFields(device, c.args, fields.filter((f) => rng.next() < 0.5 || f === 'q'), uploads);
    return { args, host: c.args, uploads, instead: () => reference(args) };
  } },
];
