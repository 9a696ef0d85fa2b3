// Every malformed sparse prefill input is a FlashMLAError naming the argument, on the public call.
import { describe, expect, it, test } from 'vitest';
import { flashMlaSparseFwd } from '../../src/api.js';
import { generatePrefillCase } from '../../src/harness/prefill-cases.js';
import type { HostTensor } from '../../src/tensor.js';
import type { HostSparseFwdArgs } from '../../src/types.js';
import { readSparseFwdArgs } from '../../src/validate/args.js';
import { validateSparseFwd } from '../../src/validate/prefill.js';
import { expectError, rejectionOf } from '../helpers/errors.js';

const base = (): HostSparseFwdArgs => generatePrefillCase({ sQ: 3, sKv: 100, topk: 128, hQ: 64, dQK: 512, sink: true, withLength: true }, 5).args;
const v = (a: unknown) => (): unknown => validateSparseFwd(readSparseFwdArgs(a));
const t = (x: HostTensor | null | undefined, patch: Partial<HostTensor>): HostTensor => ({ ...x!, ...patch }) as HostTensor;

describe('valid prefill inputs pass', () => {
  it('with sink and topkLength, and without', () => {
    expect(() => v(base())()).not.toThrow();
    expect(() => v({ ...base(), attnSink: null, topkLength: undefined })()).not.toThrow();
  });
  it('indices outside [0, s_kv) are unused, not errors (FlashMLA\'s prefill rule)', () => {
    const a = base();
    a.indices.data.fill(2147483647);
    expect(() => v(a)()).not.toThrow();
  });
  it('a non-finite kv row that no index selects is accepted, one selected past topkLength only in a loaded block is not', () => {
    const a = generatePrefillCase({ sQ: 2, sKv: 1000, topk: 256, hQ: 64, dQK: 512 }, 6).args;
    const referenced = new Set(a.indices.data);
    const spare = [...Array(1000).keys()].find((r) => !referenced.has(r))!;
    (a.kv.data as Uint16Array).fill(0x7fc0, spare * 512, (spare + 1) * 512);
    expect(() => v(a)()).not.toThrow();
    // Token 0 uses 10 positions; position 200 lies in a block no kernel loads, position 100 in one sm100 loads.
    const lengths = { dtype: 'int32' as const, shape: [2], data: Int32Array.from([10, 256]) };
    a.indices.data[200] = spare;
    expect(() => v({ ...a, topkLength: lengths })()).not.toThrow();
    a.indices.data[100] = spare;
    expectError(v({ ...a, topkLength: lengths }), 'E_VALUE', 'kv');
  });
});

