/**
 * Two-ended claiming of a wave's work items, shared by the calling thread and the pool's workers.
 * One int32 holds both ends, so a claim is one compare-exchange: workers take items from the
 * front, in the order the calling thread stages them (share.ts), and the calling thread, which
 * needs no staging, takes them from the back. Which thread runs an item never changes its result.
 */

/** Most items per wave: each end is a 16-bit count. */
export const MAX_WAVE_ITEMS = 0x7fff;

/** The counter of a wave of `count` items, none claimed. */
export function openClaims(counter: Int32Array, count: number): void {
  Atomics.store(counter, 0, count << 16);
}

/** The next item from the front, or −1 when every item is claimed. */
export function claimFront(counter: Int32Array): number {
  for (;;) {
    const v = Atomics.load(counter, 0);
    const front = v & 0xffff;
    if (front >= v >>> 16) return -1;
    if (Atomics.compareExchange(counter, 0, v, v + 1) === v) return front;
  }
}

/** The next item from the back, or −1 when every item is claimed. */
export function claimBack(counter: Int32Array): number {
  for (;;) {
    const v = Atomics.load(counter, 0);
    const back = v >>> 16;
    if ((v & 0xffff) >= back) return -1;
    if (Atomics.compareExchange(counter, 0, v, v - 0x10000) === v) return back - 1;
  }
}

/** Items claimed from the front so far. */
export const frontClaims = (counter: Int32Array): number => Atomics.load(counter, 0) & 0xffff;

/** Items not yet claimed from the back: the front may claim up to here. */
export const backLimit = (counter: Int32Array): number => Atomics.load(counter, 0) >>> 16;

/** Claims every item left (after a failure on the calling thread, so workers stop early). */
export function closeClaims(counter: Int32Array): void {
  for (;;) {
    const v = Atomics.load(counter, 0);
    if (Atomics.compareExchange(counter, 0, v, (v & 0xffff) * 0x10001) === v) return;
  }
}
