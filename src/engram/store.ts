import { FlashMLAError, check } from '../errors.js';
import type { DeviceTensor } from '../device-tensor.js';
import type { FlashMLA } from '../flashmla.js';
import { ARRAY_OF, ELEMENT_BYTES, isContiguous, tensor, viewOf, type HostTensor } from '../tensor.js';
import type { EngramConfig } from './config.js';
import { NgramHasher } from './hash.js';
import type { HashSession } from './hash-session.js';
import type { EngramTable } from './table.js';
import type { TokenMap } from './types.js';

/** How `prefetch` hands over the rows: dequantised bf16 or fp32 values, or the table's packed bytes. */
export type EngramPrefetchFormat = 'bf16' | 'fp32' | 'raw';

/** Options of {@link EngramStore.open}. */
export interface EngramStoreOptions {
  /** The model's Engram configuration (layers, orders, heads, head dim). */
  readonly config: EngramConfig;
  /** One open table per Engram layer of `config` (matched by `layerId`; order does not matter). */
  readonly tables: readonly EngramTable[];
  /** Raw token id → canonical id. Default: none, token ids are canonical ids already. */
  readonly tokenMap?: TokenMap;
  /**
   * How many gathers of one step run at once on the addon's thread pool (each layer's rows are cut
   * into this many pieces). Default: 2. The pool itself has `UV_THREADPOOL_SIZE` threads (Node's default 4).
   */
  readonly threads?: number;
}

/** One request's new tokens for this decoding (or prefill) step. */
export interface EngramRequest {
  /** The request's id: the store keeps each request's token history under it until `drop(id)`. */
  readonly id: string | number;
  /** The tokens this step adds (raw ids, or canonical ids when the store has no token map). */
  readonly tokens: Int32Array | readonly number[];
  /** Per token: true (or non-zero) for a masked ("dead") token, e.g. an image placeholder. Default: none masked. */
  readonly mask?: Uint8Array | readonly boolean[];
}

/** Options of {@link EngramStore.prefetch}. */
export interface EngramPrefetchOptions {
  /** Row format of the result. Default: 'bf16'. */
  readonly format?: EngramPrefetchFormat;
  /** A CUDA instance: the rows are also copied to a device tensor on its stream (`EngramStep.device`). Default: host only. */
  readonly device?: FlashMLA;
  /**
   * Where the rows go: a contiguous host tensor of the step's shape and the format's dtype whose
   * data is a view of a SharedArrayBuffer (the pool's threads write it directly; it cannot be
   * detached meanwhile). Reusing two of them in turn spares each step the page faults of fresh
   * memory. It must not be read until the Promise settles. Default: a new SharedArrayBuffer per step.
   */
  readonly out?: HostTensor<'bf16' | 'fp32' | 'uint8'>;
}

/** Where one request's tokens sit in a step's rows. */
export interface EngramStepRequest {
  /** The request's id. */
  readonly id: string | number;
  /** Index of the request's first token along the step's first dimension. */
  readonly start: number;
  /** How many tokens the request added. */
  readonly count: number;
}

/** The rows of one step, for every Engram layer. */
export interface EngramStep {
  /** Row ids `[T_total, layers, (N−1)·K]` (int32, offsets included), in `config.layerIds` order. */
  readonly rowIds: HostTensor<'int32'>;
  /**
   * The rows `[T_total, layers, (N−1)·K, headDim]` (bf16 or fp32), or `[T_total, layers, (N−1)·K, rowBytes]`
   * uint8 for 'raw'.
   */
  readonly rows: HostTensor<'bf16' | 'fp32' | 'uint8'>;
  /** The same rows on the device, when `options.device` was given. */
  readonly device: DeviceTensor<'bf16' | 'fp32' | 'uint8'> | undefined;
  /** Each request's place in the step, in batch order. */
  readonly requests: readonly EngramStepRequest[];
}

/**
 * Serves Engram rows for a running batch: keeps each request's token history, hashes each step's new
 * tokens and gathers every Engram layer's rows off the event loop (docs/engram.md#store). Row ids
 * depend only on tokens, so a server calls `prefetch` as soon as a step's tokens are known and awaits
 * the rows only where the first Engram layer needs them.
 */
