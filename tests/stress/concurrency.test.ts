// Many decode calls in flight at once — Promises on one instance, several instances, worker
// threads each with their own instance — give results bitwise identical to the same calls made
// one by one, on the native path (the CPU emulator of tests/emulator as the FlashMLA build) and on
// the reference backend.
import { rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FlashMLA } from '../../src/flashmla.js';
import { generateDenseCase, generateSparseCase, type DecodeCase, type DenseCaseParams, type SparseCaseParams } from '../../src/harness/cases.js';
import { getMlaMetadata } from '../../src/sched-meta.js';
import { sourceExecArgv } from '../helpers/ts-worker.js';
import { useLoggedEmulator } from '../helpers/emulator.js';
import { isHostTensor, type HostTensor, type Tensor } from '../../src/tensor.js';
import type { DecodeArgs } from '../../src/types.js';

type Spec = { kind: 'dense'; params: DenseCaseParams; seed: number } | { kind: 'sparse'; params: SparseCaseParams; seed: number };

const SPECS: readonly Spec[] = [
  { kind: 'dense', params: { b: 2, sQ: 1, sK: 130, hQ: 8, hK: 1, varlen: true, causal: false }, seed: 301 },
  { kind: 'dense', params: { b: 1, sQ: 2, sK: 64, hQ: 4, hK: 2, varlen: false, causal: true, dtype: 'fp16' }, seed: 302 },
  { kind: 'sparse', params: { b: 2, sQ: 1, hQ: 64, dQK: 576, main: { sK: 200, topk: 128, blockSize: 64 } }, seed: 303 },
  { kind: 'sparse', params: { b: 1, sQ: 2, hQ: 128, dQK: 512, main: { sK: 100, topk: 64, blockSize: 61, withLength: true }, extra: { sK: 40, topk: 64, blockSize: 2 }, sink: true }, seed: 304 },
];

const make = (s: Spec): DecodeCase => (s.kind === 'dense' ? generateDenseCase(s.params, s.seed) : generateSparseCase(s.params, s.seed));
const CASES = SPECS.map(make);
const FIELDS = ['q', 'kCache', 'blockTable', 'cacheSeqlens', 'indices', 'attnSink', 'extraKCache', 'extraIndicesInKvcache', 'topkLength', 'extraTopkLength'] as const;

/** out and lse as raw bytes (bitwise comparison). */
type Bits = [Uint8Array, Uint8Array];
const bitsOf = (t: HostTensor): Uint8Array => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength).slice();

const emulator = useLoggedEmulator('concurrency', { arch: 'sm90' });
const workerFile = join(tmpdir(), `flashmla-concurrency-worker-${process.pid}.mjs`);

beforeAll(() => writeFileSync(workerFile, WORKER));
afterAll(() => rmSync(workerFile, { force: true }));

async function run(fm: FlashMLA, c: DecodeCase, onDevice: boolean): Promise<Bits> {
  let args: DecodeArgs = { ...c.args, schedMeta: getMlaMetadata() };
  const uploads: { dispose(): void }[] = [];
  if (onDevice) {
    const moved: Record<string, Tensor> = {};
    for (const f of FIELDS) {
      const t = c.args[f];
      if (t) uploads.push((moved[f] = await fm.upload(t)) as never);
    }
    args = { ...args, ...moved };
  }
  try {
    const res = await fm.flashMlaWithKvCache(args);
    const host = async (t: Tensor): Promise<HostTensor> => {
      if (isHostTensor(t)) return t;
      const h = await fm.download(t);
      (t as unknown as { dispose(): void }).dispose();
      return h;
    };
    return [bitsOf(await host(res.out)), bitsOf(await host(res.lse))];
  } finally {
    uploads.forEach((u) => u.dispose());
  }
}

/** Each case once, one call at a time. */
async function oneByOne(fm: FlashMLA, onDevice = false): Promise<Bits[]> {
  const out: Bits[] = [];
  for (const c of CASES) out.push(await run(fm, c, onDevice));
  return out;
}

function expectSame(got: Bits[], want: Bits[], what: string): void {
  expect(got.length, what).toBe(want.length);
  got.forEach(([o, l], i) => {
    expect(Buffer.compare(o, want[i]![0]), `${what}: out of ${CASES[i]!.name}`).toBe(0);
    expect(Buffer.compare(l, want[i]![1]), `${what}: lse of ${CASES[i]!.name}`).toBe(0);
  });
}

/**
 * A worker thread that opens its own instance, makes every case `rounds` times concurrently, and
 * posts the bytes back. Every worker first loads the addon and waits until all have (so each
 * worker's first load of the build runs after the others initialised the addon), then opens.
 */
