import { FlashMLA } from '../flashmla.js';

export type DefaultCuda = { readonly ok: true; readonly instance: FlashMLA } | { readonly ok: false; readonly reason: string };

let cached: Promise<DefaultCuda> | undefined;

/**
 * The process-wide CUDA instance used by `flashMlaWithKvCache` with backend 'cuda' / 'auto'
 * (device 0, library from FLASHMLA_LIBRARY or the flash_mla package), or why there is none.
 * Computed once, like vLLM's (ok, reason) platform checks.
 */
export function defaultCuda(): Promise<DefaultCuda> {
  cached ??= FlashMLA.open({ backend: 'cuda' }).then(
    (instance): DefaultCuda => ({ ok: true, instance }),
    (e: unknown): DefaultCuda => ({ ok: false, reason: (e as Error).message.replace(/^the CUDA backend is not usable: /, '') }),
  );
  return cached;
}
