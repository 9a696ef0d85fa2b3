// Types of scripts/soak.mjs for the TypeScript test that runs it (tests/stress/soak.test.ts).
export interface SoakSample {
  call: number;
  rss: number;
  heapUsed: number;
  heapTotal: number;
  external: number;
  arrayBuffers: number;
  threads: number;
  deviceUsed: number;
}
export type SoakBounds = Record<'rss' | 'heapUsed' | 'external' | 'deviceUsed' | 'threads', number>;
export interface SoakResult {
  phase: 'noop' | 'compute' | 'reference';
  calls: number;
  elapsedMs: number;
  samples: SoakSample[];
  growth: Partial<SoakBounds>;
  bounds: SoakBounds;
  violations: string[];
  mismatches: string[];
}
export const DEFAULT_BOUNDS: SoakBounds;
export function soakPhase(lib: Record<string, unknown>, options: {
  phase: SoakResult['phase'];
  calls: number;
  samples?: number;
  bounds?: SoakBounds;
  /** Drop every other sched meta without dispose() (default true). */
  dropMetas?: boolean;
  gc: () => void;
  onSample?: (s: SoakSample) => void;
}): Promise<SoakResult>;
