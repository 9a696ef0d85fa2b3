import { check } from '../errors.js';

/** What a CudaGraph needs from the instance that captured it. */
export interface GraphOwner {
  readonly disposed: boolean;
  /** Issues graph `id` on the instance's stream (on the calling thread, or behind queued work). */
  replayGraph(id: number): Promise<void>;
  /** Destroys graph `id` behind every queued replay, releasing the pool memory it holds. */
  destroyGraph(id: number): void;
}

// A graph dropped without dispose() is destroyed once it is garbage-collected.
const dropped = new FinalizationRegistry<{ owner: GraphOwner; id: number }>(({ owner, id }) => {
  if (!owner.disposed) owner.destroyGraph(id);
});

/** Only this package makes CudaGraphs: the constructor needs this token. */
const MINT: unique symbol = Symbol('CudaGraph');

/** Makes a CudaGraph (package-internal: `FlashMLA.captureGraph()`). */
export function mintCudaGraph(owner: GraphOwner, id: number): CudaGraph {
  return new CudaGraph(MINT, owner, id);
}

/**
 * Decode calls recorded by `FlashMLA.captureGraph()` as one CUDA graph (docs/cuda-path.md#graphs).
 * `replay()` issues all of them again with the same device buffers (the contents of the input
 * tensors may change between replays; pointers, shapes, scalars and sched metas are fixed) and
 * writes the same output tensors. `dispose()` destroys it (idempotent); garbage collection and the
 * instance's dispose() do too.
 */
export class CudaGraph {
  readonly #owner: GraphOwner;
  readonly #id: number;
  #disposed = false;

  /** @internal Made by FlashMLA.captureGraph() only. */
  constructor(token: typeof MINT, owner: GraphOwner, id: number) {
    check(token === MINT, 'E_VALUE', 'CudaGraph', 'CudaGraph objects are made by FlashMLA.captureGraph(), not constructed');
    this.#owner = owner;
    this.#id = id;
    dropped.register(this, { owner, id }, this);
  }

  /** True after dispose(), and once the instance that captured it is disposed. */
  get disposed(): boolean {
    return this.#disposed || this.#owner.disposed;
  }

  /**
   * Issues the recorded calls again on the instance's stream, in order with its other work; like a
   * decode call, it resolves once they are issued (their results are stream-ordered).
   * @throws FlashMLAError `E_DISPOSED` (as a rejection) after dispose() or the instance's dispose().
   */
  async replay(): Promise<void> {
    check(!this.disposed, 'E_DISPOSED', 'graph', 'this CudaGraph was disposed');
    await this.#owner.replayGraph(this.#id);
  }

  /** Destroys the graph (after any replay already issued or queued). Idempotent. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    dropped.unregister(this);
    if (!this.#owner.disposed) this.#owner.destroyGraph(this.#id);
  }
}
