// Engram's N-gram hash (docs/engram-hashing.md#hash), the native tier of src/engram/hash-native.ts.
#pragma once

#include <napi.h>

namespace fmla::engram {

// The EngramHasher class: new EngramHasher(pad, vocab, multipliers, primes, offsets, layers, order,
// heads) copies and checks the layout once; hash(seq, history, out) writes
// out[t − history][layer][(n − 2)·heads + head] for every t in [history, seq.length).
Napi::Function EngramHasherClass(Napi::Env env);

}  // namespace fmla::engram
