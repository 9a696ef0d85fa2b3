#!/usr/bin/env node
// Engram hash throughput per tier for DeepSeek-V4.1's layout (2 layers × 24 row ids per token), one
// thread: prefill (HashSession.append in chunks of 8192 tokens by default) and decode (one token per
// append). Medians of several runs; on a shared machine the numbers are noisy, compare tiers within
// one run. docs/engram-hashing.md#tiers.
//
//   npm run build            # compiles src/ to dist/ (tsc)
//   node scripts/bench-engram-hash.mjs [tokens] [runs] [chunk]
import { performance } from 'node:perf_hooks';

const { configFromHf } = await import('../dist/engram/config.js');
const { NgramHasher } = await import('../dist/engram/hash.js');
const { nativeHashKernel } = await import('../dist/engram/hash-native.js');

const tokens = Number(process.argv[2] ?? 1_000_000);
const runs = Number(process.argv[3] ?? 7);
const chunk = Number(process.argv[4] ?? 8192);
const decodeTokens = Math.min(tokens, 100_000);

// DeepSeek-V4.1-Flash's Engram fields (config.json text_config).
const config = configFromHf({
  text_config: {
    engram_layer_ids: [1, 14], engram_num_embeddings: [384006168, 384016682], engram_max_ngram_size: 4,
    engram_vocab_size: 16000000, engram_n_heads: 8, engram_head_dim: 256, engram_pad_token_id: 2,
    engram_compressed_vocab_size: 99092, hc_mult: 4, hidden_size: 5120,
  },
});

let seed = 12345;
const rand = () => ((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32);
const ids = Int32Array.from({ length: tokens }, () => Math.floor(rand() * 99092));
const mask = Uint8Array.from({ length: tokens }, () => (rand() < 0.02 ? 1 : 0));

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const fmt = ({ wall, cpu }) => `${(wall / 1e6).toFixed(2)} M tokens/s (${(cpu / 1e6).toFixed(2)} per CPU-second)`;

// Wall-clock rate and the rate per second of this thread's CPU time (what one core does when other
// processes share it).
function measure(fn, count) {
  fn(); // warm-up
  const wall = [];
  const cpu = [];
  for (let r = 0; r < runs; r++) {
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    fn();
    wall.push(count / ((performance.now() - t0) / 1000));
    const c = process.cpuUsage(c0);
    cpu.push(count / ((c.user + c.system) / 1e6));
  }
  return { wall: median(wall), cpu: median(cpu) };
}

const native = nativeHashKernel();
const tiers = typeof native === 'function' ? ['js', 'native'] : ['js'];
if (typeof native !== 'function') console.log(`native tier unavailable: ${native}`);
console.log(`V4.1 layout: ${tokens} tokens (2% dead) appended in chunks of ${chunk}; ${decodeTokens} single-token appends; median of ${runs} runs`);
let reference;
for (const tier of tiers) {
  const hasher = new NgramHasher(config, { tier });
  const out = hasher.hash(ids, { mask });
  if (reference === undefined) reference = out;
  else if (!out.every((v, i) => v === reference[i])) throw new Error(`${tier} disagrees with ${tiers[0]}`);
  const prefill = measure(() => {
    const s = hasher.session();
    for (let t = 0; t < tokens; t += chunk) s.append(ids.subarray(t, t + chunk), { mask: mask.subarray(t, t + chunk) });
  }, tokens);
  const decode = measure(() => {
    const s = hasher.session();
    for (let t = 0; t < decodeTokens; t++) s.append(ids.subarray(t, t + 1));
  }, decodeTokens);
  console.log(`${tier.padEnd(6)} prefill ${fmt(prefill)}   decode ${fmt(decode)}`);
}
