// Reference-backend helpers exported with the native tier (`cpuTile.merge`, `.bf16Rows`, `.gather`).
#pragma once

#include <napi.h>

namespace fmla::cpu {

// merge(dm, dl, do, sm, sl, so, rows, dv): folds one split partial into another by LSE.
Napi::Value MergePartial(const Napi::CallbackInfo& info);
// bf16Rows(o, factors, dst, at, rows, dv): scaled output rows rounded to bf16 into place.
Napi::Value Bf16Rows(const Napi::CallbackInfo& info);
// gather(src, dst, runs, count): byte runs copied for the staging of sparse tokens.
Napi::Value Gather(const Napi::CallbackInfo& info);

}  // namespace fmla::cpu
