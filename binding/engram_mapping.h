// EngramMapping: an Engram table file mapped read-only into the process and gathered from by row
// id (docs/engram-native.md#mapping). JavaScript: new EngramMapping(path, spec) with the
// methods of src/addon.ts NativeEngramMapping.
#pragma once

#include <napi.h>

namespace fmla::engram {

// The EngramMapping class of this environment (each worker thread defines its own).
Napi::Function DefineEngramMapping(Napi::Env env);

}  // namespace fmla::engram
