/**
 * A numpy-free port of the part of numpy's random module that Engram's hash multipliers come from:
 * `numpy.random.default_rng(seed).integers(0, high, size, dtype=np.int64)`, i.e. SeedSequence →
 * PCG64 → Lemire's bounded integers (docs/engram-hashing.md#numpy-generator). BigInt throughout:
 * this runs once per layout, never per token.
 */
import { check } from '../errors.js';

const MASK32 = 0xffffffffn;
const MASK64 = 0xffffffffffffffffn;
const MASK128 = (1n << 128n) - 1n;

// SeedSequence's hash and mix constants (numpy/random/bit_generator.pyx).
const INIT_A = 0x43b0d7e5;
const MULT_A = 0x931e8875;
const INIT_B = 0x8b51f9dd;
const MULT_B = 0x58f38ded;
const MIX_MULT_L = 0xca01f9dd;
const MIX_MULT_R = 0x4973f715;
const XSHIFT = 16;
/** numpy's default pool size (in 32-bit words). */
const POOL_SIZE = 4;

/** PCG64's 128-bit LCG multiplier (numpy/random/src/pcg64/pcg64.h PCG_DEFAULT_MULTIPLIER_128). */
const PCG_MULTIPLIER = 0x2360ed051fc65da44385df649fccf645n;

/** uint32 product (Math.imul keeps the low 32 bits exactly). */
const mul32 = (a: number, b: number): number => Math.imul(a, b) >>> 0;

/**
 * numpy's SeedSequence for a non-negative integer seed (no spawn key), pool size 4: the seed's
 * 32-bit words (little-endian; 0 is one word) are hashed into the pool and mixed so every word
 * affects every other.
 */
export class SeedSequence {
  /** The 4 mixed 32-bit pool words. */
  readonly pool: Uint32Array;

  /** @param seed the entropy: a non-negative safe integer or bigint (numpy accepts any size). */
  constructor(seed: number | bigint) {
    check(typeof seed === 'bigint' || Number.isSafeInteger(seed), 'E_VALUE', 'seed', `must be an integer (got ${String(seed)})`);
    const words = entropyWords(seed);
    let hashConst = INIT_A;
    const hashmix = (value: number): number => {
      value = (value ^ hashConst) >>> 0;
      hashConst = mul32(hashConst, MULT_A);
      value = mul32(value, hashConst);
      return (value ^ (value >>> XSHIFT)) >>> 0;
    };
    const mix = (x: number, y: number): number => {
      const r = (mul32(MIX_MULT_L, x) - mul32(MIX_MULT_R, y)) >>> 0;
      return (r ^ (r >>> XSHIFT)) >>> 0;
    };
    const pool = new Uint32Array(POOL_SIZE);
    for (let i = 0; i < POOL_SIZE; i++) pool[i] = hashmix(words[i] ?? 0);
    for (let src = 0; src < POOL_SIZE; src++) {
      for (let dst = 0; dst < POOL_SIZE; dst++) {
        if (src !== dst) pool[dst] = mix(pool[dst]!, hashmix(pool[src]!));
      }
    }
    for (let src = POOL_SIZE; src < words.length; src++) {
      for (let dst = 0; dst < POOL_SIZE; dst++) pool[dst] = mix(pool[dst]!, hashmix(words[src]!));
    }
    this.pool = pool;
  }

  /** `generate_state(n, np.uint64)`: 2n hashed 32-bit words cycling over the pool, paired little-endian. */
  generateState64(n: number): bigint[] {
    let hashConst = INIT_B;
    const words: number[] = [];
    for (let i = 0; i < 2 * n; i++) {
      let v = (this.pool[i % POOL_SIZE]! ^ hashConst) >>> 0;
      hashConst = mul32(hashConst, MULT_B);
      v = mul32(v, hashConst);
      words.push((v ^ (v >>> XSHIFT)) >>> 0);
    }
    const out: bigint[] = [];
    for (let i = 0; i < n; i++) out.push((BigInt(words[2 * i + 1]!) << 32n) | BigInt(words[2 * i]!));
    return out;
  }
}

