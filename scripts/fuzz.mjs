#!/usr/bin/env node
// Seeded hostile-input fuzzing of the public decode API (src/harness/fuzz.ts) and of sparse
// prefill, flashMlaSparseFwd (src/harness/prefill-fuzz.ts), on both backends,
// each in a child process so that a crash (exit signal, exit code) or a hang (no progress within
// --stall-s) is observed and counted instead of taking the run down. The native backend runs
// through the CPU emulator of tests/emulator (two emulated devices for mixed-device calls,
// launchers that exit(1) like FlashMLA's on a failed check, docs/flashmla-interface.md#launcher-checks) with FLASHMLA_EMU_LOG set;
// the log of memory-checker violations and device faults must stay empty.
//
//   npm run build                      # compiles src/ to dist/
//   node scripts/fuzz.mjs [--calls 10000] [--seed 1] [--backend reference|native|both]
//                         [--mode decode|prefill|both] [--arch sm90|sm100|both]
//                         [--exclude 'mutation,mutation'] [--jobs 2]
//                         [--time-bound-ms 30000] [--stall-s 180] [--json report.json]
//
// --calls is per job: per mode, the reference is one job, the native backend one job per emulated
// arch (sm100 has no dense kernel, so its decode job fuzzes sparse cases only). Exits 1 on any
// failure, crash, hang or memory-checker line.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const self = fileURLToPath(import.meta.url);

const { values: opt } = parseArgs({
  options: {
    calls: { type: 'string', default: '10000' },
    seed: { type: 'string', default: '1' },
    backend: { type: 'string', default: 'both' },
    mode: { type: 'string', default: 'both' },
    arch: { type: 'string', default: 'both' },
    exclude: { type: 'string', default: '' },
    jobs: { type: 'string', default: '2' },
    'time-bound-ms': { type: 'string', default: '30000' },
    'stall-s': { type: 'string', default: '180' },
    json: { type: 'string' },
    child: { type: 'string' },
    help: { type: 'boolean' },
  },
});

if (opt.help) {
  // The usage is the header comment of this file.
  const lines = readFileSync(self, 'utf8').split('\n').slice(1);
  const header = lines.slice(0, lines.findIndex((l) => !l.startsWith('//')));
  process.stdout.write(`${header.map((l) => l.slice(3)).join('\n')}\n`);
  process.exit(0);
}

/** One fuzz job in this (child) process; progress and the report go to stdout as JSON lines. */
async function child(job) {
  const { fuzz, fuzzDeviceOf } = await import('../dist/harness/fuzz.js');
  const { fuzzSparseFwd } = await import('../dist/harness/prefill-fuzz.js');
  const { referenceDecode } = await import('../dist/reference/index.js');
  const { flashMlaSparseFwd } = await import('../dist/api.js');
  const { FlashMLA } = await import('../dist/flashmla.js');
  const say = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);
  const common = { calls: job.calls, seed: job.seed, timeBoundMs: job.timeBoundMs, exclude: job.exclude,
    onProgress: (done, r) => { if (done % 50 === 0) say({ progress: done, failures: r.failures.length }); } };
  const referencePrefill = (args, options) => flashMlaSparseFwd(args, { ...options, backend: 'reference' });
  const openBuild = (library) => FlashMLA.open({ backend: 'cuda', library });
  // The native fuzzers' instances: device 0 of the emulator, and device 1 for tensors of another device.
  const onEmulator = async (run) => {
    const { buildEmulator } = await import('../tests/emulator/build.mjs');
    const library = await buildEmulator();
    const fm = await FlashMLA.open({ backend: 'cuda', library, device: 0 });
    const elsewhere = await FlashMLA.open({ backend: 'cuda', library, device: 1 });
    try {
      return await run(fm, fuzzDeviceOf(fm, elsewhere));
    } finally {
      await elsewhere.dispose();
      await fm.dispose();
    }
  };
  let report;
  if (job.mode === 'prefill' && job.backend === 'reference') {
    report = await fuzzSparseFwd({ ...common, sparseFwd: referencePrefill });
  } else if (job.mode === 'prefill') {
    report = await onEmulator((fm, device) => fuzzSparseFwd({
      ...common,
      arch: job.arch,
      sparseFwd: (args, options) => fm.flashMlaSparseFwd(args, options),
      reference: referencePrefill,
      device,
    }));
  } else if (job.backend === 'reference') {
    report = await fuzz({ ...common, openBuild, decode: (args, options) => referenceDecode(args, options) });
  } else {
    report = await onEmulator((fm, device) => fuzz({
      ...common,
      openBuild,
      kinds: job.arch === 'sm100' ? ['sparse'] : ['dense', 'sparse'],
      decode: (args, options) => fm.flashMlaWithKvCache(args, options),
      other: (args) => referenceDecode(args),
      device,
    }));
  }
  say({ report });
}

