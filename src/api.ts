import { FlashMLAError } from './errors.js';
import { defaultCuda } from './native/default.js';
import { referenceDecode } from './reference/index.js';
import { readDecodeArgs, readDecodeOptions } from './validate/args.js';
import type { Tensor } from './tensor.js';
import type { DecodeArgs, DecodeOptions, DecodeResult } from './types.js';

/**
 * FlashMLA's `flash_mla_with_kvcache` (docs/flashmla-interface.md#kvcache-arguments, semantics docs/flashmla-interface.md#reference-semantics). `backend`: 'reference' runs on
 * the CPU; 'cuda' needs a usable FlashMLA build and GPU (else a FlashMLAError E_BACKEND saying why);
 * 'auto' (default) uses CUDA when usable, else the reference. Outputs are device tensors when q is
 * one, host tensors otherwise.
 */
export async function flashMlaWithKvCache(callerArgs: DecodeArgs, callerOptions?: DecodeOptions): Promise<DecodeResult<Tensor>> {
  const args = readDecodeArgs(callerArgs);
  const options = readDecodeOptions(callerOptions);
  const backend = options.backend ?? 'auto';
  if (backend !== 'auto' && backend !== 'cuda' && backend !== 'reference') {
    throw new FlashMLAError('E_VALUE', `options.backend must be 'auto', 'cuda' or 'reference', got ${String(backend)}`, 'options.backend');
  }
  if (backend === 'reference') return referenceDecode(args, options);
  const cuda = await defaultCuda();
  // Under 'auto' a call this build cannot run on the device (a dense call on a build without dense
  // kernels, say) runs on the reference when its tensors are host tensors.
  if (cuda.ok) {
    if (backend === 'cuda' || cuda.instance.cannotRun(args) === null) return cuda.instance.flashMlaWithKvCache(args, options);
    return referenceDecode(args, options);
  }
  if (backend === 'cuda') throw new FlashMLAError('E_BACKEND', `the CUDA backend is not usable: ${cuda.reason}`, 'options.backend');
  return referenceDecode(args, options);
}
