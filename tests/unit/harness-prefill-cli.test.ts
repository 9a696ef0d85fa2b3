// The CLI's sparse prefill options as users run them: dist/cli/main.js in a child process (built
// by tests/setup/build.ts when a source is newer).
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import type { CompareReport } from '../../src/harness/compare.js';

const root = join(import.meta.dirname, '..', '..');
const main = join(root, 'dist', 'cli', 'main.js');

function cli(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [main, ...args], { cwd: root, maxBuffer: 1 << 26 }, (err, stdout, stderr) => {
      resolve({ status: err ? (typeof err.code === 'number' ? err.code : null) : 0, stdout, stderr });
    });
  });
}

const TWO_CASES = 's_q=1 s_kv=95 topk=128 h_q=64';

describe('flashmla-node compare and bench: sparse prefill', () => {
  test('compare --matrix prefill: reference vs oracle passes, out, maxLogits and lse judged', async () => {
    const r = await cli(['compare', '--a', 'reference', '--b', 'oracle', '--matrix', 'prefill', '--filter', TWO_CASES, '--json']);
    expect(r.status).toBe(0);
    const report = JSON.parse(r.stdout) as CompareReport;
    expect(report.results.map((c) => [c.kind, c.pass, c.maxLogits?.pass])).toEqual([['prefill', true, true], ['prefill', true, true]]);
    expect(report.source).toBe('prefill');
  }, 120_000);

  test('the table gains a max_logits column; --max-work skips (not fails) what is above it', async () => {
    const r = await cli(['compare', '--a', 'reference', '--b', 'oracle', '--matrix', 'prefill', '--filter', TWO_CASES, '--max-work', '0.0175']);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/max_logits max\|Δ\|/);
    expect(r.stdout).toMatch(/1 passed, 0 failed, 1 skipped/);
    expect(r.stdout).toMatch(/above maxWork/);
  }, 120_000);

  test.each([
    [['compare', '--matrix', 'prefil'], /--matrix must be one of quick, full, prefill, prefill-full/],
    [['compare', '--max-work', '0'], /--max-work must be a positive number/],
    [['bench', '--shapes', 'prefil'], /--shapes must be one of flashmla, prefill, anchors/],
    [['bench', '--shapes', 'anchors', '--svg', '/tmp/x.svg'], /--svg charts the flashmla and prefill shapes/],
  ])('%j is a usage error', async (args, message) => {
    const r = await cli(args);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(message);
  });

  test('--help names the prefill matrices and shapes', async () => {
    expect((await cli(['compare', '--help'])).stdout).toMatch(/prefill-full/);
    expect((await cli(['bench', '--help'])).stdout).toMatch(/--shapes flashmla\|prefill\|anchors/);
  });
});