export class EngramStore {
  readonly #hasher: NgramHasher;
  readonly #tables: readonly EngramTable[];
  readonly #sessions = new Map<string | number, HashSession>();
  /** Per CUDA instance: a page-locked staging buffer reused by each step's upload, and the last upload through it. */
  readonly #staging = new WeakMap<FlashMLA, { buffer: Uint8Array | undefined; last: Promise<unknown> }>();
  readonly #pieces: number;
  readonly #perToken: number;
  #closed = false;

  private constructor(hasher: NgramHasher, tables: readonly EngramTable[], pieces: number, perToken: number) {
    this.#hasher = hasher;
    this.#tables = tables;
    this.#pieces = pieces;
    this.#perToken = perToken;
  }

  /** Checks that `tables` serve exactly the config's Engram layers with its head dim, and opens a store over them. */
  static open(options: EngramStoreOptions): EngramStore {
    check(typeof options === 'object' && options !== null, 'E_VALUE', 'options', 'must be an object');
    const { tables, tokenMap, threads = 2 } = options;
    // The hasher checks the config (every field, named) before anything here reads it.
    const hasher = new NgramHasher(options.config, tokenMap === undefined ? {} : { tokenMap });
    const config = hasher.config;
    check(Number.isInteger(threads) && threads >= 1 && threads <= 256, 'E_VALUE', 'options.threads', `must be an integer from 1 to 256, got ${String(threads)}`);
    check(Array.isArray(tables), 'E_VALUE', 'options.tables', 'must be an array of EngramTable (one per Engram layer)');
    const ordered = config.layerIds.map((layerId) => {
      const matching = tables.filter((t) => t.layerId === layerId);
      check(matching.length === 1, 'E_VALUE', 'options.tables',
        `needs exactly one table for Engram layer ${layerId}, got ${matching.length} (tables for layers ${tables.map((t) => t.layerId).join(', ') || 'none'})`);
      const table = matching[0]!;
      check(table.headDim === config.headDim, 'E_SHAPE', 'options.tables',
        `the table of layer ${layerId} has rows of ${table.headDim} values, the config ${config.headDim}`);
      return table;
    });
    check(ordered.length === tables.length, 'E_VALUE', 'options.tables', `has tables for layers the config does not use (config layers ${config.layerIds.join(', ')})`);
    return new EngramStore(hasher, ordered, threads, (config.maxNgramSize - 1) * config.nHeads);
  }

  /** Requests whose history the store keeps. */
  get requests(): number {
    return this.#sessions.size;
  }

