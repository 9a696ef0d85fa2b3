/**
 * Engram hash throughput per tier for DeepSeek-V4.1's layout (2 layers × 24 row ids a token), one
 * thread (docs/engram-hashing.md#tiers): prefill (HashSession.append in chunks, 2% dead tokens) and
 * decode (one token per append). Wall-clock rates and rates per second of this process's CPU time
 * (what one core does when other processes share it). Tiers are checked to agree before timing.
 */
import { NgramHasher, type HashTier } from '../engram/hash.js';
import { nativeHashTier } from '../engram/hash-native.js';
import { FlashMLAError } from '../errors.js';
import { median } from './timing.js';
import { v41Config } from './engram-tables.js';

/** One tier's rates, tokens per second. */
export interface HashRow {
  /** The tier measured. */
  readonly tier: HashTier;
  /** Prefill (chunked appends), tokens per wall-clock second. */
  readonly prefillTokensPerS: number;
  /** Prefill, tokens per second of process CPU time. */
  readonly prefillTokensPerCpuS: number;
  /** Decode (one-token appends), tokens per wall-clock second. */
  readonly decodeTokensPerS: number;
  /** Decode, tokens per second of process CPU time. */
  readonly decodeTokensPerCpuS: number;
}

/** What {@link benchHash} reports. */
export interface HashBench {
  /** Tokens per prefill run. */
  readonly tokens: number;
  /** One-token appends per decode run. */
  readonly decodeTokens: number;
  /** Tokens per prefill append. */
  readonly chunk: number;
  /** Timed runs per tier (medians are reported). */
  readonly runs: number;
  /** One row per tier (native first when the addon has it). */
  readonly results: readonly HashRow[];
  /** Why the native tier is absent, when it is. */
  readonly nativeMissing: string | undefined;
}

/** Median wall and CPU rates of `runs` timed calls of `fn` (after one untimed). */
function measure(fn: () => void, count: number, runs: number): { wall: number; cpu: number } {
  fn();
  const wall: number[] = [];
  const cpu: number[] = [];
  for (let r = 0; r < runs; r++) {
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    fn();
    wall.push(count / ((performance.now() - t0) / 1000));
    const c = process.cpuUsage(c0);
    cpu.push(count / Math.max((c.user + c.system) / 1e6, 1e-6));
  }
  return { wall: median(wall), cpu: median(cpu) };
}

/** Hashes `tokens` random canonical ids (prefill) and min(tokens, 100,000) single-token appends per tier. */
export function benchHash(tokens: number, runs: number, chunk = 8192): HashBench {
  const config = v41Config();
  let seed = 12345;
  const rand = (): number => (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  const ids = Int32Array.from({ length: tokens }, () => Math.floor(rand() * config.compressedVocabSize!));
  const mask = Uint8Array.from({ length: tokens }, () => (rand() < 0.02 ? 1 : 0));
  const decodeTokens = Math.min(tokens, 100_000);
  const native = nativeHashTier();
  const tiers: HashTier[] = typeof native === 'function' ? ['native', 'js'] : ['js'];
  let reference: Int32Array | undefined;
  const results = tiers.map((tier): HashRow => {
    const hasher = new NgramHasher(config, { tier });
    const out = hasher.hash(ids, { mask });
    if (reference === undefined) reference = out;
    else if (!out.every((v, i) => v === reference![i])) throw new FlashMLAError('E_INTERNAL', `the ${tier} hash disagrees with the ${tiers[0]} hash`);
    const prefill = measure(() => {
      const s = hasher.session();
      for (let t = 0; t < tokens; t += chunk) s.append(ids.subarray(t, t + chunk), { mask: mask.subarray(t, t + chunk) });
    }, tokens, runs);
    const decode = measure(() => {
      const s = hasher.session();
      for (let t = 0; t < decodeTokens; t++) s.append(ids.subarray(t, t + 1));
    }, decodeTokens, runs);
    return { tier, prefillTokensPerS: prefill.wall, prefillTokensPerCpuS: prefill.cpu, decodeTokensPerS: decode.wall, decodeTokensPerCpuS: decode.cpu };
  });
  return { tokens, decodeTokens, chunk, runs, results, nativeMissing: typeof native === 'function' ? undefined : native };
}
