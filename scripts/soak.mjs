#!/usr/bin/env node
// Soak: many decode and sparse prefill calls in one process, with device-resident and host tensors, device tensors
// freed both by dispose() and by garbage collection, sched metas renewed every step, and FlashMLA
// instances opened beside the long-lived one and then disposed or dropped for GC. RSS, V8 heap, external memory, threads and
// the emulated device's memory in use are sampled at intervals; growth is the mean of the last
// 10 % of samples minus the mean of the first 10 %, and a phase fails when it exceeds its bound.
//
//   npm run build
//   node --expose-gc scripts/soak.mjs [--calls 100000] [--phases noop,compute,reference,prefill]
//        [--samples 100] [--dispose-metas] [--json soak.json]
//
// Sched metas are renewed every 50 calls; by default every other one is dropped without dispose()
// (as a server that makes one per decoding step would), --dispose-metas disposes them all.
//
// Phases: `noop` = native path through the CPU emulator (tests/emulator) with FLASHMLA_EMU_MODE=noop
// (launchers check, then skip the math), --calls calls; `compute` = the same with the emulator's
// kernels computing, --calls / 10 calls, every result compared bitwise with the first result of
// its case; `reference` = the reference backend on small shapes, --calls / 10 calls, compared the
// same way; `prefill` = sparse prefill (flashMlaSparseFwd: out, maxLogits, lse) on a reference
// instance, --calls / 10 calls, compared the same way; `prefill-native` = sparse prefill through
// the emulator's computing kernels like `compute` (needs the emulator's prefill launchers; not in
// the default list). tests/stress/soak.test.ts runs the same phases (tests/stress/soak-phase.mjs) on the TypeScript sources.
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { MiB, soakPhase } from '../tests/stress/soak-phase.mjs';

async function main() {
  const { values: opt } = parseArgs({
    options: {
      calls: { type: 'string', default: '100000' },
      phases: { type: 'string', default: 'noop,compute,reference,prefill' },
      samples: { type: 'string', default: '100' },
      'dispose-metas': { type: 'boolean', default: false },
      json: { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  if (opt.help) {
    // The usage is the header comment of this file.
    const lines = readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(1);
    const header = lines.slice(0, lines.findIndex((l) => !l.startsWith('//')));
    process.stdout.write(`${header.map((l) => l.slice(3)).join('\n')}\n`);
    process.exit(0);
  }
  if (typeof globalThis.gc !== 'function') {
    console.error('run with node --expose-gc scripts/soak.mjs');
    process.exit(2);
  }
  const lib = {
    ...(await import('../dist/flashmla.js')),
    ...(await import('../dist/harness/cases.js')),
    ...(await import('../dist/harness/prefill-cases.js')),
    ...(await import('../dist/sched-meta.js')),
    ...(await import('../dist/tensor.js')),
    TENSOR_ARG_KEYS: (await import('../dist/validate/args.js')).TENSOR_ARG_KEYS,
    SPARSE_FWD_TENSOR_KEYS: (await import('../dist/validate/args.js')).SPARSE_FWD_TENSOR_KEYS,
    ...(await import('../dist/addon.js')),
    ...(await import('../dist/cuda/library.js')),
    ...(await import('../dist/cuda/locate.js')),
    ...(await import('../tests/emulator/build.mjs')),
  };
  const calls = Number(opt.calls);
  const results = [];
  let bad = false;
  for (const phase of opt.phases.split(',')) {
    const n = phase === 'noop' ? calls : Math.floor(calls / 10);
    process.stderr.write(`${phase}: ${n} calls\n`);
    const r = await soakPhase(lib, {
      phase, calls: n, samples: Number(opt.samples), dropMetas: !opt['dispose-metas'], gc: globalThis.gc,
      onSample: (s) => process.stderr.write(`  ${phase} ${s.call}: rss ${(s.rss / MiB).toFixed(1)} MiB, heap ${(s.heapUsed / MiB).toFixed(1)} MiB, device ${s.deviceUsed} B, threads ${s.threads}\r`),
    });
    process.stderr.write('\n');
    results.push(r);
    bad ||= r.violations.length > 0 || r.mismatches.length > 0;
    const fmt = (k, v) => (k === 'threads' ? `${v}` : `${v} B (${(v / MiB).toFixed(2)} MiB)`);
    console.log(`\n${phase}: ${r.calls} calls in ${(r.elapsedMs / 1000).toFixed(1)} s (${((r.elapsedMs * 1000) / r.calls).toFixed(0)} µs/call), ${r.samples.length} samples`);
    for (const [k, v] of Object.entries(r.growth)) console.log(`  ${k.padEnd(10)} growth ${fmt(k, v)}  (bound ${fmt(k, r.bounds[k])})`);
    const first = r.samples[0];
    const last = r.samples.at(-1);
    if (first && last) console.log(`  first sample: rss ${(first.rss / MiB).toFixed(1)} MiB, device ${first.deviceUsed} B; last: rss ${(last.rss / MiB).toFixed(1)} MiB, device ${last.deviceUsed} B`);
    console.log(`  bitwise mismatches: ${r.mismatches.length}${r.mismatches.length ? ` (${r.mismatches.slice(0, 5).join('; ')})` : ''}`);
    for (const v of r.violations) console.log(`  VIOLATION: ${v}`);
  }
  if (opt.json) (await import('node:fs')).writeFileSync(opt.json, JSON.stringify(results, null, 2));
  console.log(bad ? '\nFAILED' : '\nok');
  process.exitCode = bad ? 1 : 0;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await main();