/** Runs one job in a child process and watches it. */
function runJob(job, stallMs) {
  return new Promise((resolve) => {
    const dir = mkdtempSync(join(tmpdir(), 'flashmla-fuzz-'));
    const log = join(dir, 'emu.log');
    const env = { ...process.env };
    if (job.backend === 'native') {
      Object.assign(env, { FLASHMLA_EMU_ARCH: job.arch, FLASHMLA_EMU_DEVICES: '2', FLASHMLA_EMU_EXIT: '1', FLASHMLA_EMU_LOG: log, FLASHMLA_EMU_MODE: 'compute' });
    }
    const proc = spawn(process.execPath, [self, '--child', JSON.stringify(job)], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    const result = { job, report: null, progress: 0, crash: null, hang: false, stderr: '', memcheck: '' };
    let buffer = '';
    let timer;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => { result.hang = true; proc.kill('SIGKILL'); }, stallMs);
    };
    arm();
    proc.stdout.on('data', (chunk) => {
      buffer += chunk;
      let nl;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        let msg;
        try { msg = JSON.parse(line); } catch { continue; }
        if (msg.progress !== undefined) {
          result.progress = msg.progress;
          arm();
          if (msg.progress % 1000 === 0) process.stderr.write(`  ${label(job)}: ${msg.progress} calls, ${msg.failures} failures\n`);
        }
        if (msg.report) result.report = msg.report;
      }
    });
    proc.stderr.on('data', (chunk) => { result.stderr = (result.stderr + chunk).slice(-4000); });
    proc.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (!result.hang && (signal !== null || code !== 0 || result.report === null)) result.crash = signal ?? `exit code ${code}`;
      try { result.memcheck = readFileSync(log, 'utf8'); } catch { /* no log: nothing was reported */ }
      rmSync(dir, { recursive: true, force: true });
      resolve(result);
    });
  });
}

const label = (job) => `${job.mode} on ${job.backend === 'native' ? `native (emulated ${job.arch})` : 'reference'}`;

async function parent() {
  const calls = Number(opt.calls);
  const seed = Number(opt.seed);
  const common = { calls, seed, timeBoundMs: Number(opt['time-bound-ms']), exclude: opt.exclude.split(',').map((s) => s.trim()).filter(Boolean) };
  if (!['decode', 'prefill', 'both'].includes(opt.mode)) throw new Error(`--mode must be decode, prefill or both, got ${opt.mode}`);
  const jobs = [];
  for (const mode of opt.mode === 'both' ? ['decode', 'prefill'] : [opt.mode]) {
    if (opt.backend === 'reference' || opt.backend === 'both') jobs.push({ ...common, mode, backend: 'reference' });
    if (opt.backend === 'native' || opt.backend === 'both') {
      for (const arch of opt.arch === 'both' ? ['sm90', 'sm100'] : [opt.arch]) jobs.push({ ...common, mode, backend: 'native', arch });
    }
  }
  if (jobs.length === 0) throw new Error(`--backend must be reference, native or both, got ${opt.backend}`);
  process.stderr.write(`fuzzing ${jobs.map(label).join(', ')}: ${calls} calls each, seed ${seed}` +
    (common.exclude.length ? `, excluding ${common.exclude.join('; ')}` : '') + '\n');
  const started = Date.now();
  const queue = [...jobs];
  const results = [];
  await Promise.all(Array.from({ length: Math.max(1, Number(opt.jobs)) }, async () => {
    while (queue.length > 0) results.push(await runJob(queue.shift(), Number(opt['stall-s']) * 1000));
  }));
  results.sort((a, b) => jobs.indexOf(a.job) - jobs.indexOf(b.job));

  let bad = false;
  for (const r of results) {
    const rep = r.report;
    const memLines = r.memcheck.split('\n').filter(Boolean);
    const failures = rep?.failures ?? [];
    bad ||= failures.length > 0 || r.crash !== null || r.hang || memLines.length > 0;
    console.log(`\n${label(r.job)}, seed ${r.job.seed}`);
    console.log(`  calls tried:   ${rep?.calls ?? `${r.progress}+ (no report)`}`);
    console.log(`  results:       ${rep?.results ?? '-'}`);
    const errs = Object.entries(rep?.errors ?? {}).sort(([a], [b]) => a.localeCompare(b));
    console.log(`  errors:        ${errs.reduce((s, [, n]) => s + n, 0)} (${errs.map(([c, n]) => `${c} ${n}`).join(', ')})`);
    console.log(`  failures:      ${failures.length}`);
    for (const f of failures.slice(0, 10)) console.log(`    call ${f.call} [${f.mutation}] ${f.caseName}: ${f.problem.slice(0, 300)}`);
    console.log(`  crashes:       ${r.crash === null ? 0 : `1 (${r.crash} after ${r.progress}+ calls)`}`);
    console.log(`  hangs:         ${r.hang ? `1 (no progress for ${opt['stall-s']} s after ${r.progress}+ calls)` : 0}`);
    if (r.job.backend === 'native') {
      console.log(`  memory checker: ${memLines.length} line(s)`);
      for (const l of memLines.slice(0, 5)) console.log(`    ${l}`);
    }
    console.log(`  time:          ${rep ? `${(rep.elapsedMs / 1000).toFixed(1)} s (${(rep.elapsedMs / rep.calls).toFixed(2)} ms/call)` : '-'}`);
    if ((r.crash !== null || r.hang) && r.stderr) console.log(`  stderr tail:\n${r.stderr.replace(/^/gm, '    ')}`);
  }
  console.log(`\ntotal ${((Date.now() - started) / 1000).toFixed(1)} s: ${bad ? 'FAILED' : 'ok'}`);
  if (opt.json) writeFileSync(opt.json, JSON.stringify(results.map(({ stderr: _s, ...r }) => r), null, 2));
  process.exitCode = bad ? 1 : 0;
}

if (opt.child !== undefined) await child(JSON.parse(opt.child));
else await parent();
