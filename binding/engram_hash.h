// Engram's N-gram hash (docs/engram-hashing.md#hash), the native tier of src/engram/hash-native.ts.
#pragma once

#include <napi.h>

namespace fmla::engram {

// engramHash(seq, history, pad, vocab, multipliers, primes, offsets, layers, order, heads, reciprocals, out):
// out[t − history][layer][(n − 2)·heads + head] for every t in [history, seq.length); reciprocals[i] =
// ⌊(2^64 − 1)/primes[i]⌋ (Barrett constants, checked).
Napi::Value EngramHash(const Napi::CallbackInfo& info);

}  // namespace fmla::engram
