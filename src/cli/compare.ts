import { FlashMLA } from '../flashmla.js';
import { compare as runCompare, type CaseResult, type CompareReport, type CompareSide } from '../harness/compare.js';
import { MATRIX_NAMES } from '../harness/matrix.js';
import { PREFILL_MATRIX_NAMES } from '../harness/prefill-matrix.js';
import { choice, integer, MAX_DEVICE, MAX_THREADS, str, UsageError, type Command, type OptionValues } from './args.js';
import { createProgress } from './progress.js';
import { fmtErr, fmtMs, formatTable } from './table.js';

/** The case generators seed a 32-bit state: a larger seed would silently repeat a smaller one's cases. */
const MAX_SEED = 0xffffffff;

const SIDES = ['cuda', 'reference', 'oracle'] as const;
type SideName = (typeof SIDES)[number];

function status(r: CaseResult): string {
  return r.skipped !== null ? 'SKIP' : r.pass ? 'PASS' : 'FAIL';
}

const MATRICES = [...MATRIX_NAMES, ...PREFILL_MATRIX_NAMES] as const;

function reportText(report: CompareReport): string {
  // Sparse prefill also returns max_logits: its column appears when a prefill case ran.
  const prefill = report.results.some((r) => r.kind === 'prefill');
  const rows = report.results.map((r, i) => [
    String(i + 1), r.name, fmtMs(r.ms.a), fmtMs(r.ms.b), fmtErr(r.out?.maxAbsErr), ...(prefill ? [fmtErr(r.maxLogits?.maxAbsErr)] : []),
    fmtErr(r.lse?.maxAbsErr), fmtErr(r.out?.cosDiff), status(r),
  ]);
  const header = ['#', 'case', `${report.a} ms`, `${report.b} ms`, 'out max|Δ|', ...(prefill ? ['max_logits max|Δ|'] : []), 'lse max|Δ|', 'out cos_diff', 'result'];
  const table = formatTable(header, rows, header.slice(0, -1).map((_, i) => i).filter((i) => i !== 1));
  const notes: string[] = [];
  report.results.forEach((r, i) => {
    const why = [
      ...r.errors.map((e) => `${e.side === 'a' ? report.a : report.b} threw [${e.code}] ${e.message}`),
      ...[r.out, r.maxLogits, r.lse].filter((t) => t && !t.pass).map((t) => `${t!.name}: ${t!.reason}`),
      ...(r.skipped !== null ? [`skipped: ${r.skipped}`] : []),
    ];
    if (why.length > 0) notes.push(`#${i + 1} ${r.name}\n${why.map((w) => `    ${w}`).join('\n')}`);
  });
  const source = report.source === 'cases' ? 'given cases' : `${report.source} matrix, seed ${report.seed}`;
  const summary = `${report.pass ? 'PASS' : 'FAIL'}: ${report.a} vs ${report.b} on the ${source}: ${report.passed} passed, ` +
    `${report.failed} failed, ${report.skipped} skipped (${(report.ms / 1000).toFixed(1)} s; FlashMLA's tolerances)`;
  return [table, ...(notes.length > 0 ? ['', ...notes] : []), '', summary, ''].join('\n');
}

/** A positive GFLOP option as FLOPs, or a usage error naming it. */
function gflop(values: OptionValues, name: string): number | undefined {
  const v = str(values, name);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!(n > 0)) throw new UsageError(`--${name} must be a positive number, got '${v}'`);
  return n * 1e9;
}