  /**
   * Appends each request's new tokens to its history, hashes them and gathers the rows of every Engram
   * layer on the addon's threads (or Node's file-system pool for tables read with `pread`). A request id
   * seen for the first time starts a new history. The tokens are part of the history from this call on,
   * even before the Promise settles; a failed gather leaves them there (roll back with `rollback`).
   */
  async prefetch(batch: readonly EngramRequest[], options: EngramPrefetchOptions = {}): Promise<EngramStep> {
    this.#checkOpen();
    check(Array.isArray(batch), 'E_VALUE', 'batch', 'must be an array of { id, tokens, mask? }');
    check(typeof options === 'object' && options !== null, 'E_VALUE', 'options', 'must be an object');
    const format = options.format ?? 'bf16';
    check(format === 'bf16' || format === 'fp32' || format === 'raw', 'E_VALUE', 'options.format', `must be 'bf16', 'fp32' or 'raw', got ${String(format)}`);
    const fm = options.device;
    check(fm === undefined || (typeof fm === 'object' && fm !== null && fm.backend === 'cuda'), 'E_BACKEND', 'options.device',
      () => `must be a FlashMLA instance on the CUDA backend, got ${fm?.backend === undefined ? String(fm) : `one on the ${fm.backend} backend`}`);
    const out = options.out === undefined ? undefined : this.#checkOut(options.out, batch, format);
    const { rowIds, requests } = this.#hash(batch);
    const tokens = requests.reduce((n, r) => n + r.count, 0);
    const rows = await this.#gather(rowIds, tokens, format, out);
    const device = fm === undefined ? undefined : await this.#upload(fm, rows);
    return { rowIds: tensor('int32', [tokens, this.#tables.length, this.#perToken], rowIds), rows, device, requests };
  }

  /** Forgets the last `n` tokens of a request (speculative tokens that were not accepted). */
  rollback(id: string | number, n: number): void {
    this.#checkOpen();
    const session = this.#sessions.get(id);
    check(session !== undefined, 'E_VALUE', 'id', `no request ${String(id)} in this store`);
    session.rollback(n);
  }

  /** Forgets a finished request's history; false when the store had none under `id`. */
  drop(id: string | number): boolean {
    this.#checkOpen();
    return this.#sessions.delete(id);
  }

  /** Forgets every history. The tables stay open (they belong to the caller). Idempotent. */
  close(): void {
    this.#closed = true;
    this.#sessions.clear();
  }

  #checkOpen(): void {
    if (this.#closed) throw new FlashMLAError('E_DISPOSED', 'the EngramStore was closed');
  }

  /**
   * Copies the rows into the instance's page-locked staging buffer and from there to the device on
   * the instance's stream (a DMA, no copy of pageable memory). Uploads through one buffer take turns.
   */
  #upload<D extends 'bf16' | 'fp32' | 'uint8'>(fm: FlashMLA, rows: HostTensor<D>): Promise<DeviceTensor<D>> {
    let stage = this.#staging.get(fm);
    if (stage === undefined) this.#staging.set(fm, (stage = { buffer: undefined, last: Promise.resolve() }));
    const entry = stage;
    const turn = entry.last.then(async () => {
      const bytes = rows.data.byteLength;
      // Grown to the next power of two, so a batch that grows step by step reallocates rarely.
      if (entry.buffer === undefined || entry.buffer.byteLength < bytes) entry.buffer = (await fm.allocatePinned('uint8', [2 ** Math.ceil(Math.log2(bytes))])).data;
      entry.buffer.set(new Uint8Array(rows.data.buffer, rows.data.byteOffset, bytes));
      const view = new ARRAY_OF[rows.dtype](entry.buffer.buffer, 0, rows.data.length) as HostTensor<D>['data'];
      return fm.upload(tensor(rows.dtype, rows.shape, view));
    });
    entry.last = turn.catch(() => undefined);
    return turn;
  }

  /** options.out, checked against the step it is for before any token joins a history. */
  #checkOut(out: HostTensor<'bf16' | 'fp32' | 'uint8'>, batch: readonly EngramRequest[], format: EngramPrefetchFormat): HostTensor<'bf16' | 'fp32' | 'uint8'> {
    const dtype = format === 'raw' ? 'uint8' : format;
    const width = format === 'raw' ? this.#tables[0]!.rowBytes : this.#tables[0]!.headDim;
    const tokens = batch.reduce((n, r) => n + (typeof r === 'object' && r !== null && typeof r.tokens?.length === 'number' ? r.tokens.length : 0), 0);
    const shape = [tokens, this.#tables.length, this.#perToken, width];
    const view = viewOf(out, 'options.out', 4);
    check(view.dtype === dtype, 'E_DTYPE', 'options.out', `must be ${dtype} for '${format}' rows, got ${view.dtype}`);
    check(view.shape.every((d, i) => d === shape[i]), 'E_SHAPE', 'options.out', `must be [${shape.join(', ')}] for this step, got [${view.shape.join(', ')}]`);
    check(isContiguous(view) && view.offset === 0, 'E_STRIDE', 'options.out', 'must be contiguous, from element 0');
    check(out.data.buffer instanceof SharedArrayBuffer, 'E_VALUE', 'options.out', 'its data must be a view of a SharedArrayBuffer (zeros(dtype, shape, { shared: true }))');
    return out;
  }

  /** Hashes every request's tokens with its history: row ids `[T_total, layers, perToken]`. */
  #hash(batch: readonly EngramRequest[]): { rowIds: Int32Array; requests: EngramStepRequest[] } {
    const seen = new Set<string | number>();
    const parts: Int32Array[] = [];
    const requests: EngramStepRequest[] = [];
    let start = 0;
    for (const [i, req] of batch.entries()) {
      check(typeof req === 'object' && req !== null, 'E_VALUE', `batch[${i}]`, 'must be { id, tokens, mask? }');
      check(typeof req.id === 'string' || typeof req.id === 'number', 'E_VALUE', `batch[${i}].id`, 'must be a string or a number');
      check(!seen.has(req.id), 'E_VALUE', `batch[${i}].id`, `request ${String(req.id)} appears twice in one step`);
      seen.add(req.id);
    }
    // A bad request (its error names it) undoes the requests before it, so a failed call leaves every history as it was.
    const added: { id: string | number; count: number; fresh: boolean }[] = [];
    try {
      for (const [i, req] of batch.entries()) {
        let session = this.#sessions.get(req.id);
        const fresh = session === undefined;
        session ??= this.#hasher.session();
        const ids = appendNamed(session, req, `batch[${i}]`);
        if (fresh) this.#sessions.set(req.id, session);
        const count = ids.length / this.#hasher.idsPerToken;
        added.push({ id: req.id, count, fresh });
        parts.push(ids);
        requests.push({ id: req.id, start, count });
        start += count;
      }
    } catch (e) {
      for (const a of added) {
        if (a.fresh) this.#sessions.delete(a.id);
        else this.#sessions.get(a.id)!.rollback(a.count);
      }
      throw e;
    }
    const rowIds = new Int32Array(start * this.#hasher.idsPerToken);
    let at = 0;
    for (const p of parts) { rowIds.set(p, at); at += p.length; }
    return { rowIds, requests };
  }

  /**
   * Gathers each layer's rows in `#pieces` concurrent pieces straight into place in
   * `[T, layers, perToken, width]`: each (token, layer) block of rows is contiguous there, so a layer's
   * rows land block by block, `layers` blocks apart. The output is a SharedArrayBuffer: the pool
   * threads write it directly, and no caller can detach it meanwhile.
   */
  async #gather(rowIds: Int32Array, tokens: number, format: EngramPrefetchFormat, given: HostTensor<'bf16' | 'fp32' | 'uint8'> | undefined): Promise<HostTensor<'bf16' | 'fp32' | 'uint8'>> {
    const layers = this.#tables.length;
    const block = this.#perToken;
    const dtype = format === 'raw' ? 'uint8' : format;
    const width = format === 'raw' ? this.#tables[0]!.rowBytes : this.#tables[0]!.headDim;
    const span = block * width;
    const elementBytes = ELEMENT_BYTES[dtype];
    const out = (given?.data ?? new ARRAY_OF[dtype](new SharedArrayBuffer(tokens * layers * span * elementBytes))) as Uint8Array | Float32Array | Uint16Array;
    const perPiece = Math.max(1, Math.ceil(tokens / this.#pieces));
    const work: Promise<void>[] = [];
    for (const [l, table] of this.#tables.entries()) {
      const ids = new Int32Array(tokens * block);
      for (let t = 0; t < tokens; t++) ids.set(rowIds.subarray((t * layers + l) * block, (t * layers + l + 1) * block), t * block);
      for (let t0 = 0; t0 < tokens; t0 += perPiece) {
        const t1 = Math.min(tokens, t0 + perPiece);
        work.push(table.lookupBlocksAsync(ids.subarray(t0 * block, t1 * block), format, out.subarray((t0 * layers + l) * span), block, layers * span * elementBytes));
      }
    }
    await Promise.all(work);
    return given ?? tensor(dtype, [tokens, layers, block, width], out as never);
  }

}

/** `session.append` with the request's place in the batch in any error's argument ('batch[2].tokens[5]'). */
function appendNamed(session: HashSession, req: EngramRequest, where: string): Int32Array {
  try {
    return session.append(req.tokens, req.mask === undefined ? {} : { mask: req.mask });
  } catch (e) {
    if (!(e instanceof FlashMLAError) || e.argument === undefined) throw e;
    const argument = e.argument.replace(/^ids/, `${where}.tokens`).replace(/^options\.mask/, `${where}.mask`);
    throw new FlashMLAError(e.code, e.message.replace(e.argument, argument), argument);
  }
}
