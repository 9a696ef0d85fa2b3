import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

/**
 * What the process knows about each CUDA device beyond the runtime's answers. A device fault
 * (illegal address, device-side assert, …) is sticky: the CUDA context of that device is unusable
 * for the rest of the process, for every instance on it. The first fault is kept, so every later
 * call can say what happened instead of failing on a dead context one way after another.
 */
const lost = new Map<number, string>();

/** cudaError_t values that poison the context (CUDA runtime API, "sticky" errors). */
const STICKY_ERRORS: ReadonlySet<number> = new Set([
  700, // cudaErrorIllegalAddress
  710, // cudaErrorAssert
  714, // cudaErrorHardwareStackError
  715, // cudaErrorIllegalInstruction
  716, // cudaErrorMisalignedAddress
  717, // cudaErrorInvalidAddressSpace
  718, // cudaErrorInvalidPc
  719, // cudaErrorLaunchFailure
  999, // cudaErrorUnknown
]);

export const CUDA_ERROR_OUT_OF_MEMORY = 2;

export function isSticky(cudaError: number | undefined): boolean {
  return cudaError !== undefined && STICKY_ERRORS.has(cudaError);
}

/** Records the first fault of `device`; returns it. */
export function markLost(device: number, fault: string): string {
  if (!lost.has(device)) lost.set(device, fault);
  return lost.get(device)!;
}

/** The first fault of `device`, or null while it is usable. */
export function lostReason(device: number): string | null {
  return lost.get(device) ?? null;
}

let gc: (() => void) | undefined;

/**
 * A full garbage collection, then two turns of the event loop for FinalizationRegistry callbacks:
 * device memory held by unreachable DeviceTensors and sched metas is invisible to V8's heuristics,
 * so before reporting out-of-memory the package collects what the caller already dropped (their
 * finalizers queue the frees on the instance's stream, ahead of a retried allocation).
 */
export async function collectDroppedDeviceMemory(): Promise<void> {
  if (gc === undefined) {
    setFlagsFromString('--expose-gc');
    gc = runInNewContext('gc') as () => void;
  }
  gc();
  for (let i = 0; i < 2; i++) await new Promise((r) => setImmediate(r));
}
