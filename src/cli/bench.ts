import { closeSync, writeFileSync } from 'node:fs';
import type { AnchorRow } from '../bench/anchors.js';
import { flashmlaShapes, type BenchInputs, type BenchShape } from '../bench/flashmla-shapes.js';
import { prefillShapes, type PrefillBenchInputs, type PrefillBenchShape } from '../bench/prefill-shapes.js';
import { lineChartSvg, type ChartSeries } from '../bench/svg.js';
import { median, perSecond, timeCalls } from '../bench/timing.js';
import { FlashMLA, type DeviceTensor } from '../flashmla.js';
import { flashMlaSparseFwd } from '../api.js';
import { referenceDecode } from '../reference/index.js';
import { warmup as warmupReference } from '../reference/warmup.js';
import { getMlaMetadata } from '../sched-meta.js';
import { isHostTensor, type HostTensor, type Tensor } from '../tensor.js';
import { SPARSE_FWD_TENSOR_KEYS, TENSOR_ARG_KEYS } from '../validate/args.js';
import { choice, integer, integerList, MAX_THREADS, outputFile, str, UsageError, type Command, type OptionValues } from './args.js';
import { fmtMs, fmtRate, formatTable } from './table.js';

/** One measured FlashMLA benchmark shape. */
export interface ShapeRow {
  group: string;
  shape: string;
  seqlen: number | null;
  backend: 'cuda' | 'reference';
  /** Reference worker threads; null on CUDA. */
  threads: number | null;
  medianMs: number;
  minMs: number;
  flops: number;
  bytes: number;
  /** GFLOP/s and GB/s at the median (docs/flashmla-interface.md#dense-generator, docs/flashmla-interface.md#sparse-generator, docs/flashmla-interface.md#bench-flash-mla formulas). */
  gflops: number;
  gbps: number;
  /** CUDA: median time the calling (JS) thread spends in one call before it can go on. */
  jsMsPerCall: number | null;
}

/** Uploads every tensor argument once, so the timed calls see device-resident inputs as in serving. */
async function uploadArgs<A extends object>(inst: FlashMLA, args: A, keys: readonly string[]): Promise<{ args: A; tensors: DeviceTensor[] }> {
  const out: Record<string, unknown> = { ...(args as Record<string, unknown>) };
  const tensors: DeviceTensor[] = [];
  for (const k of keys) {
    const t = (args as Record<string, unknown>)[k];
    if (t && isHostTensor(t as Tensor)) {
      const d = await inst.upload(t as HostTensor);
      tensors.push(d);
      out[k] = d;
    }
  }
  return { args: out as A, tensors };
}

async function benchCuda(inst: FlashMLA, shape: BenchShape, inputs: BenchInputs, warmup: number, reps: number): Promise<ShapeRow> {
  const dev = await uploadArgs(inst, inputs.args, TENSOR_ARG_KEYS);
  // One sched meta per shape, reused by every call as FlashMLA does within a decoding step (docs/flashmla-interface.md#sched-meta-caching).
  const schedMeta = getMlaMetadata();
  const jsMs: number[] = [];
  try {
    const timing = await timeCalls(async () => {
      const t0 = performance.now();
      const pending = inst.flashMlaWithKvCache({ ...dev.args, schedMeta });
      jsMs.push(performance.now() - t0);
      const r = await pending;
      for (const t of [r.out, r.lse] as Tensor[]) if (!isHostTensor(t)) (t as DeviceTensor).dispose();
    }, warmup, reps);
    const hostMs = median(jsMs.slice(warmup));
    return row(shape, inputs, 'cuda', null, timing.medianMs, timing.minMs, hostMs);
  } finally {
    schedMeta.dispose();
    for (const t of dev.tensors) t.dispose();
  }
}

/** Times sparse prefill calls on device-resident inputs (outputs disposed after each call). */
async function benchCudaPrefill(inst: FlashMLA, shape: PrefillBenchShape, inputs: PrefillBenchInputs, warmup: number, reps: number): Promise<ShapeRow> {
  const dev = await uploadArgs(inst, inputs.args, SPARSE_FWD_TENSOR_KEYS);
  const jsMs: number[] = [];
  try {
    const timing = await timeCalls(async () => {
      const t0 = performance.now();
      const pending = inst.flashMlaSparseFwd(dev.args);
      jsMs.push(performance.now() - t0);
      const r = await pending;
      for (const t of [r.out, r.maxLogits, r.lse] as Tensor[]) if (!isHostTensor(t)) (t as DeviceTensor).dispose();
    }, warmup, reps);
    return row(shape, inputs, 'cuda', null, timing.medianMs, timing.minMs, median(jsMs.slice(warmup)));
  } finally {
    for (const t of dev.tensors) t.dispose();
  }
}