describe('malformed prefill inputs', () => {
  const a = base;
  test.each<[string, () => unknown, string, string]>([
    ['args not an object', () => v(42)(), 'E_VALUE', 'args'],
    ['q missing', () => v({ ...a(), q: undefined })(), 'E_VALUE', 'q'],
    ['q rank 4', () => v({ ...a(), q: t(a().q, { shape: [1, 3, 64, 512] }) })(), 'E_SHAPE', 'q'],
    ['q fp16', () => v({ ...a(), q: t(a().q, { dtype: 'fp16' }) })(), 'E_DTYPE', 'q'],
    ['q fp32 data for bf16', () => v({ ...a(), q: t(a().q, { data: new Float32Array(10) }) })(), 'E_DTYPE', 'q'],
    ['d_qk 256', () => v({ ...a(), q: { dtype: 'bf16', shape: [3, 64, 256], data: new Uint16Array(3 * 64 * 256) } })(), 'E_SHAPE', 'q'],
    ['h_q 96', () => v({ ...a(), attnSink: null, q: { dtype: 'bf16', shape: [3, 96, 512], data: new Uint16Array(3 * 96 * 512) } })(), 'E_UNSUPPORTED', 'q'],
    ['s_q 0', () => v({ ...a(), q: { dtype: 'bf16', shape: [0, 64, 512], data: new Uint16Array(0) }, indices: { dtype: 'int32', shape: [0, 1, 128], data: new Int32Array(0) }, topkLength: null })(), 'E_SHAPE', 'q'],
    ['dV 576', () => v({ ...a(), dV: 576 })(), 'E_VALUE', 'dV'],
    ['kv h_kv 2', () => v({ ...a(), kv: { dtype: 'bf16', shape: [50, 2, 512], data: new Uint16Array(100 * 512) }, indices: { dtype: 'int32', shape: [3, 2, 128], data: new Int32Array(6 * 128) } })(), 'E_UNSUPPORTED', 'kv'],
    ['kv d_qk differs from q', () => v({ ...a(), kv: { dtype: 'bf16', shape: [100, 1, 576], data: new Uint16Array(100 * 576) } })(), 'E_SHAPE', 'kv'],
    ['kv FP8 bytes', () => v({ ...a(), kv: { dtype: 'uint8', shape: [100, 1, 512], data: new Uint8Array(100 * 512) } })(), 'E_DTYPE', 'kv'],
    ['kv s_kv 0', () => v({ ...a(), kv: { dtype: 'bf16', shape: [0, 1, 512], data: new Uint16Array(0) } })(), 'E_SHAPE', 'kv'],
    ['kv buffer too short', () => v({ ...a(), kv: t(a().kv, { data: new Uint16Array(10) }) })(), 'E_BUFFER', 'kv'],
    ['kv last dim strided', () => v({ ...a(), kv: t(a().kv, { shape: [50, 1, 512], strides: [1024, 1024, 2] }) })(), 'E_STRIDE', 'kv'],
    ['kv row stride not 16-byte', () => v({ ...a(), kv: t(a().kv, { shape: [99, 1, 512], strides: [516, 516, 1], data: new Uint16Array(100 * 516) }) })(), 'E_STRIDE', 'kv'],
    ['q offset not 16-byte aligned', () => v({ ...a(), q: t(a().q, { offset: 4, data: new Uint16Array(3 * 64 * 512 + 8) }) })(), 'E_STRIDE', 'q'],
    ['indices fp32', () => v({ ...a(), indices: t(a().indices, { dtype: 'fp32', data: new Float32Array(3 * 128) }) })(), 'E_DTYPE', 'indices'],
    ['indices s_q mismatch', () => v({ ...a(), indices: t(a().indices, { shape: [2, 1, 128] }) })(), 'E_SHAPE', 'indices'],
    ['topk 100', () => v({ ...a(), indices: { dtype: 'int32', shape: [3, 1, 100], data: new Int32Array(300) }, topkLength: null })(), 'E_UNSUPPORTED', 'indices'],
    ['indices last dim strided', () => v({ ...a(), indices: t(a().indices, { shape: [3, 1, 64], strides: [128, 128, 2] }) })(), 'E_STRIDE', 'indices'],
    ['smScale missing', () => v({ ...a(), smScale: undefined })(), 'E_VALUE', 'smScale'],
    ['smScale NaN', () => v({ ...a(), smScale: NaN })(), 'E_VALUE', 'smScale'],
    ['smScale a string', () => v({ ...a(), smScale: '0.5' })(), 'E_VALUE', 'smScale'],
    ['smScale beyond float', () => v({ ...a(), smScale: 1e300 })(), 'E_VALUE', 'smScale'],
    ['attnSink shape', () => v({ ...a(), attnSink: { dtype: 'fp32', shape: [128], data: new Float32Array(128) } })(), 'E_SHAPE', 'attnSink'],
    ['attnSink int32', () => v({ ...a(), attnSink: { dtype: 'int32', shape: [64], data: new Int32Array(64) } })(), 'E_DTYPE', 'attnSink'],
    ['attnSink NaN', () => v({ ...a(), attnSink: { dtype: 'fp32', shape: [64], data: new Float32Array(64).fill(NaN) } })(), 'E_VALUE', 'attnSink'],
    ['attnSink not contiguous', () => v({ ...a(), attnSink: { dtype: 'fp32', shape: [64], strides: [2], data: new Float32Array(128) } })(), 'E_STRIDE', 'attnSink'],
    ['topkLength shape', () => v({ ...a(), topkLength: { dtype: 'int32', shape: [4], data: new Int32Array(4) } })(), 'E_SHAPE', 'topkLength'],
    ['topkLength above topk', () => v({ ...a(), topkLength: { dtype: 'int32', shape: [3], data: Int32Array.from([1, 129, 0]) } })(), 'E_RANGE', 'topkLength'],
    ['topkLength negative', () => v({ ...a(), topkLength: { dtype: 'int32', shape: [3], data: Int32Array.from([-1, 1, 0]) } })(), 'E_RANGE', 'topkLength'],
    ['q holds NaN', () => { const x = a(); (x.q.data as Uint16Array)[7] = 0x7fc0; return v(x)(); }, 'E_VALUE', 'q'],
    ['a used kv row holds Infinity', () => { const x = a(); const t0 = x.indices.data[0]!; (x.kv.data as Uint16Array)[t0 * 512 + 3] = 0x7f80; return v({ ...x, topkLength: null })(); }, 'E_VALUE', 'kv'],
    ['a getter that throws', () => v(Object.defineProperty({ ...a() }, 'kv', { get() { throw new Error('boom'); }, enumerable: true }))(), 'E_VALUE', 'kv'],
  ])('%s', (_, f, code, argument) => expectError(f, code, argument));

  it('a detached q buffer', () => {
    const x = a();
    structuredClone(x.q.data.buffer, { transfer: [x.q.data.buffer as ArrayBuffer] });
    expectError(v(x), 'E_BUFFER', 'q');
  });
  it('inherited arguments are never read', () => {
    const proto = { ...a() };
    expectError(v(Object.create(proto)), 'E_VALUE', 'q');
  });
  it('the public call rejects, and refuses preallocated outputs and unknown backends', async () => {
    expect((await rejectionOf(() => flashMlaSparseFwd({ ...a(), dV: 1 }))).argument).toBe('dV');
    expect((await rejectionOf(() => flashMlaSparseFwd(a(), { backend: 'gpu' as 'cuda' }))).argument).toBe('options.backend');
    expect((await rejectionOf(() => flashMlaSparseFwd(a(), { out: {} } as never))).argument).toBe('options.out');
  });
});