/** --a/--b as given; without them CUDA vs reference when CUDA is usable, else reference vs oracle. */
async function sides(values: OptionValues, device: number | undefined): Promise<{ a: CompareSide; b: CompareSide; owned: FlashMLA | null; note: string }> {
  const a = values.a === undefined ? undefined : choice<SideName>(values, 'a', SIDES, 'cuda');
  const b = values.b === undefined ? undefined : choice<SideName>(values, 'b', SIDES, 'reference');
  if (a !== undefined && a === b) throw new UsageError(`--a and --b are both '${a}'`);
  const fallback = (x: SideName): SideName => (x === 'reference' ? 'oracle' : 'reference');
  if (a !== undefined) return { a, b: b ?? fallback(a), owned: null, note: '' };
  if (b !== undefined) return { a: b === 'reference' ? 'cuda' : 'reference', b, owned: null, note: '' };
  const inst = await FlashMLA.open({ backend: 'auto', library: str(values, 'library'), device });
  if (inst.backend === 'cuda') return { a: inst, b: 'reference', owned: inst, note: '' };
  const why = (await inst.info()).reason;
  await inst.dispose();
  return { a: 'reference', b: 'oracle', owned: null, note: `CUDA not used (${why}): comparing reference vs oracle\n` };
}

export const compareCommand: Command = {
  name: 'compare',
  usage: '[--a cuda|reference|oracle] [--b ...] [--matrix quick|full|prefill|prefill-full] [--seed N] [--filter TEXT] [--max-work GFLOP] [--library PATH] [--json]',
  summary: "Runs a matrix of generated decode or sparse prefill cases on two backends and judges a\n" +
    "against b with FlashMLA's check_is_allclose. Default: cuda vs reference when CUDA is usable,\n" +
    'else reference vs the float64 oracle. Exit status 0 only when every case passes.',
  options: {
    a: { type: 'string', value: 'SIDE', help: 'judged side: cuda, reference or oracle' },
    b: { type: 'string', value: 'SIDE', help: 'yardstick side (default: reference, or oracle when a is reference)' },
    matrix: {
      type: 'string', value: 'NAME',
      help: 'decode: quick (default; seconds on a CPU) or full (FlashMLA grids, meant for a GPU); sparse prefill: prefill (FlashMLA\'s grid cut to CPU size) or prefill-full (its sizes, for a GPU)',
    },
    seed: { type: 'string', value: 'N', help: 'seed of the generated cases (default 0)' },
    filter: { type: 'string', value: 'TEXT', help: 'only cases whose name contains TEXT' },
    library: { type: 'string', value: 'PATH', help: 'FlashMLA build for the cuda side' },
    device: { type: 'string', value: 'N', help: 'CUDA device index (default 0)' },
    threads: { type: 'string', value: 'N', help: 'reference backend worker threads (default: all cores)' },
    'max-oracle-work': { type: 'string', value: 'GFLOP', help: 'skip cases above this many GFLOP when the oracle is a side (default 2)' },
    'max-work': { type: 'string', value: 'GFLOP', help: 'skip cases above this many GFLOP whatever the sides (default: none skipped)' },
    json: { type: 'boolean', help: 'print the full results as JSON' },
  },
  async run(values) {
    const matrix = choice(values, 'matrix', MATRICES, 'quick');
    const seed = integer(values, 'seed', 0, 0, MAX_SEED);
    const device = values.device === undefined ? undefined : integer(values, 'device', 0, 0, MAX_DEVICE);
    const threads = values.threads === undefined ? undefined : integer(values, 'threads', 1, 1, MAX_THREADS);
    const maxOracleWork = gflop(values, 'max-oracle-work');
    const maxWork = gflop(values, 'max-work');
    const json = values.json === true;
    const { a, b, owned, note } = await sides(values, device);
    if (note && !json) process.stderr.write(note);
    const progress = createProgress(process.stderr);
    try {
      const report = await runCompare({
        a, b, cases: { matrix, seed }, filter: str(values, 'filter'), library: str(values, 'library'), device, threads,
        maxOracleWork, maxWork,
        onProgress: ({ index, total, name, result }) => (result ? progress.done(index, total, name, status(result)) : progress.start(index, total, name)),
      });
      progress.end();
      process.stdout.write(json ? `${JSON.stringify(report, null, 2)}\n` : reportText(report));
      return report.pass ? 0 : 1;
    } finally {
      await owned?.dispose();
    }
  },
};
