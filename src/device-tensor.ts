import { check } from './errors.js';
import { contiguousStrides, ELEMENT_BYTES, type DeviceTensorMeta, type DType } from './tensor.js';

/** What a DeviceTensor needs from the instance that made it. */
export interface TensorOwner {
  readonly device: number;
  readonly disposed: boolean;
  /** Frees allocation `id` after all work queued before it (no-op when already freed). */
  release(id: number): void;
}

// Owned allocations are also freed when their DeviceTensor is garbage-collected. The held value
// names the allocation by id, never by address: ids are not reused, so a late finalizer cannot free
// memory that a newer allocation got, and an instance disposed meanwhile ignores it.
const collected = new FinalizationRegistry<{ owner: TensorOwner; id: number }>(({ owner, id }) => {
  if (!owner.disposed) owner.release(id);
});

export interface DeviceTensorInit<D extends DType> {
  readonly dtype: D;
  readonly shape: readonly number[];
  readonly strides?: readonly number[];
  readonly offset?: number;
  readonly capacity: number;
  readonly address: bigint;
  /** Allocation id when this tensor owns its memory; null for a wrapped external pointer. */
  readonly allocation: number | null;
}

const frozenCopy = (xs: readonly number[]): readonly number[] => (Object.isFrozen(xs) ? xs : Object.freeze([...xs]));

/** Only this package makes DeviceTensors: the constructor needs this token. */
const MINT: unique symbol = Symbol('DeviceTensor');

/** Makes a DeviceTensor (package-internal: upload, allocate, wrap and decode outputs). */
export function mintDeviceTensor<D extends DType>(owner: TensorOwner, init: DeviceTensorInit<D>): DeviceTensor<D> {
  return new DeviceTensor(MINT, owner, init);
}

/**
 * Device memory of one FlashMLA instance (`upload`, `allocate`, `wrap`, or a decode output). Owned
 * memory is freed by `dispose()` (idempotent), by garbage collection, or when the instance is
 * disposed; a wrapped pointer is never freed by this package. Its fields cannot be changed and
 * it cannot be constructed outside the package, so its address and capacity are always ones the
 * package allocated or checked.
 */
export class DeviceTensor<D extends DType = DType> implements DeviceTensorMeta<D> {
  readonly #dtype: D;
  readonly #shape: readonly number[];
  readonly #strides: readonly number[];
  readonly #offset: number;
  readonly #capacity: number;
  readonly #address: bigint;
  readonly #owner: TensorOwner;
  readonly #allocation: number | null;
  // address + offset in bytes, made once: a prepared decode call reads it for every output it is given.
  readonly #base: bigint;
  #disposed = false;

  /** @internal Made by FlashMLA.upload/allocate/wrap and decode calls only. */
  constructor(token: typeof MINT, owner: TensorOwner, init: DeviceTensorInit<D>) {
    check(token === MINT, 'E_VALUE', 'DeviceTensor', 'DeviceTensor objects are made by FlashMLA.upload, allocate and wrap, not constructed');
    this.#dtype = init.dtype;
    // Frozen arrays (the package's own, e.g. a prepared call's output shapes) are shared as they are.
    this.#shape = frozenCopy(init.shape);
    // Own properties only: the init objects are the package's own, but Object.prototype may carry planted ones.
    this.#strides = frozenCopy(Object.hasOwn(init, 'strides') && init.strides !== undefined ? init.strides : contiguousStrides(init.shape));
    this.#offset = Object.hasOwn(init, 'offset') && init.offset !== undefined ? init.offset : 0;
    this.#capacity = init.capacity;
    this.#address = init.address;
    this.#owner = owner;
    this.#allocation = init.allocation;
    this.#base = init.address + BigInt(this.#offset * ELEMENT_BYTES[init.dtype]);
    if (init.allocation !== null) collected.register(this, { owner, id: init.allocation }, this);
  }

  /** Whether `x` is a DeviceTensor made by this package (a look-alike object or prototype is not). */
  static isDeviceTensor(x: unknown): x is DeviceTensor {
    return typeof x === 'object' && x !== null && #owner in x;
  }

  /** Element type. */
  get dtype(): D {
    return this.#dtype;
  }

  /** Shape (frozen). */
  get shape(): readonly number[] {
    return this.#shape;
  }

  /** Element strides (frozen). */
  get strides(): readonly number[] {
    return this.#strides;
  }

  /** Element offset of element [0, ...] from `address`. */
  get offset(): number {
    return this.#offset;
  }

  /** CUDA device ordinal of the memory. */
  get device(): number {
    return this.#owner.device;
  }

  /** Elements addressable from `address`. */
  get capacity(): number {
    return this.#capacity;
  }

  /** Byte address of the allocation (before `offset`). */
  get address(): bigint {
    return this.#address;
  }

  /** True after dispose(), and once the instance that made it is disposed. */
  get disposed(): boolean {
    return this.#disposed || this.#owner.disposed;
  }

  /** Whether disposing frees the memory (false for `wrap`). */
  get owned(): boolean {
    return this.#allocation !== null;
  }

  /** The instance that made this tensor (for device checks). */
  get owner(): TensorOwner {
    return this.#owner;
  }

  /** Byte address of element [0, ...] (address + offset · element size). */
  get base(): bigint {
    check(!this.disposed, 'E_DISPOSED', 'tensor', 'tensor is a disposed DeviceTensor');
    return this.#base;
  }

  /** Frees owned memory after the work queued before it (idempotent; a wrapped pointer is left alone). */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    if (this.#allocation !== null) {
      collected.unregister(this);
      if (!this.#owner.disposed) this.#owner.release(this.#allocation);
    }
  }
}
