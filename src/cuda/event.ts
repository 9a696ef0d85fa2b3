import { check } from '../errors.js';

/** What a CudaEvent needs from the instance that recorded it. */
export interface EventOwner {
  readonly disposed: boolean;
  /** Resolves once event `id` has completed (the wait is on the instance's worker thread). */
  synchronizeEvent(id: number): Promise<void>;
  /** Destroys event `id` behind every queued wait on it. */
  destroyEvent(id: number): void;
}

// An event dropped without dispose() is destroyed once it is garbage-collected.
const dropped = new FinalizationRegistry<{ owner: EventOwner; id: number }>(({ owner, id }) => {
  if (!owner.disposed) owner.destroyEvent(id);
});

/** Only this package makes CudaEvents: the constructor needs this token. */
const MINT: unique symbol = Symbol('CudaEvent');

/** Makes a CudaEvent (package-internal: `FlashMLA.record()`). */
export function mintCudaEvent(owner: EventOwner, id: number): CudaEvent {
  return new CudaEvent(MINT, owner, id);
}

/**
 * A CUDA event recorded on a FlashMLA instance's stream by `record()`
 * (docs/cuda-path.md#streams-and-events): it completes when the GPU has done everything issued on
 * the stream before it. `await ev.synchronize()` (or `await ev`: it is thenable) waits for that
 * without blocking the event loop. `dispose()` destroys it (idempotent); garbage collection and the
 * instance's dispose() do too.
 */
export class CudaEvent implements PromiseLike<void> {
  readonly #owner: EventOwner;
  readonly #id: number;
  #disposed = false;

  /** @internal Made by FlashMLA.record() only. */
  constructor(token: typeof MINT, owner: EventOwner, id: number) {
    check(token === MINT, 'E_VALUE', 'CudaEvent', 'CudaEvent objects are made by FlashMLA.record(), not constructed');
    this.#owner = owner;
    this.#id = id;
    dropped.register(this, { owner, id }, this);
  }

  /** True after dispose(), and once the instance that recorded it is disposed. */
  get disposed(): boolean {
    return this.#disposed || this.#owner.disposed;
  }

  /**
   * Resolves once the event has completed.
   * @throws FlashMLAError `E_DISPOSED` (as a rejection) after dispose() or the instance's dispose().
   */
  async synchronize(): Promise<void> {
    check(!this.disposed, 'E_DISPOSED', 'event', 'this CudaEvent was disposed');
    await this.#owner.synchronizeEvent(this.#id);
  }

  /** Thenable: `await ev` is `await ev.synchronize()`. */
  then<A = void, B = never>(onFulfilled?: ((value: void) => A | PromiseLike<A>) | null, onRejected?: ((reason: unknown) => B | PromiseLike<B>) | null): Promise<A | B> {
    return this.synchronize().then(onFulfilled, onRejected);
  }

  /** Destroys the event (after any wait already queued on it). Idempotent. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    dropped.unregister(this);
    if (!this.#owner.disposed) this.#owner.destroyEvent(this.#id);
  }
}