const WORKER = `
import { parentPort, workerData } from 'node:worker_threads';
(async () => {
  const src = workerData.src;
  const { loadAddon } = await import(src + '/addon.ts');
  const { FlashMLA } = await import(src + '/flashmla.ts');
  const { getMlaMetadata } = await import(src + '/sched-meta.ts');
  const { generateDenseCase, generateSparseCase } = await import(src + '/harness/cases.ts');
  if (!loadAddon().ok) throw new Error('the native addon did not load');
  const go = new Promise((resolve) => parentPort.once('message', resolve));
  parentPort.postMessage({ ready: true });
  await go;
  const fm = await FlashMLA.open(workerData.open);
  const bits = (t) => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength).slice();
  const cases = workerData.specs.map((s) => (s.kind === 'dense' ? generateDenseCase(s.params, s.seed) : generateSparseCase(s.params, s.seed)));
  const jobs = [];
  for (let r = 0; r < workerData.rounds; r++) {
    for (const c of cases) jobs.push(fm.flashMlaWithKvCache({ ...c.args, schedMeta: getMlaMetadata() }).then((res) => [bits(res.out), bits(res.lse)]));
  }
  const results = await Promise.all(jobs);
  await fm.dispose();
  parentPort.postMessage({ results });
})().catch((e) => parentPort.postMessage({ error: String(e && e.stack || e) }));
`;

/** Runs `count` workers; they open their instances only once all of them are ready. */
function inWorkers(count: number, open: Record<string, unknown>, rounds: number): Promise<Bits[][]> {
  const workers = Array.from({ length: count }, () => new Worker(pathToFileURL(workerFile), {
    // A file, not eval: Node applies --import module hooks to file entry points only.
    execArgv: sourceExecArgv(),
    workerData: { src: pathToFileURL(fileURLToPath(new URL('../../src', import.meta.url))).href, open, specs: SPECS, rounds },
  }));
  let ready = 0;
  return Promise.all(workers.map((w) => new Promise<Bits[]>((resolve, reject) => {
    w.on('message', (m: { ready?: true; results?: Bits[]; error?: string }) => {
      if (m.ready && ++ready === count) workers.forEach((x) => x.postMessage('go'));
      if (m.error !== undefined) reject(new Error(m.error));
      if (m.results !== undefined) resolve(m.results);
    });
    w.once('error', reject);
    w.once('exit', (code) => reject(new Error(`worker exited with code ${code} before it answered`)));
  }))).finally(() => Promise.all(workers.map((w) => w.terminate())));
}

describe.each(['cuda', 'reference'] as const)('%s backend', (backend) => {
  let fm: FlashMLA;
  let want: Bits[];
  const open = () => FlashMLA.open(backend === 'cuda' ? { backend, library: emulator.library } : { backend });

  beforeAll(async () => {
    fm = await open();
    want = await oneByOne(fm);
  }, 300_000);

  afterAll(async () => {
    await fm.dispose();
    expect(emulator.memoryLog()).toBe('');
  });

  it('Promises on one instance (host and device-resident inputs, interleaved) match the calls made one by one', async () => {
    const rounds = 3;
    const jobs: Promise<Bits>[] = [];
    for (let r = 0; r < rounds; r++) {
      for (const c of CASES) jobs.push(run(fm, c, backend === 'cuda' && (r + jobs.length) % 2 === 0));
    }
    const got = await Promise.all(jobs);
    for (let r = 0; r < rounds; r++) expectSame(got.slice(r * CASES.length, (r + 1) * CASES.length), want, `round ${r}`);
    if (backend === 'cuda') expectSame(await oneByOne(fm, true), want, 'device-resident one by one');
  }, 300_000);

  it('several instances at once match the calls made one by one', async () => {
    const instances = await Promise.all([open(), open(), open()]);
    try {
      const got = await Promise.all(instances.map((x, k) => Promise.all(CASES.map((c) => run(x, c, backend === 'cuda' && k === 1)))));
      got.forEach((g, k) => expectSame(g, want, `instance ${k}`));
    } finally {
      await Promise.all(instances.map((x) => x.dispose()));
    }
  }, 300_000);

  it('worker threads, each with its own instance and calls in flight, match the calls made one by one', async () => {
    const rounds = 2;
    const openOptions = backend === 'cuda' ? { backend, library: emulator.library } : { backend };
    const got = await inWorkers(3, openOptions, rounds);
    got.forEach((g, k) => {
      for (let r = 0; r < rounds; r++) expectSame(g.slice(r * CASES.length, (r + 1) * CASES.length), want, `worker ${k} round ${r}`);
    });
  }, 300_000);
});
