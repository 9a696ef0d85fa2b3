import { FlashMLA } from '../flashmla.js';
import { generateDenseCase, generateSparseCase, type DecodeCase } from '../harness/cases.js';
import { generatePrefillCase, type PrefillCase } from '../harness/prefill-cases.js';
import { compare, type CaseResult, type CustomSide } from '../harness/compare.js';
import type { HostTensor, Tensor } from '../tensor.js';
import type { DecodeArgs, SparseFwdArgs } from '../types.js';
import { median, perSecond } from '../bench/timing.js';
import { warmup, type WarmupReport } from '../reference/warmup.js';
import { choice, str, type Command } from './args.js';
import { fmtErr, fmtMs, fmtRate } from './table.js';

/**
 * One realistic decode step of each kind: DeepSeek V3 dense MLA (h_q 128, 4096 tokens), MODEL1
 * sparse with an extra cache and sinks, V3.2 sparse (topk 2048 of an 8192-token FP8 cache); then a
 * V3.2 sparse prefill of 4 prompt tokens (topk 2048 of 8192 bf16 tokens, sinks).
 */
function demoCases(): (DecodeCase | PrefillCase)[] {
  return [
    generateDenseCase({ b: 2, sQ: 1, sK: 4096, hQ: 128, hK: 1, varlen: false, causal: false }, 1),
    generateSparseCase({
      b: 2, sQ: 1, hQ: 64, dQK: 512, sink: true,
      main: { sK: 8192, topk: 2048, blockSize: 64 }, extra: { sK: 2048, topk: 512, blockSize: 64 },
    }, 2),
    generateSparseCase({ b: 2, sQ: 1, hQ: 128, dQK: 576, main: { sK: 8192, topk: 2048, blockSize: 64 } }, 3),
    generatePrefillCase({ sQ: 4, sKv: 8192, topk: 2048, hQ: 128, dQK: 576, sink: true }, 4),
  ];
}

function describeArgs(c: DecodeCase | PrefillCase): string {
  const named: [string, Tensor | null | undefined][] = c.kind === 'prefill'
    ? [['q', c.args.q], ['kv', c.args.kv], ['indices', c.args.indices], ['attnSink', c.args.attnSink]]
    : [
    ['q', c.args.q], ['kCache', c.args.kCache], ['blockTable', c.args.blockTable], ['indices', c.args.indices],
    ['attnSink', c.args.attnSink], ['extraKCache', c.args.extraKCache], ['extraIndices', c.args.extraIndicesInKvcache],
  ];
  return named.filter(([, t]) => t).map(([n, t]) => `${n} (${t!.shape.join(',')}) ${t!.dtype}`).join(', ');
}

/** Calls of each step after its first: their median is the steady time. */
const STEADY_CALLS = 5;

/** A step's first call in this process and the median of the STEADY_CALLS after it, ms. */
interface StepTiming {
  firstMs: number;
  steadyMs: number;
}

function stepText(c: DecodeCase | PrefillCase, r: CaseResult, backend: string, t: StepTiming | undefined): string {
  const lines = [`${r.pass ? 'PASS' : 'FAIL'}  ${c.name}`, `      ${describeArgs(c)}`];
  if (t) {
    lines.push(`      ${backend}: first call ${fmtMs(t.firstMs)} ms (${fmtRate(perSecond(c.flops, t.firstMs), 'FLOP/s')}), ` +
      `steady ${fmtMs(t.steadyMs)} ms (${fmtRate(perSecond(c.flops, t.steadyMs), 'FLOP/s')}, median of the next ${STEADY_CALLS}); float64 oracle: ${fmtMs(r.ms.b)} ms`);
  }
  for (const t of [r.out, r.maxLogits, r.lse]) {
    if (t) lines.push(`      ${t.name}: max |Δ| ${fmtErr(t.maxAbsErr)}, cos_diff ${fmtErr(t.cosDiff)} ${t.pass ? 'within' : 'OUTSIDE'} FlashMLA's tolerances${t.pass ? '' : ` (${t.reason})`}`);
  }
  for (const e of r.errors) lines.push(`      ${e.side === 'a' ? backend : 'oracle'} failed: [${e.code}] ${e.message}`);
  return lines.join('\n');
}

export const demo: Command = {
  name: 'demo',
  usage: '[--backend auto|cuda|reference] [--library PATH] [--json]',
  summary: 'Runs one decode step each of dense (DeepSeek V3), MODEL1 sparse (extra cache, sinks) and V3.2 sparse, and a\n' +
    'V3.2 sparse prefill, on the chosen backend and checks every result against the float64 oracle (FlashMLA\'s tolerances).',
  options: {
    backend: { type: 'string', value: 'NAME', help: "auto (default: CUDA when usable), cuda or reference" },
    library: { type: 'string', value: 'PATH', help: 'FlashMLA build to load (default: FLASHMLA_LIBRARY, then the installed flash_mla package)' },
    json: { type: 'boolean', help: 'print the results as JSON' },
  },
  async run(values) {
    const backend = choice(values, 'backend', ['auto', 'cuda', 'reference'] as const, 'auto');
    const inst = await FlashMLA.open({ backend, library: str(values, 'library') });
    try {
      const cases = demoCases();
      const json = values.json === true;
      // The reference readies its threads and compiled code first (what a server does at start).
      const ready: WarmupReport | null = inst.backend === 'reference' ? await warmup() : null;
      if (!json) {
        const why = backend === 'auto' && inst.backend !== 'cuda' ? `\n  (${(await inst.info()).reason})` : '';
        const warm = ready ? `\nwarm-up: ${fmtMs(ready.ms)} ms (${ready.tier} tier, ${ready.threads} threads); then each step's first call in this process and its steady time` : '';
        process.stdout.write(`flashmla-node demo on the ${inst.backend} backend${why}${warm}\n\n`);
      }
      // Every call of a step is timed: the first, then STEADY_CALLS more (compare's warm-up calls and its timed call).
      const calls: number[][] = cases.map(() => []);
      let current = 0;
      const side: CustomSide = {
        name: inst.backend,
        async decode(args) {
          const t0 = performance.now();
          // Generated cases hold host tensors: host results.
          const r = await inst.flashMlaWithKvCache(args as DecodeArgs & { q: HostTensor });
          calls[current]!.push(performance.now() - t0);
          return r;
        },
        async sparseFwd(args) {
          const t0 = performance.now();
          const r = await inst.flashMlaSparseFwd(args as SparseFwdArgs & { q: HostTensor });
          calls[current]!.push(performance.now() - t0);
          return r;
        },
      };
      const timing = (i: number): StepTiming | undefined => {
        const ms = calls[i]!;
        return ms.length > 1 ? { firstMs: ms[0]!, steadyMs: median(ms.slice(1)) } : undefined;
      };
      const report = await compare({
        a: side, b: 'oracle', cases, maxOracleWork: Infinity, warmup: STEADY_CALLS - 1,
        onProgress: ({ index, result }) => {
          current = index;
          if (result && !json) process.stdout.write(`${stepText(cases[index]!, result, inst.backend, timing(index))}\n\n`);
        },
      });
      const steps = cases.map((_, i) => timing(i) ?? null);
      if (json) process.stdout.write(`${JSON.stringify({ backend: inst.backend, warmup: ready, steps, ...report }, null, 2)}\n`);
      else process.stdout.write(report.pass ? 'All three decode steps and the prefill match the float64 oracle.\n' : `${report.failed} of ${cases.length} steps FAILED.\n`);
      return report.pass ? 0 : 1;
    } finally {
      await inst.dispose();
    }
  },
};