function row(shape: BenchShape | PrefillBenchShape, inputs: { flops: number; bytes: number }, backend: 'cuda' | 'reference', threads: number | null, medianMs: number, minMs: number, jsMsPerCall: number | null): ShapeRow {
  return {
    group: shape.group, shape: shape.name, seqlen: shape.seqlen, backend, threads, medianMs, minMs,
    flops: inputs.flops, bytes: inputs.bytes, gflops: perSecond(inputs.flops, medianMs), gbps: perSecond(inputs.bytes, medianMs), jsMsPerCall,
  };
}

/** Reference thread counts to measure: by default serial and parallel. */
function parseThreads(values: OptionValues): number[] {
  return integerList(values, 'threads', [1, 2], 1, MAX_THREADS);
}

function shapesTable(rows: ShapeRow[]): string {
  const cuda = rows.some((r) => r.backend === 'cuda');
  const header = ['shape', ...(cuda ? [] : ['threads']), 'median ms', 'compute', 'memory', ...(cuda ? ['JS ms/call'] : [])];
  const body = rows.map((r) => [
    r.shape, ...(cuda ? [] : [String(r.threads)]), fmtMs(r.medianMs), fmtRate(r.gflops, 'FLOP/s'), fmtRate(r.gbps, 'B/s'),
    ...(cuda ? [r.jsMsPerCall === null ? '–' : r.jsMsPerCall.toFixed(3)] : []),
  ]);
  return formatTable(header, body, [1, 2, 3, 4]);
}

/** Throughput against sequence length for every series that sweeps it. */
function chart(rows: ShapeRow[], backend: string, what: 'decode' | 'prefill'): string {
  const tera = backend === 'cuda';
  const series = new Map<string, ChartSeries>();
  for (const r of rows) {
    if (r.seqlen === null) continue;
    const name = r.threads === null ? r.group : `${r.group}, ${r.threads} thread${r.threads > 1 ? 's' : ''}`;
    const s = series.get(name) ?? { name, points: [] };
    s.points.push({ x: r.seqlen, y: tera ? r.gflops / 1000 : r.gflops });
    series.set(name, s);
  }
  return lineChartSvg({
    title: what === 'decode' ? `flashmla-node dense decode on ${backend} (b, h_q=128, bf16)` : `flashmla-node sparse prefill on ${backend} (bf16 kv, sink)`,
    xLabel: what === 'decode' ? 'sequence length' : 's_kv', yLabel: tera ? 'TFLOP/s' : 'GFLOP/s', series: [...series.values()],
  });
}

async function runShapes(values: OptionValues, backend: 'cuda' | 'reference', what: 'decode' | 'prefill', json: boolean): Promise<number> {
  const threads = parseThreads(values);
  const cuda = backend === 'cuda';
  const reps = integer(values, 'reps', cuda ? 20 : 3, 1);
  const warmup = integer(values, 'warmup', cuda ? 3 : 1, 0);
  const svg = outputFile(values, 'svg');
  try {
    const target = cuda ? 'gpu' : 'cpu';
    const library = str(values, 'library');
    const { shapes, note } = what === 'decode' ? flashmlaShapes(target) : prefillShapes(target);
    const rows = what === 'decode'
      ? await measureShapes(shapes as BenchShape[], DECODE_RUNNER, backend, threads, warmup, reps, library)
      : await measureShapes(shapes as PrefillBenchShape[], PREFILL_RUNNER, backend, threads, warmup, reps, library);
    const timingNote = cuda
      ? `median of ${reps} calls after ${warmup} warm-up; time = call to resolved promise (launch, kernels, wait), inputs on the device`
      : `median of ${reps} calls after warmup() and ${warmup} warm-up call${warmup === 1 ? '' : 's'}; host tensors`;
    // The results first: a failing chart write must not lose them.
    if (json) process.stdout.write(`${JSON.stringify({ backend, shapes: what === 'decode' ? 'flashmla' : 'prefill', note, timing: timingNote, rows }, null, 2)}\n`);
    else process.stdout.write(`${note}\n${timingNote}\n\n${shapesTable(rows)}\n`);
    if (svg) {
      writeFileSync(svg.fd, chart(rows, backend, what));
      if (!json) process.stdout.write(`\nchart written to ${svg.path}\n`);
    }
    return 0;
  } finally {
    if (svg) closeSync(svg.fd);
  }
}

/** How one kind of shape runs: its CUDA timing, and one reference call at a thread count. */
interface ShapeRunner<S, I> {
  build(shape: S): I;
  cuda(inst: FlashMLA, shape: S, inputs: I, warmup: number, reps: number): Promise<ShapeRow>;
  reference(inputs: I, threads: number): Promise<unknown>;
}

const DECODE_RUNNER: ShapeRunner<BenchShape, BenchInputs> = {
  build: (shape) => shape.build(),
  cuda: benchCuda,
  reference: (inputs, threads) => referenceDecode({ ...inputs.args, schedMeta: getMlaMetadata() }, { threads }),
};

const PREFILL_RUNNER: ShapeRunner<PrefillBenchShape, PrefillBenchInputs> = {
  build: (shape) => shape.build(),
  cuda: benchCudaPrefill,
  reference: (inputs, threads) => flashMlaSparseFwd(inputs.args, { backend: 'reference', threads }),
};

