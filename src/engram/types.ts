/** Types and constants shared by the Engram modules (src/engram/*) that none of them owns alone. */

/** Values per e8m0 scale in V4.1's FP8 data: a table row's 32-value blocks, an activation block, a side of a wkv weight block. */
export const FP8_BLOCK = 32;

/**
 * Raw tokenizer id → canonical (compressed) id: tokens whose text normalises alike share one id
 * (docs/engram-hashing.md#hash says where it is applied). Built by src/engram/token-map.ts.
 */
export interface TokenMap {
  /** map[rawId] = canonical id in 0…size − 1. */
  readonly map: Int32Array;
  /** V′: the number of canonical ids. */
  readonly size: number;
}
