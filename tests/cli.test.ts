// The `flashmla-node` CLI as users run it: the compiled dist/cli/main.js in a child process
// (built by tests/setup/build.ts when a source is newer).
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import type { CompareReport } from '../src/harness/compare.js';
import { buildEmulator } from './emulator/build.mjs';

const root = join(import.meta.dirname, '..');
const main = join(root, 'dist', 'cli', 'main.js');

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [main, ...args], { cwd: root, env: { ...process.env, ...env }, maxBuffer: 1 << 26 }, (err, stdout, stderr) => {
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
  ])('usage error %j exits 2 with one line', async (args, message) => {
    const r = await cli(args);
    expect(r.status).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(message);
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

  test('demo --backend reference: three decode steps, all matching the oracle', async () => {
    const r = await cli(['demo', '--backend', 'reference', '--json']);
    const report = JSON.parse(r.stdout) as CompareReport & { backend: string };
    expect(report.backend).toBe('reference');
    expect(report.results.map((c) => c.name.split(' ').slice(0, 2).join(' '))).toEqual(['dense bf16', 'sparse MODEL1', 'sparse V3.2']);
    expect(report.results.every((c) => c.pass && c.ms.a! > 0 && c.ms.b! > 0)).toBe(true);
    expect(r.status).toBe(0);
  });

  test('demo --backend cuda without a usable build fails with the reason', async () => {
    const r = await cli(['demo', '--backend', 'cuda', '--library', join(root, 'no', 'such', 'libflash_mla.so')]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/\[E_BACKEND\] .*CUDA backend is not usable/);
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
