/**
 * A request's hash history (docs/engram-hashing.md#history): the canonical ids (DEAD for dead
 * tokens) of every token appended so far, so that hashing chunk by chunk or token by token gives
 * the ids of hashing the whole sequence at once, and a rejected speculative draft can be rolled back.
 */
import { check } from '../errors.js';
import { allocateRowIds, canonicalInto, isPlan, readCompressed, type HashKernel, type HashPlan, type IdsInput, type MaskInput } from './hash-plan.js';

/** Options of {@link HashSession.append}. */
export interface AppendOptions {
  /** Dead tokens (true / non-zero = dead, e.g. an image placeholder), one per id. Default: none dead. */
  readonly mask?: MaskInput;
  /** The ids are canonical ids already (not raw tokenizer ids). Default: false (raw when the hasher has a token map). */
  readonly compressed?: boolean;
}

const NAMES = { ids: 'ids', mask: 'options.mask' } as const;

/** One request's history of an NgramHasher; made by `NgramHasher.session()`. */
export class HashSession {
  readonly #plan: HashPlan;
  readonly #kernel: HashKernel;
  /** Canonical ids (DEAD for dead tokens) of positions 0…length − 1; capacity grows by doubling. */
  #seq: Int32Array;
  #length: number;

  /** Made by `NgramHasher.session()` (and `fork()`); the plan and its hash loop are the hasher's. */
  constructor(plan: HashPlan, kernel: HashKernel, seq: Int32Array = new Int32Array(64), length = 0) {
    check(isPlan(plan) && typeof kernel === 'function' && seq instanceof Int32Array && Number.isSafeInteger(length) &&
      length >= 0 && length <= seq.length, 'E_VALUE', 'HashSession', 'a HashSession is made by NgramHasher.session()');
    this.#plan = plan;
    this.#kernel = kernel;
    this.#seq = seq;
    this.#length = length;
  }

  /** Tokens appended and not rolled back. */
  get length(): number {
    return this.#length;
  }

  /**
   * Hashes `ids` as the next tokens of the request (their look-backs reach into the tokens
   * appended before), then records them. Returns the row ids laid out [token][layer][(N − 1)·K].
   * Nothing is recorded when the ids or mask are invalid (the FlashMLAError names them).
   */
  append(ids: IdsInput, options: AppendOptions = {}): Int32Array {
    check(options !== null && typeof options === 'object', 'E_VALUE', 'options', 'options must be an object');
    const plan = this.#plan;
    const tail = Math.min(this.#length, plan.order - 1);
    check(ids instanceof Int32Array || Array.isArray(ids), 'E_DTYPE', 'ids', 'ids must be an Int32Array or an array of integers');
    const compressed = readCompressed(options.compressed, 'options.compressed');
    const out = allocateRowIds(plan, ids.length); // first: the largest allocation (a too-long ids fails here)
    const seq = new Int32Array(tail + ids.length);
    // At most N − 1 values: a loop is cheaper than a subarray view (decoding appends one token at a time).
    for (let i = 0, from = this.#length - tail; i < tail; i++) seq[i] = this.#seq[from + i]!;
    canonicalInto(plan, ids, options.mask, compressed, NAMES, seq, tail);
    this.#kernel(seq, tail, out);
    this.#record(seq, tail);
    return out;
  }

  /** Forgets the last `n` tokens (a rejected speculative draft); n must be an integer in 0…length. */
  rollback(n: number): void {
    check(Number.isSafeInteger(n) && n >= 0 && n <= this.#length, 'E_RANGE', 'n',
      () => `n must be an integer in 0…${this.#length} (the session's length), got ${String(n)}`);
    this.#length -= n;
  }

  /** Forgets every token: the next append starts a new sequence. */
  reset(): void {
    this.#length = 0;
  }

  /** An independent copy of this session (e.g. one per beam or draft branch). */
  fork(): HashSession {
    return new HashSession(this.#plan, this.#kernel, this.#seq.slice(0, Math.max(this.#length, 64)), this.#length);
  }

  /**
   * The canonical ids of the last `count` tokens and their dead flags: what `NgramHasher.hash`
   * takes as `history` with `compressed: true`.
   * @param count how many. Default: N − 1 (all a look-back reads), at most `length`.
   */
  tail(count = this.#plan.order - 1): { ids: Int32Array; mask: Uint8Array } {
    check(Number.isSafeInteger(count) && count >= 0, 'E_VALUE', 'count', () => `count must be a non-negative integer, got ${String(count)}`);
    const from = Math.max(0, this.#length - count);
    const part = this.#seq.subarray(from, this.#length);
    const mask = Uint8Array.from(part, (v) => (v < 0 ? 1 : 0));
    return { ids: Int32Array.from(part, (v) => (v < 0 ? this.#plan.pad : v)), mask };
  }

  /** Appends seq[from…] to the recorded tokens. */
  #record(seq: Int32Array, from: number): void {
    const count = seq.length - from;
    const need = this.#length + count;
    if (need > this.#seq.length) {
      const grown = new Int32Array(Math.max(need, 2 * this.#seq.length));
      grown.set(this.#seq.subarray(0, this.#length));
      this.#seq = grown;
    }
    if (count < 16) for (let i = 0; i < count; i++) this.#seq[this.#length + i] = seq[from + i]!;
    else this.#seq.set(seq.subarray(from), this.#length);
    this.#length = need;
  }
}
