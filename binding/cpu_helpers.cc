// Helpers the reference backend's calling thread uses between tiles (merging split partials,
// rounding output rows, staging sparse tokens); each replaces a JavaScript loop on the critical path.
#include "cpu_helpers.h"
#include "cpu_rows.h"
#include "js_errors.h"

#include <cmath>
#include <cstdint>
#include <cstring>

namespace fmla::cpu {

// rows·dv ≤ n for non-negative rows and dv, by division: the product of two int64 from
// JavaScript can wrap (4 · 2^62 → 0) and would pass.
static bool rowsFit(int64_t rows, int64_t dv, std::size_t n) {
  return rows >= 0 && dv >= 0 && (dv == 0 || rows <= static_cast<int64_t>(n) / dv);
}

// merge(dm, dl, do, sm, sl, so, rows, dv): folds the partial (sm, sl, so) into (dm, dl, do) by LSE
// (docs/flashmla-interface.md#split-kv), in double as src/reference/partial.ts `mergeInto` computes it, so both give the same
// floats; here the caller's serial merges of 2-thread calls cost ~10 µs instead of ~85 µs.
Napi::Value MergePartial(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  float* a[6];
  std::size_t n[6];
  for (std::size_t i = 0; i < 6; i++) {
    if (!info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
      throwError(env, "E_INTERNAL", "cpuTile.merge: arguments 0–5 must be Float32Arrays");
    }
    Napi::Float32Array t = info[i].As<Napi::Float32Array>();
    a[i] = t.Data();
    n[i] = t.ElementLength();
  }
  if (!info[6].IsNumber() || !info[7].IsNumber()) throwError(env, "E_INTERNAL", "cpuTile.merge: rows and dv must be numbers");
  const int64_t rows = info[6].As<Napi::Number>().Int64Value(), dv = info[7].As<Napi::Number>().Int64Value();
  const auto fits = [&](std::size_t i, int64_t want) { return want >= 0 && static_cast<int64_t>(n[i]) >= want; };
  const auto fitsRows = [&](std::size_t i) { return rowsFit(rows, dv, n[i]); };
  if (!(fits(0, rows) && fits(1, rows) && fits(3, rows) && fits(4, rows) && dv >= 0 && fitsRows(2) && fitsRows(5))) {
    throwError(env, "E_INTERNAL", "cpuTile.merge: arrays shorter than rows (m, l) or rows × dv (o)");
  }
  float *dm = a[0], *dl = a[1], *dO = a[2];
  const float *sm = a[3], *sl = a[4], *sO = a[5];
  for (int64_t r = 0; r < rows; r++) MergeRow(dm + r, dl + r, dO + r * dv, sm + r, sl + r, sO + r * dv, dv);
  return Napi::Value();
}

// bf16Rows(o, factors, dst, at, rows, dv): dst[at[r] + x] ← bf16(o[r·dv + x] · factors[r]) for
// x < dv, rows with at[r] < 0 skipped. The product is taken in double and rounded to float, then
// to bf16 by round-to-nearest-even (NaN → quiet NaN, sign kept), as src/formats/bf16.ts
// `f32ToBf16` does: the calling thread's final rounding of a group costs ~15 µs, not ~150 µs.
Napi::Value Bf16Rows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const auto is = [&](std::size_t i, napi_typedarray_type t) {
    return info[i].IsTypedArray() && info[i].As<Napi::TypedArray>().TypedArrayType() == t;
  };
  if (!is(0, napi_float32_array) || !is(1, napi_float64_array) || !is(2, napi_uint16_array) || !is(3, napi_float64_array) ||
      !info[4].IsNumber() || !info[5].IsNumber()) {
    throwError(env, "E_INTERNAL", "cpuTile.bf16Rows(o: Float32Array, factors: Float64Array, dst: Uint16Array, at: Float64Array, rows, dv)");
  }
  Napi::Float32Array o = info[0].As<Napi::Float32Array>();
  Napi::Float64Array factors = info[1].As<Napi::Float64Array>(), at = info[3].As<Napi::Float64Array>();
  Napi::Uint16Array dst = info[2].As<Napi::Uint16Array>();
  const int64_t rows = info[4].As<Napi::Number>().Int64Value(), dv = info[5].As<Napi::Number>().Int64Value();
  if (rows < 0 || dv < 0 || static_cast<int64_t>(factors.ElementLength()) < rows || static_cast<int64_t>(at.ElementLength()) < rows ||
      !rowsFit(rows, dv, o.ElementLength())) {
    throwError(env, "E_INTERNAL", "cpuTile.bf16Rows: arrays shorter than rows (factors, at) or rows × dv (o)");
  }
  // Raw pointers: Napi::TypedArrayOf::operator[](size_t) and the built-in subscript through its
  // napi_value conversion are equally good matches for an int64_t index.
  const double* atRow = at.Data();
  const double* factor = factors.Data();
  const double n = static_cast<double>(dst.ElementLength());
  for (int64_t r = 0; r < rows; r++) {
    const double a = atRow[r];
    if (a < 0) continue;
    if (!(a == std::floor(a) && a + static_cast<double>(dv) <= n)) throwError(env, "E_INTERNAL", "cpuTile.bf16Rows: a row reaches past dst");
  }
  for (int64_t r = 0; r < rows; r++) {
    if (atRow[r] < 0) continue;
    uint16_t* out = dst.Data() + static_cast<int64_t>(atRow[r]);
    const float* src = o.Data() + r * dv;
    const double f = factor[r];
    for (int64_t x = 0; x < dv; x++) out[x] = Bf16Of(static_cast<float>(src[x] * f));
  }
  return Napi::Value();
}

