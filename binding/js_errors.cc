#include "js_errors.h"

namespace fmla {

AddonData& addonData(Napi::Env env) {
  AddonData* data = env.GetInstanceData<AddonData>();
  if (data == nullptr) {
    data = new AddonData();  // deleted by Node when the environment goes
    env.SetInstanceData<AddonData>(data);
  }
  return *data;
}

Napi::Value SetErrorClass(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsFunction()) throwError(info.Env(), "E_INTERNAL", "setErrorClass(FlashMLAError): not a class");
  addonData(info.Env()).errorClass = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

Napi::Error makeError(Napi::Env env, const std::string& code, const std::string& message, int cudaError) {
  AddonData& data = addonData(env);
  Napi::Object error;
  if (!data.errorClass.IsEmpty()) {
    error = data.errorClass.New({Napi::String::New(env, code), Napi::String::New(env, message)});
  } else {
    error = Napi::Error::New(env, message).Value();
    error.Set("code", code);
  }
  if (cudaError != 0) error.Set("cudaError", Napi::Number::New(env, cudaError));
  return Napi::Error(env, error);
}

void throwError(Napi::Env env, const std::string& code, const std::string& message) { throw makeError(env, code, message); }

}  // namespace fmla
