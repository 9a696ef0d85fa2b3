/** Median of a non-empty list. */
export function median(xs: readonly number[]): number {
  const s = [...xs].sort((x, y) => x - y);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export interface Timing {
  /** Milliseconds of each timed repetition, in order. */
  samples: number[];
  medianMs: number;
  minMs: number;
}

/**
 * Runs `fn` `warmup` times untimed, then `reps` times timed; each sample is the wall time from
 * the call to the settled promise. Benchmarks print numbers; tests never assert on them.
 */
export async function timeCalls(fn: () => Promise<unknown>, warmup: number, reps: number): Promise<Timing> {
  for (let i = 0; i < warmup; i++) await fn();
  const samples: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await fn();
    samples.push(performance.now() - t0);
  }
  return { samples, medianMs: median(samples), minMs: Math.min(...samples) };
}

/** FLOP/s and byte/s from counts and milliseconds, in units of 1e9 (GFLOP/s, GB/s). */
export const perSecond = (count: number, ms: number): number => count / ms / 1e6;