/** The seed's 32-bit words, least significant first (numpy's `_coerce_to_uint32_array` for an int). */
function entropyWords(seed: number | bigint): number[] {
  let s = BigInt(seed);
  check(s >= 0n, 'E_VALUE', 'seed', `must be a non-negative integer (got ${s})`);
  const words: number[] = [];
  do {
    words.push(Number(s & MASK32));
    s >>= 32n;
  } while (s > 0n);
  return words;
}

/** PCG64 (XSL-RR 128/64), seeded as numpy seeds it from a SeedSequence. */
export class Pcg64 {
  private state = 0n;
  private readonly inc: bigint;
  /** numpy's PCG64 hands out 32-bit draws in pairs: the upper half of a 64-bit draw waits here. */
  private pending32: number | undefined;

  /** @param seq the seed sequence; its first 4 uint64 words become initstate (0, 1) and initseq (2, 3). */
  constructor(seq: SeedSequence) {
    const [w0, w1, w2, w3] = seq.generateState64(4) as [bigint, bigint, bigint, bigint];
    const initState = (w0 << 64n) | w1;
    const initSeq = (w2 << 64n) | w3;
    this.inc = ((initSeq << 1n) | 1n) & MASK128;
    this.step();
    this.state = (this.state + initState) & MASK128;
    this.step();
  }

  private step(): void {
    this.state = (this.state * PCG_MULTIPLIER + this.inc) & MASK128;
  }

  /** Steps, then outputs rotr64(high ^ low, state >> 122). */
  nextUint64(): bigint {
    this.step();
    const x = ((this.state >> 64n) ^ this.state) & MASK64;
    const rot = this.state >> 122n;
    return ((x >> rot) | (x << ((64n - rot) & 63n))) & MASK64;
  }

  /** The low half of a fresh 64-bit draw, then its high half (numpy's pcg64_next32). */
  nextUint32(): number {
    if (this.pending32 !== undefined) {
      const v = this.pending32;
      this.pending32 = undefined;
      return v;
    }
    const x = this.nextUint64();
    this.pending32 = Number(x >> 32n);
    return Number(x & MASK32);
  }

  /**
   * `Generator.integers(0, high, size, dtype=np.int64)`: uniform in [0, high) by Lemire's
   * multiply-and-reject method, on 32-bit draws when high − 1 fits in 32 bits and 64-bit draws
   * otherwise, exactly as numpy's random_bounded_uint64_fill chooses.
   * @param high exclusive upper bound, 1 ≤ high ≤ 2^63 − 1.
   */
  integers(high: bigint, size: number): bigint[] {
    check(high >= 1n && high <= (1n << 63n) - 1n, 'E_VALUE', 'high', `must be in 1…2^63 − 1 (got ${high})`);
    check(Number.isSafeInteger(size) && size >= 0, 'E_VALUE', 'size', `must be a non-negative integer (got ${size})`);
    const rng = high - 1n;
    const out: bigint[] = [];
    for (let i = 0; i < size; i++) {
      if (rng === 0n) out.push(0n);
      else if (rng === MASK32) out.push(BigInt(this.nextUint32()));
      else if (rng < MASK32) out.push(this.lemire(rng, 32n, () => BigInt(this.nextUint32())));
      else out.push(this.lemire(rng, 64n, () => this.nextUint64()));
    }
    return out;
  }

  /** Lemire's bounded draw in `bits`-bit words: [0, rng] from (draw · (rng + 1)) >> bits, rejecting the biased low parts. */
  private lemire(rng: bigint, bits: bigint, draw: () => bigint): bigint {
    const mask = (1n << bits) - 1n;
    const excl = rng + 1n;
    let m = draw() * excl;
    if ((m & mask) < excl) {
      const threshold = (mask - rng) % excl;
      while ((m & mask) < threshold) m = draw() * excl;
    }
    return m >> bits;
  }
}

/** `numpy.random.default_rng(seed).integers(0, high, size=size, dtype=np.int64)`. */
export function defaultRngIntegers(seed: number | bigint, high: bigint, size: number): bigint[] {
  return new Pcg64(new SeedSequence(seed)).integers(high, size);
}
