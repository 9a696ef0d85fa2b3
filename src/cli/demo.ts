import { FlashMLA } from '../flashmla.js';
import { generateDenseCase, generateSparseCase, type DecodeCase } from '../harness/cases.js';
import { compare, type CaseResult } from '../harness/compare.js';
import type { Tensor } from '../tensor.js';
import { perSecond } from '../bench/timing.js';
import { choice, str, type Command } from './args.js';
import { fmtErr, fmtMs, fmtRate } from './table.js';

/**
 * One realistic decode step of each kind: DeepSeek V3 dense MLA (h_q 128, 4096 tokens), MODEL1
 * sparse with an extra cache and sinks, V3.2 sparse (topk 2048 of an 8192-token FP8 cache).
 */
function demoCases(): DecodeCase[] {
  return [
    generateDenseCase({ b: 2, sQ: 1, sK: 4096, hQ: 128, hK: 1, varlen: false, causal: false }, 1),
    generateSparseCase({
      b: 2, sQ: 1, hQ: 64, dQK: 512, sink: true,
      main: { sK: 8192, topk: 2048, blockSize: 64 }, extra: { sK: 2048, topk: 512, blockSize: 64 },
    }, 2),
    generateSparseCase({ b: 2, sQ: 1, hQ: 128, dQK: 576, main: { sK: 8192, topk: 2048, blockSize: 64 } }, 3),
  ];
}

function describeArgs(c: DecodeCase): string {
  const named: [string, Tensor | null | undefined][] = [
    ['q', c.args.q], ['kCache', c.args.kCache], ['blockTable', c.args.blockTable], ['indices', c.args.indices],
    ['attnSink', c.args.attnSink], ['extraKCache', c.args.extraKCache], ['extraIndices', c.args.extraIndicesInKvcache],
  ];
  return named.filter(([, t]) => t).map(([n, t]) => `${n} (${t!.shape.join(',')}) ${t!.dtype}`).join(', ');
}

function stepText(c: DecodeCase, r: CaseResult, backend: string): string {
  const lines = [`${r.pass ? 'PASS' : 'FAIL'}  ${c.name}`, `      ${describeArgs(c)}`];
  if (r.ms.a !== null) lines.push(`      ${backend}: ${fmtMs(r.ms.a)} ms after one warm-up call (${fmtRate(perSecond(c.flops, r.ms.a), 'FLOP/s')}); float64 oracle: ${fmtMs(r.ms.b)} ms`);
  for (const t of [r.out, r.lse]) {
    if (t) lines.push(`      ${t.name}: max |Δ| ${fmtErr(t.maxAbsErr)}, cos_diff ${fmtErr(t.cosDiff)} ${t.pass ? 'within' : 'OUTSIDE'} FlashMLA's tolerances${t.pass ? '' : ` (${t.reason})`}`);
  }
  for (const e of r.errors) lines.push(`      ${e.side === 'a' ? backend : 'oracle'} failed: [${e.code}] ${e.message}`);
  return lines.join('\n');
}

export const demo: Command = {
  name: 'demo',
  usage: '[--backend auto|cuda|reference] [--library PATH] [--json]',
  summary: 'Runs one decode step each of dense (DeepSeek V3), MODEL1 sparse (extra cache, sinks) and V3.2 sparse\n' +
    'on the chosen backend and checks every result against the float64 oracle (FlashMLA\'s tolerances).',
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
      if (!json) {
        const why = backend === 'auto' && inst.backend !== 'cuda' ? `\n  (${(await inst.info()).reason})` : '';
        process.stdout.write(`flashmla-node demo on the ${inst.backend} backend${why}\n\n`);
      }
      const report = await compare({
        a: inst, b: 'oracle', cases, maxOracleWork: Infinity, warmup: 1,
        onProgress: ({ index, result }) => { if (result && !json) process.stdout.write(`${stepText(cases[index]!, result, inst.backend)}\n\n`); },
      });
      if (json) process.stdout.write(`${JSON.stringify({ backend: inst.backend, ...report }, null, 2)}\n`);
      else process.stdout.write(report.pass ? 'All three decode steps match the float64 oracle.\n' : `${report.failed} of ${cases.length} decode steps FAILED.\n`);
      return report.pass ? 0 : 1;
    } finally {
      await inst.dispose();
    }
  },
};
