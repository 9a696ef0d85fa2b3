#!/usr/bin/env node
// The reference backend's sparse prefill (docs/reference-backend.md#prefill) on FlashMLA's prefill
// benchmark shapes cut to CPU size (tests/test_flash_mla_sparse_prefill.py `performance_case_templates`
// at FlashMLA 9241ae3: s_kv 8192, an attention sink; s_q cut so one call takes ~0.1–2 s), at 1 and
// 2 threads, side by side with the PyTorch CPU peer (scripts/peer-torch-prefill.py) on the same
// inputs. Medians of --reps calls after 2 untimed ones; the machine is shared, so compare ratios.
// FLOPs as FlashMLA counts them: 2·Σ used positions·h_q·(d_qk + 512).
//
// Usage: npm run build && node scripts/bench-prefill-reference.mjs [--reps 5] [--tier native] [--anchors]
// --anchors also runs the decode anchors (`node dist/cli/main.js bench --shapes anchors --threads 1`)
// for their GFLOP/s per thread.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const dist = new URL('../dist/', import.meta.url);
const { generatePrefillCase } = await import(new URL('harness/prefill-cases.js', dist));
const { referenceSparseFwd } = await import(new URL('reference/prefill.js', dist));
const { resolveTier } = await import(new URL('reference/index.js', dist));
const { torchPython } = await import(new URL('bench/anchors.js', dist));

const arg = (name, fallback) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
};
const reps = Number(arg('--reps', '5'));
const tier = resolveTier(arg('--tier', undefined));
const THREADS = [1, 2];

const SHAPES = [
  { name: 'V3.2 d_qk=576 h_q=128 topk=2048', sQ: 32, sKv: 8192, topk: 2048, hQ: 128, dQK: 576 },
  { name: 'MODEL1 d_qk=512 h_q=64 topk=512', sQ: 256, sKv: 8192, topk: 512, hQ: 64, dQK: 512 },
  { name: 'MODEL1 d_qk=512 h_q=128 topk=1024', sQ: 64, sKv: 8192, topk: 1024, hQ: 128, dQK: 512 },
];

const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

async function timeOurs(args, threads) {
  for (let i = 0; i < 2; i++) await referenceSparseFwd(args, { threads, tier });
  const ms = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await referenceSparseFwd(args, { threads, tier });
    ms.push(performance.now() - t0);
  }
  return median(ms);
}

const OPENBLAS_OPENMP = '/usr/lib/x86_64-linux-gnu/openblas-openmp';
const PEER = fileURLToPath(new URL('peer-torch-prefill.py', import.meta.url));
const raw = (a) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

function timeTorch(python, s, args) {
  const dir = mkdtempSync(join(tmpdir(), 'flashmla-prefill-'));
  try {
    writeFileSync(join(dir, 'q.bin'), raw(args.q.data));
    writeFileSync(join(dir, 'kv.bin'), raw(args.kv.data));
    writeFileSync(join(dir, 'indices.bin'), raw(args.indices.data));
    if (args.attnSink) writeFileSync(join(dir, 'sink.bin'), raw(args.attnSink.data));
    writeFileSync(join(dir, 'meta.json'), JSON.stringify({
      s_q: s.sQ, h_q: s.hQ, d_qk: s.dQK, d_v: 512, s_kv: s.sKv, topk: s.topk, sm_scale: args.smScale, sink: Boolean(args.attnSink),
    }));
    const env = existsSync(OPENBLAS_OPENMP) ? { ...process.env, LD_LIBRARY_PATH: OPENBLAS_OPENMP } : process.env;
    const r = spawnSync(python, [PEER, dir, '--threads', THREADS.join(','), '--reps', String(reps)], { env, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`peer-torch-prefill.py failed: ${r.stderr}`);
    return JSON.parse(r.stdout.trim().split('\n').pop()).ms;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const python = torchPython();
console.log(`tier ${tier}; ${reps} timed calls per point (median); PyTorch peer: ${python ?? 'skipped (no python3 imports torch)'}`);
const f = (x) => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));
console.log('| shape | s_q × s_kv | GFLOP | 1T ms | GFLOP/s/T | 2T ms | GFLOP/s/T | torch 1T / 2T ms | ratio 1T | ratio 2T |');
console.log('|---|---|---|---|---|---|---|---|---|---|');
for (const s of SHAPES) {
  const c = generatePrefillCase({ ...s, sink: true }, 1);
  const ours = {};
  for (const t of THREADS) ours[t] = await timeOurs(c.args, t);
  const torch = python ? timeTorch(python, s, c.args) : null;
  const perThread = (t) => f(c.flops / (ours[t] * 1e6) / t);
  const ratio = (t) => (torch ? `**${(ours[t] / torch[String(t)]).toFixed(2)}**` : '–');
  console.log(`| ${s.name} | ${s.sQ} × ${s.sKv} | ${(c.flops / 1e9).toFixed(1)} | ${f(ours[1])} | ${perThread(1)} | ${f(ours[2])} | ${perThread(2)} | ` +
    `${torch ? `${f(torch['1'])} / ${f(torch['2'])}` : '–'} | ${ratio(1)} | ${ratio(2)} |`);
}

if (process.argv.includes('--anchors')) {
  console.log('\nDecode anchors for comparison (node dist/cli/main.js bench --shapes anchors --threads 1 --reps 5):');
  const cli = fileURLToPath(new URL('cli/main.js', dist));
  const r = spawnSync(process.execPath, [cli, 'bench', '--shapes', 'anchors', '--threads', '1', '--reps', '5'], { encoding: 'utf8' });
  process.stdout.write(r.stdout + r.stderr);
}
