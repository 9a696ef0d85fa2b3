// The native tier's item runner (cpu_runner.cc): `cpuTile.runDense`, `.runSparse`, `.startHelpers`
// and `.prime` of the addon's exports.
#pragma once

#include <napi.h>

namespace fmla::cpu {

// runDense(params: Float64Array, q, kCache, blockTable, seqlens, items, count, results, slot, threads,
//          out, lse, lseL, carryIn, carryOut, flags): the first non-finite q element's flat index, or −1.
Napi::Value RunDenseItems(const Napi::CallbackInfo& info);
// runSparse(params: Float64Array, q, cache0, indices0, lengths0, cache1, indices1, lengths1, items, count, results, slot,
//           threads, out, lse, lseL, carryIn, carryOut, flags): the same for a sparse call.
Napi::Value RunSparseItems(const Napi::CallbackInfo& info);
// runPrefill(params: Float64Array, q, kv, indices, lengths, items, count, results, slot, threads): the same for a
// sparse prefill (partials only; src/reference/prefill.ts finishes the rows).
Napi::Value RunPrefillItems(const Napi::CallbackInfo& info);
// startHelpers(n): starts the runner's helper threads up to n; returns how many run.
Napi::Value StartHelpers(const Napi::CallbackInfo& info);
// prime(n, micros): wakes the helpers (up to n) to spin for the next call's items for up to micros µs.
Napi::Value PrimeHelpers(const Napi::CallbackInfo& info);

}  // namespace fmla::cpu