/** Times every shape: once on CUDA, once per thread count on the reference. */
async function measureShapes<S extends BenchShape | PrefillBenchShape, I extends { flops: number; bytes: number }>(
  shapes: S[], runner: ShapeRunner<S, I>, backend: 'cuda' | 'reference', threads: number[], warmup: number, reps: number,
  library: string | undefined,
): Promise<ShapeRow[]> {
  const inst = backend === 'cuda' ? await FlashMLA.open({ backend: 'cuda', library }) : null;
  if (!inst) await warmupReference({ threads: Math.max(...threads) });
  const rows: ShapeRow[] = [];
  try {
    for (const shape of shapes) {
      process.stderr.write(`${shape.name} ...\n`);
      const inputs = runner.build(shape);
      if (inst) rows.push(await runner.cuda(inst, shape, inputs, warmup, reps));
      else {
        for (const t of threads) {
          const timing = await timeCalls(() => runner.reference(inputs, t), warmup, reps);
          rows.push(row(shape, inputs, 'reference', t, timing.medianMs, timing.minMs, null));
        }
      }
    }
  } finally {
    await inst?.dispose();
  }
  return rows;
}

/** Anchor rows: ours at each thread count, the PyTorch peer and the ratio when measured. */
function anchorsTable(rows: AnchorRow[]): string {
  const body = rows.map((r) => [
    r.shape, String(r.threads), r.tier, fmtMs(r.ms), fmtRate(r.gflops, 'FLOP/s'), fmtMs(r.torchMs), r.ratio === null ? '–' : r.ratio.toFixed(2),
  ]);
  return formatTable(['shape', 'threads', 'tier', 'ms', 'compute', 'torch ms', 'ratio'], body, [1, 3, 4, 5, 6]);
}

async function runAnchors(values: OptionValues, json: boolean): Promise<number> {
  const threads = parseThreads(values);
  const reps = integer(values, 'reps', 3, 1);
  // Loaded on demand: its PyTorch-peer machinery is not needed by the other commands.
  const { runAnchorBench, ANCHOR_WARMUP } = await import('../bench/anchors.js');
  const rows = await runAnchorBench({ threads, reps, torch: true, log: (line: string) => process.stderr.write(`${line}\n`) });
  const note = `median of ${reps} calls after ${ANCHOR_WARMUP} warm-up; ratio = our ms / torch ms at the same thread count (< 1: faster)`;
  if (json) process.stdout.write(`${JSON.stringify({ backend: 'reference', shapes: 'anchors', note, rows }, null, 2)}\n`);
  else process.stdout.write(`CPU anchor shapes on the reference backend\n${note}\n\n${anchorsTable(rows)}\n`);
  return 0;
}

export const bench: Command = {
  name: 'bench',
  usage: '[--backend reference|cuda] [--shapes flashmla|prefill|anchors] [--threads 1,2] [--reps N] [--library PATH] [--svg FILE] [--json]',
  summary: "Times decode or sparse prefill calls and prints median ms, FLOP/s and bytes/s with FlashMLA's formulas.\n" +
    '  flashmla: FlashMLA\'s decode benchmark shapes; scaled down on the reference backend.\n' +
    '  prefill:  FlashMLA\'s sparse prefill performance cases (s_q 4096; 32 on the reference backend).\n' +
    '  anchors:  the five CPU anchor shapes, with the PyTorch CPU peer when Debian\'s python3-torch is installed.',
  options: {
    backend: { type: 'string', value: 'NAME', help: 'reference (default) or cuda' },
    shapes: { type: 'string', value: 'SET', help: 'flashmla (default), prefill or anchors' },
    threads: { type: 'string', value: 'LIST', help: 'reference worker thread counts to measure (default 1,2)' },
    reps: { type: 'string', value: 'N', help: 'timed calls per shape (default 3 on the reference, 20 on cuda)' },
    warmup: { type: 'string', value: 'N', help: 'untimed calls first (default 1 on the reference, 3 on cuda)' },
    library: { type: 'string', value: 'PATH', help: 'FlashMLA build for --backend cuda' },
    svg: { type: 'string', value: 'FILE', help: 'write a chart of throughput against sequence length (flashmla and prefill shapes; opened before the run)' },
    json: { type: 'boolean', help: 'print the rows as JSON' },
  },
  async run(values) {
    const backend = choice(values, 'backend', ['reference', 'cuda'] as const, 'reference');
    const shapes = choice(values, 'shapes', ['flashmla', 'prefill', 'anchors'] as const, 'flashmla');
    const json = values.json === true;
    if (shapes === 'anchors') {
      if (backend !== 'reference') throw new UsageError('--shapes anchors measures the reference backend; drop --backend cuda');
      if (values.svg !== undefined) throw new UsageError('--svg charts the flashmla and prefill shapes; use --shapes flashmla or prefill');
      return runAnchors(values, json);
    }
    return runShapes(values, backend, shapes === 'flashmla' ? 'decode' : 'prefill', json);
  },
};
