// Online softmax state of one query row, in the kernels' base-2 form: running max m of the scaled
// logits x = scale·log2(e)·q·k, running sum L of exp2(x − m) (fp32 P) and the unnormalised output
// O = Σ round(P)·v, where P is rounded to the kernel's 16-bit input type before P·V.
#pragma once

#include <cmath>

namespace emu {

template <int DV> struct SoftmaxRow {
  float m = -INFINITY;
  float l = 0.0f;
  float o[DV] = {};

  // Adds one block of keys: logits x[0..n) (−inf where masked), values v[j][0..DV); round()
  // gives P's 16-bit value as a float.
  template <class Values, class Round> void addBlock(const float* x, int n, const Values& v, Round round) {
    float blockMax = -INFINITY;
    for (int j = 0; j < n; ++j) blockMax = std::fmax(blockMax, x[j]);
    float mNew = std::fmax(m, blockMax);
    if (mNew == -INFINITY) return;  // nothing visible yet
    float rescale = m == -INFINITY ? 0.0f : std::exp2(m - mNew);
    l *= rescale;
    for (int d = 0; d < DV; ++d) o[d] *= rescale;
    for (int j = 0; j < n; ++j) {
      if (x[j] == -INFINITY) continue;
      float p = std::exp2(x[j] - mNew);
      l += p;
      float pr = round(p);
      const float* vj = v(j);
      for (int d = 0; d < DV; ++d) o[d] = std::fma(pr, vj[d], o[d]);
    }
    m = mNew;
  }
};

// fp32 dot product of two rows of (16-bit-exact) floats.
inline float dot(const float* a, const float* b, int n) {
  float s = 0.0f;
  for (int i = 0; i < n; ++i) s = std::fma(a[i], b[i], s);
  return s;
}

}  // namespace emu
