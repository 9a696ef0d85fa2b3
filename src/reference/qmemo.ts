import type { Workspace } from './workspace.js';

/**
 * Which query rows each workspace holds, so consecutive items of one row group (chunks of the same
 * keys, claimed in order from either end of a wave) convert q to fp32 once, not once per chunk.
 * Keyed by the plan object: each call (and each job a worker receives) has its own, and
 * `forgetQ` at the end of a call drops it, so a caller's later change to q is always seen.
 */
const held = new Map<Workspace, { plan: object; group: number; r0: number }>();

/** True when `ws.q` already holds rows from r0 of `group` of `plan`; else records that it will. */
export function qLoaded(ws: Workspace, plan: object, group: number, r0: number): boolean {
  const h = held.get(ws);
  if (h && h.plan === plan && h.group === group && h.r0 === r0) return true;
  held.set(ws, { plan, group, r0 });
  return false;
}

/** Ends a call: no workspace's q counts as loaded for any plan. */
export function forgetQ(): void {
  held.clear();
}
