// A seeded uniform generator for generated test data (the harness's mulberry32).
import { Rng } from '../../src/harness/random.js';

/** Uniform numbers in [0, 1) from `seed`, reproducibly. */
export function uniform(seed: number): () => number {
  const r = new Rng(seed);
  return () => r.next();
}
