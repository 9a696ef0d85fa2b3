import { check, FlashMLAError } from '../errors.js';
import { DeviceTensor } from '../device-tensor.js';
import { ELEMENT_BYTES, isContiguous, viewOf, type DType } from '../tensor.js';
import type { CallOptions } from '../types.js';

/** The option names of preallocated outputs, in the order they are checked. */
export const OUTPUT_OPTIONS = ['out', 'lse'] as const;

/**
 * A preallocated output (`options.out` / `options.lse`, docs/cuda-path.md#preallocated-outputs):
 * a live DeviceTensor of exactly the call's shape, dtype and strides (the layout a call without it
 * returns: out contiguous, lse possibly a view, src/cuda/host-layer.ts lseStrides), with a 16-byte
 * aligned base (the dense kernel writes out through TMA, docs/flashmla-interface.md#tma-alignment).
 * Which instance and device it belongs to is the CUDA session's check. Returns the tensor.
 */
export function expectOutputTensor(t: unknown, name: string, dtype: DType, shape: readonly number[], strides: readonly number[]): DeviceTensor {
  check(DeviceTensor.isDeviceTensor(t), 'E_VALUE', name, `${name} must be a DeviceTensor made by FlashMLA.allocate/upload/wrap`);
  check(!t.disposed, 'E_DISPOSED', name, `${name} is a disposed DeviceTensor`);
  check(t.dtype === dtype, 'E_DTYPE', name, () => `${name} must be ${dtype} (the call's output dtype), got ${t.dtype}`);
  const view = viewOf(t, name);
  check(view.shape.length === shape.length && view.shape.every((d, i) => d === shape[i]), 'E_SHAPE', name,
    () => `${name} must have shape (${shape.join(', ')}), got (${view.shape.join(', ')})`);
  check(view.shape.every((d, i) => d <= 1 || view.strides[i] === strides[i]), 'E_STRIDE', name,
    () => `${name} must have strides (${strides.join(', ')}), the layout this call returns, got (${view.strides.join(', ')})` +
      (isContiguous({ ...view, strides }) ? '' : '; allocate it with those strides or pass the tensor an earlier call returned'));
  check((t.address + BigInt(view.offset * ELEMENT_BYTES[dtype])) % 16n === 0n, 'E_STRIDE', name,
    `${name} must start at a 16-byte aligned device address`);
  return t;
}

/** Preallocated outputs are device memory a CUDA call writes: refused where the call runs elsewhere. */
export function expectNoOutputOptions(options: CallOptions, why: string): void {
  for (const k of OUTPUT_OPTIONS) {
    if (options[k] !== undefined && options[k] !== null) {
      throw new FlashMLAError('E_UNSUPPORTED', `options.${k} (a preallocated output) ${why}`, `options.${k}`);
    }
  }
}
