// The `flashmla-node` CLI as users run it: the compiled dist/cli/main.js in a child process
// (built by tests/setup/build.ts when a source is newer).
import { execFile } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import type { CompareReport } from '../../src/harness/compare.js';
import { buildEmulator } from '../emulator/build.mjs';

const root = join(import.meta.dirname, '..', '..');
const main = join(root, 'dist', 'cli', 'main.js');

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[], env: NodeJS.ProcessEnv = {}, as: { uid?: number; gid?: number } = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [main, ...args], { cwd: root, env: { ...process.env, ...env }, maxBuffer: 1 << 26, ...as }, (err, stdout, stderr) => {
      const status = err ? (typeof err.code === 'number' ? err.code : null) : 0;
      resolve({ status, stdout, stderr });
    });
  });
}

describe('flashmla-node conventions', () => {
  test('the entry has a node shebang', () => {
    expect(readFileSync(main, 'utf8').split('\n')[0]).toBe('#!/usr/bin/env node');
  });

  test('--help lists the commands; each command has its own --help', async () => {
    const top = await cli(['--help']);
    expect(top.status).toBe(0);
    for (const c of ['demo', 'doctor', 'compare', 'bench']) expect(top.stdout).toContain(`  ${c}`);
    const cmd = await cli(['compare', '--help']);
    expect(cmd.status).toBe(0);
    expect(cmd.stdout).toMatch(/^Usage: flashmla-node compare/);
    expect(cmd.stdout).toContain('--matrix NAME');
  });

  test('--version prints the package version', async () => {
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string };
    expect(await cli(['--version'])).toEqual({ status: 0, stdout: `${pkg.version}\n`, stderr: '' });
  });

  test.each([
    [['frobnicate'], /unknown command 'frobnicate'/],
    [['compare', '--matrix', 'huge'], /--matrix must be one of quick, full/],
    [['compare', '--nope'], /Unknown option '--nope'/],
    [['bench', '--threads', '1,x'], /--threads must be/],
    [['compare', '--a', 'oracle', '--b', 'oracle'], /both 'oracle'/],
    // A negative number is the option's value in either form, and fails the option's own range check.
    [['bench', '--reps', '-5'], /--reps must be a positive integer, got '-5'/],
    [['bench', '--reps=-5'], /--reps must be a positive integer, got '-5'/],
    [['bench', '--warmup', '-1'], /--warmup must be an integer ≥ 0, got '-1'/],
    [['bench', '--threads', '-1'], /--threads must be a comma-separated list, each an integer from 1 to 1024, got '-1'/],
    [['doctor', '--device', '-1'], /--device must be an integer from 0 to 2147483647, got '-1'/],
    [['compare', '--seed', '-1'], /--seed must be an integer from 0 to 4294967295, got '-1'/],
    [['compare', '--max-oracle-work', '-2'], /--max-oracle-work must be a positive number, got '-2'/],
    // Out of range: a device past a C int, a seed past 32 bits, a typo'd thread count.
    [['compare', '--device', '2147483648'], /--device must be an integer from 0 to 2147483647/],
    [['compare', '--seed', '4294967296'], /--seed must be an integer from 0 to 4294967295/],
    [['compare', '--threads', '5000'], /--threads must be an integer from 1 to 1024, got '5000'/],
    [['bench', '--threads', '2,4096'], /--threads must be a comma-separated list, each an integer from 1 to 1024/],
    // A missing value, or one that starts with '-' (not a number), says how to write it.
    [['bench', '--backend'], /--backend needs a value \(NAME\)/],
    [['compare', '--filter', '-x'], /--filter needs a value \(TEXT\), got '-x'; write a value that starts with '-' as --filter=-x/],
    // No advice about positional arguments: no command takes any.
    [['bench', '--device', '-1'], /^flashmla-node bench: Unknown option '--device' \(see flashmla-node bench --help\)$/m],
  ])('usage error %j exits 2 with one line', async (args, message) => {
    const r = await cli(args);
    expect(r.status).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(message);
  });

  describe('--svg to a path that cannot be written fails before any measuring', () => {
    const dir = mkdtempSync(join(tmpdir(), 'flashmla-cli-'));
    const cases: [string, string][] = [
      ['in /proc', '/proc/nope/x.svg'],
      ['in a missing folder', join(dir, 'missing', 'x.svg')],
      ['a folder', dir],
    ];
    test.each(cases)('%s', async (_, path) => {
      const r = await cli(['bench', '--reps', '1', '--warmup', '0', '--threads', '1', '--json', '--svg', path]);
      expect(r.status).toBe(2);
      expect(r.stdout).toBe('');
      // One line and no progress lines: nothing ran.
      expect(r.stderr.trimEnd().split('\n')).toEqual([expect.stringContaining(`--svg: cannot write '${path}' (E`)]);
    });

    // root writes into read-only folders: as root, the command runs as the unprivileged user nobody.
    test('in a folder without write permission', async () => {
      const ro = join(dir, 'read-only');
      mkdirSync(ro);
      chmodSync(dir, 0o755);
      chmodSync(ro, 0o555);
      const r = await cli(['bench', '--reps', '1', '--svg', join(ro, 'x.svg')], {}, process.getuid?.() === 0 ? { uid: 65534, gid: 65534 } : {});
      expect(r.status).toBe(2);
      expect(r.stderr).toMatch(/^flashmla-node bench: --svg: cannot write '.*' \(EACCES: permission denied\)/);
    });

    test('a usage error leaves an existing file alone', async () => {
      const path = join(dir, 'kept.svg');
      writeFileSync(path, 'old chart');
      const r = await cli(['bench', '--reps', '0', '--svg', path]);
      expect(r.status).toBe(2);
      expect(readFileSync(path, 'utf8')).toBe('old chart');
    });
  });

  test('no command prints the help to stderr and exits 2', async () => {
    const r = await cli([]);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('Usage: flashmla-node <command>');
  });
});

