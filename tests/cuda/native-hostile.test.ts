// Hostile callers on the CUDA path (the emulator as the build): buffers shrunk, transferred or
// rewritten while a decode or an upload is queued, and SharedArrayBuffer-backed inputs. The call
// keeps its own copies, so the results are those of the inputs as they were when it was issued.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { FlashMLA } from '../../src/flashmla.js';
import { generateSparseCase } from '../../src/harness/cases.js';
import { oracleDecode } from '../../src/harness/oracle.js';
import { getMlaMetadata } from '../../src/sched-meta.js';
import { zeros, type HostTensor } from '../../src/tensor.js';
import type { DecodeArgs, DecodeResult } from '../../src/types.js';
import { buildEmulator } from '../emulator/build.mjs';
import { expectClose } from '../helpers/decode.js';

let fm: FlashMLA;
beforeAll(async () => {
  process.env.FLASHMLA_EMU_ARCH = 'sm90';
  fm = await FlashMLA.open({ backend: 'cuda', library: await buildEmulator() });
});
afterAll(() => fm.dispose());

const sparse = () => generateSparseCase({ b: 2, sQ: 1, hQ: 64, dQK: 512, main: { sK: 512, topk: 128, blockSize: 64 }, sink: true }, 31);
const withMeta = (a: Omit<DecodeArgs, 'schedMeta'>): DecodeArgs => ({ ...a, schedMeta: getMlaMetadata() });

/** A copy of a host tensor in a resizable ArrayBuffer (which its owner can shrink at any time). */
function resizable<T extends HostTensor>(t: T): { tensor: T; buffer: ArrayBuffer } {
  const bytes = t.data.byteLength;
  const buffer = new (ArrayBuffer as unknown as new (n: number, o: { maxByteLength: number }) => ArrayBuffer)(bytes, { maxByteLength: bytes });
  const data = new (t.data.constructor as new (b: ArrayBuffer) => T['data'])(buffer);
  data.set(t.data as never);
  return { tensor: { ...t, data }, buffer };
}

it('a decode whose host inputs are shrunk, transferred and rewritten right after it was issued', async () => {
  const c = sparse();
  const want = oracleDecode(withMeta(c.args));
  const kv = resizable(c.args.kCache as HostTensor<'uint8'>);
  const q = { ...(c.args.q as HostTensor<'bf16'>), data: (c.args.q.data as Uint16Array).slice() };
  const indices = c.args.indices as HostTensor<'int32'>;
  const p = fm.flashMlaWithKvCache(withMeta({ ...c.args, q, kCache: kv.tensor }));
  (kv.buffer as unknown as { resize(n: number): void }).resize(0);
  structuredClone(q.data.buffer, { transfer: [q.data.buffer as ArrayBuffer] });
  indices.data.fill(1 << 30);
  expectClose('sparse', (await p) as DecodeResult<HostTensor>, want);
});

it('an upload whose buffer is shrunk while the copy is queued still copies every element', async () => {
  const src = zeros('fp32', [1 << 16]);
  for (let i = 0; i < src.data.length; i++) src.data[i] = i;
  const r = resizable(src);
  const p = fm.upload(r.tensor);
  (r.buffer as unknown as { resize(n: number): void }).resize(4);
  const back = await fm.download(await p);
  expect(Buffer.from(back.data.buffer).equals(Buffer.from(src.data.buffer))).toBe(true);
});

it('SharedArrayBuffer-backed inputs (zeros(…, { shared: true })) work on the CUDA backend', async () => {
  const c = sparse();
  const share = <T extends HostTensor>(t: T): T => {
    const s = zeros(t.dtype, [t.data.length], { shared: true });
    s.data.set(t.data as never);
    return { ...t, data: s.data } as T;
  };
  const args = withMeta({ ...c.args, q: share(c.args.q as HostTensor), kCache: share(c.args.kCache as HostTensor), indices: share(c.args.indices as HostTensor) });
  expectClose('sparse', (await fm.flashMlaWithKvCache(args)) as DecodeResult<HostTensor>, oracleDecode(withMeta(c.args)));
  const shared = zeros('int32', [1000], { shared: true });
  for (let i = 0; i < 1000; i++) shared.data[i] = i * 7;
  expect([...(await fm.download(await fm.upload(shared))).data]).toEqual([...shared.data]);
});
