// Call arguments whose host tensors live in SharedArrayBuffers (the reference's zero-copy path).
import type { HostTensor, Tensor } from '../../src/tensor.js';

/** The same arguments with every host tensor copied into a SharedArrayBuffer. */
export function shared<A extends object>(args: A): A {
  const out: Record<string, unknown> = { ...(args as Record<string, unknown>) };
  for (const [name, v] of Object.entries(args)) {
    const t = v as HostTensor | null;
    if (!t || typeof t !== 'object' || !('data' in t)) continue;
    const data = new (t.data.constructor as new (b: SharedArrayBuffer) => HostTensor['data'])(new SharedArrayBuffer(t.data.byteLength));
    data.set(t.data as never);
    out[name] = { ...t, data } as Tensor;
  }
  return out as A;
}
