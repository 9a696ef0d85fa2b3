import { expect } from 'vitest';
import type { DecodeCase } from '../../src/harness/cases.js';
import { checkIsAllclose, TOLERANCES } from '../../src/harness/metrics.js';
import { oracleDecode } from '../../src/harness/oracle.js';
import { referenceDecode } from '../../src/reference/index.js';
import { getMlaMetadata } from '../../src/sched-meta.js';
import type { HostTensor } from '../../src/tensor.js';
import type { DecodeArgs, DecodeResult } from '../../src/types.js';

export const withMeta = (args: Omit<DecodeArgs, 'schedMeta'>): DecodeArgs => ({ ...args, schedMeta: getMlaMetadata() });

export async function reference(args: Omit<DecodeArgs, 'schedMeta'>, threads?: number): Promise<DecodeResult<HostTensor>> {
  return referenceDecode(withMeta(args), threads === undefined ? {} : { threads });
}

/** Asserts out and lse agree within FlashMLA's tolerances (docs/flashmla-interface.md#tolerances) for the case's kind. */
export function expectClose(kind: 'dense' | 'sparse', got: DecodeResult<HostTensor>, want: DecodeResult<HostTensor>): void {
  const out = checkIsAllclose('out', got.out, want.out, kind === 'dense' ? TOLERANCES.denseOut : TOLERANCES.sparseOut);
  const lse = checkIsAllclose('lse', got.lse, want.lse, kind === 'dense' ? TOLERANCES.denseLse : TOLERANCES.sparseLse);
  expect(out.reason, 'out').toBe('');
  expect(lse.reason, 'lse').toBe('');
}

/** Reference vs float64 oracle on one generated case. */
export async function expectMatchesOracle(c: DecodeCase): Promise<DecodeResult<HostTensor>> {
  const got = await reference(c.args);
  expectClose(c.kind, got, oracleDecode(withMeta(c.args)));
  return got;
}