// gather(src: Uint8Array, dst: Uint8Array, runs: Float64Array, count): for each of count runs
// (srcAt, dstAt, bytes) in `runs`, dst[dstAt …] ← src[srcAt …]. The staging of sparse tokens for
// worker threads (src/reference/share.ts): one call per item instead of a JavaScript copy per
// 656-byte token, ~4× less of the calling thread's time.
Napi::Value Gather(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const auto is = [&](std::size_t i, napi_typedarray_type t) {
    return info[i].IsTypedArray() && info[i].As<Napi::TypedArray>().TypedArrayType() == t;
  };
  if (!is(0, napi_uint8_array) || !is(1, napi_uint8_array) || !is(2, napi_float64_array) || !info[3].IsNumber()) {
    throwError(env, "E_INTERNAL", "cpuTile.gather(src: Uint8Array, dst: Uint8Array, runs: Float64Array, count)");
  }
  Napi::Uint8Array src = info[0].As<Napi::Uint8Array>(), dst = info[1].As<Napi::Uint8Array>();
  Napi::Float64Array runs = info[2].As<Napi::Float64Array>();
  const int64_t count = info[3].As<Napi::Number>().Int64Value();
  // 3·count ≤ length(runs) by division: 3·count wraps for count ≥ 2^62 and would pass.
  if (count < 0 || count > static_cast<int64_t>(runs.ElementLength()) / 3) throwError(env, "E_INTERNAL", "cpuTile.gather: count exceeds runs");
  const double ns = static_cast<double>(src.ElementLength()), nd = static_cast<double>(dst.ElementLength());
  const double* run = runs.Data();  // raw, as in Bf16Rows
  for (int64_t r = 0; r < count; r++) {
    const double a = run[3 * r], b = run[3 * r + 1], n = run[3 * r + 2];
    // Whole numbers in range (NaN fails every comparison).
    if (!(a >= 0 && b >= 0 && n >= 0 && a == std::floor(a) && b == std::floor(b) && n == std::floor(n) && a + n <= ns && b + n <= nd)) {
      throwError(env, "E_INTERNAL", "cpuTile.gather: a run reaches past src or dst");
    }
  }
  for (int64_t r = 0; r < count; r++) {
    std::memcpy(dst.Data() + static_cast<int64_t>(run[3 * r + 1]), src.Data() + static_cast<int64_t>(run[3 * r]),
                static_cast<std::size_t>(run[3 * r + 2]));
  }
  return Napi::Value();
}

}  // namespace fmla::cpu