describe('commands', () => {
  test('compare --matrix quick: reference vs the float64 oracle passes every case', async () => {
    const r = await cli(['compare', '--matrix', 'quick', '--a', 'reference', '--b', 'oracle', '--json']);
    expect(r.stderr).toMatch(/^\[1\/\d+\] PASS /);
    const report = JSON.parse(r.stdout) as CompareReport;
    expect(report.results.filter((c) => !c.pass).map((c) => [c.name, c.errors, c.out?.reason, c.lse?.reason])).toEqual([]);
    expect([report.a, report.b, report.source, report.pass]).toEqual(['reference', 'oracle', 'quick', true]);
    expect(r.status).toBe(0);
  });

  test('compare prints a table and a summary; --filter narrows the cases', async () => {
    const r = await cli(['compare', '--a', 'reference', '--b', 'oracle', '--filter', 'V3.2 b=2 s_q=3']);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/case\s+reference ms\s+oracle ms\s+out max\|Δ\|/);
    expect(r.stdout).toMatch(/^PASS: reference vs oracle on the quick matrix, seed 0: 1 passed, 0 failed, 0 skipped/m);
    expect(r.stderr).toMatch(/^\[\d+\/\d+\] PASS sparse V3.2 b=2 s_q=3/m);
  });

  test('compare fails (exit 1) when no case matches the filter', async () => {
    const r = await cli(['compare', '--a', 'reference', '--b', 'oracle', '--filter', 'no such case']);
    expect(r.status).toBe(1);
    expect(r.stdout).toMatch(/^FAIL: .* 0 passed, 0 failed/m);
  });

  test('doctor --json is a backend report', async () => {
    const r = await cli(['doctor', '--json'], { FLASHMLA_LIBRARY: join(root, 'no', 'such', 'libflash_mla.so') });
    expect(r.status).toBe(0);
    const info = JSON.parse(r.stdout) as { backend: string; reason: string; library: { ok: boolean } };
    expect(info.backend).toBe('reference');
    expect(info.library.ok).toBe(false);
    expect(info.reason.length).toBeGreaterThan(0);
  });

  test('demo --backend reference: three decode steps and a prefill, all matching the oracle', async () => {
    const r = await cli(['demo', '--backend', 'reference', '--json']);
    const report = JSON.parse(r.stdout) as CompareReport & { backend: string };
    expect(report.backend).toBe('reference');
    expect(report.results.map((c) => c.name.split(' ').slice(0, 2).join(' '))).toEqual(['dense bf16', 'sparse MODEL1', 'sparse V3.2', 'prefill s_q=4']);
    expect(report.results.every((c) => c.pass && c.ms.a! > 0 && c.ms.b! > 0)).toBe(true);
    expect(r.status).toBe(0);
  });

  test('demo --backend cuda without a usable build fails with the reason', async () => {
    const r = await cli(['demo', '--backend', 'cuda', '--library', join(root, 'no', 'such', 'libflash_mla.so')]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/\[E_BACKEND\] .*CUDA backend is not usable/);
  });

  test('bench --json --svg: the rows as JSON on stdout, the chart in the file', async () => {
    const path = join(mkdtempSync(join(tmpdir(), 'flashmla-cli-')), 'chart.svg');
    const r = await cli(['bench', '--reps', '1', '--warmup', '0', '--threads', '1', '--json', '--svg', path]);
    expect(r.status).toBe(0);
    const report = JSON.parse(r.stdout) as { backend: string; rows: { medianMs: number }[] };
    expect(report.backend).toBe('reference');
    expect(report.rows.length).toBeGreaterThan(0);
    expect(readFileSync(path, 'utf8')).toMatch(/^<svg /);
  });

  // /dev/full opens but every write fails with ENOSPC.
  test.skipIf(!existsSync('/dev/full'))('bench --json --svg: a failing chart write keeps the JSON and is one line', async () => {
    const r = await cli(['bench', '--reps', '1', '--warmup', '0', '--threads', '1', '--json', '--svg', '/dev/full']);
    expect(r.status).toBe(1);
    expect((JSON.parse(r.stdout) as { rows: unknown[] }).rows.length).toBeGreaterThan(0);
    expect(r.stderr.trimEnd().split('\n').at(-1)).toMatch(/^flashmla-node bench: error: ENOSPC: no space left on device/);
    expect(r.stderr).not.toMatch(/^\s+at /m);
  });

  test('compare --a cuda (the emulator as the FlashMLA build) vs reference passes the quick matrix', async () => {
    const library = await buildEmulator();
    const r = await cli(['compare', '--a', 'cuda', '--b', 'reference', '--library', library, '--matrix', 'quick', '--json']);
    const report = JSON.parse(r.stdout) as CompareReport;
    expect(report.results.filter((c) => !c.pass).map((c) => [c.name, c.errors, c.out?.reason, c.lse?.reason])).toEqual([]);
    expect([report.a, report.b, report.pass]).toEqual(['cuda', 'reference', true]);
    expect(r.status).toBe(0);
  });
});
