// Compile-time checks of the public types (tsc runs over this file in `npm test`; nothing runs it).
// Each `@ts-expect-error` line must fail to type-check, each other line must type-check.
import {
  DeviceTensor, FlashMLA, FlashMLAError, flashMlaSparseFwd, flashMlaWithKvCache, getMlaMetadata, zeros,
  type SparseFwdResult, type CudaEvent, type CudaGraph, type DecodeArgs, type DecodeResult, type HostTensor, type Tensor,
} from '../../src/index.js';
import { f32ToBf16 } from '../../src/formats/index.js';
import { oracleDecode, oraclePrefill } from '../../src/testing.js';

declare const q: HostTensor<'bf16'>;
declare const kCache: HostTensor<'bf16'>;
declare const deviceQ: DeviceTensor<'bf16'>;
declare const anyQ: Tensor;
const rest = { kCache, blockTable: zeros('int32', [1, 1]), cacheSeqlens: zeros('int32', [1]), headDimV: 512, schedMeta: getMlaMetadata() };

export async function hostInHostOut(): Promise<void> {
  const { out, lse } = await flashMlaWithKvCache({ q, ...rest });
  const bits: Uint16Array | Float32Array | Int32Array | Uint8Array = out.data; // host in, host out: data without a cast
  const logs: ArrayLike<number> = lse.data;
  void bits;
  void logs;
  const fromReference: DecodeResult<HostTensor> = await flashMlaWithKvCache({ q, ...rest }, { backend: 'reference', threads: 2 });
  void fromReference;
  const checked: DecodeResult<HostTensor> = oracleDecode({ q, ...rest });
  void checked;
  void f32ToBf16(1);
}

export async function deviceInDeviceOut(): Promise<void> {
  const r = await flashMlaWithKvCache({ q: deviceQ, ...rest }, { backend: 'cuda', validate: true });
  const d: DeviceTensor = r.out;
  void d;
  const mixed = await flashMlaWithKvCache({ q: anyQ, ...rest } as DecodeArgs);
  // @ts-expect-error a call whose q may be on the device has no host data in its type
  void mixed.out.data;
}

export async function optionsByBackend(): Promise<void> {
  // @ts-expect-error threads belong to the reference backend
  await flashMlaWithKvCache({ q, ...rest }, { backend: 'cuda', threads: 2 });
  // @ts-expect-error validate belongs to the CUDA backend
  await flashMlaWithKvCache({ q, ...rest }, { backend: 'reference', validate: true });
  // @ts-expect-error not a backend
  await flashMlaWithKvCache({ q, ...rest }, { backend: 'gpu' });
  const fm = await FlashMLA.open({ backend: 'cuda', device: 0 });
  const onInstance = await fm.flashMlaWithKvCache({ q, ...rest }, { validate: true });
  const host: HostTensor = onInstance.out;
  void host;
}

export async function preallocatedOutputsStreamsEvents(): Promise<void> {
  const fm = await FlashMLA.open({ backend: 'cuda', stream: 0n });
  const first = await fm.flashMlaWithKvCache({ q: deviceQ, ...rest });
  const again: DecodeResult<DeviceTensor> = await fm.flashMlaWithKvCache({ q: deviceQ, ...rest }, { out: first.out, lse: first.lse });
  await flashMlaWithKvCache({ q: deviceQ, ...rest }, { backend: 'cuda', out: again.out });
  // @ts-expect-error preallocated outputs belong to the CUDA backend
  await flashMlaWithKvCache({ q, ...rest }, { backend: 'reference', out: again.out });
  // @ts-expect-error a stream is a bigint cudaStream_t
  await FlashMLA.open({ stream: 1 });
  const s: bigint | null = fm.stream;
  const ev: CudaEvent = fm.record();
  await ev;
  await ev.synchronize();
  ev.dispose();
  await fm.synchronize();
  await fm.emptyCache();
  const graph: CudaGraph = await fm.captureGraph(async () => {
    await fm.flashMlaWithKvCache({ q: deviceQ, ...rest }, again);
  });
  await graph.replay();
  graph.dispose();
  void s;
}

export function deviceTensorsCannotBeMade(): void {
  // @ts-expect-error DeviceTensors are made by FlashMLA.upload/allocate/wrap only
  void new DeviceTensor(Symbol('x'), {}, {});
  const e = new FlashMLAError('E_VALUE', 'message', 'argument');
  const code: 'E_VALUE' | string = e.code;
  void code;
}

export async function sparsePrefill(): Promise<void> {
  const prefill = { kv: zeros('bf16', [64, 1, 576]), indices: zeros('int32', [1, 1, 64]), smScale: 0.5 };
  const host: SparseFwdResult<HostTensor> = await flashMlaSparseFwd({ q, ...prefill }, { backend: 'reference', threads: 2 });
  const logits: ArrayLike<number> = host.maxLogits.data;
  void logits;
  const dev: SparseFwdResult<DeviceTensor> = await flashMlaSparseFwd({ q: deviceQ, ...prefill }, { backend: 'cuda', validate: true });
  void dev;
  const checked: SparseFwdResult<HostTensor> = oraclePrefill({ q, ...prefill });
  void checked;
  // @ts-expect-error preallocated outputs are decode-only
  await flashMlaSparseFwd({ q, ...prefill }, { out: dev.out });
  // @ts-expect-error smScale has no default
  await flashMlaSparseFwd({ q, kv: prefill.kv, indices: prefill.indices });
  const fm = await FlashMLA.open();
  const onInstance: SparseFwdResult<HostTensor> = await fm.flashMlaSparseFwd({ q, ...prefill }, { threads: 1 });
  void onInstance;
}
