/**
 * The one error class of the package. `code` is stable (part of the API); `argument` names the
 * offending argument when there is one, and the message always names it too.
 */
export type FlashMLAErrorCode =
  /** Wrong rank, shape or size of a tensor. */
  | 'E_SHAPE'
  /** Wrong dtype of a tensor, or a typed array that does not match its dtype. */
  | 'E_DTYPE'
  /** A stride or offset FlashMLA cannot use (e.g. last dim not contiguous, TMA alignment). */
  | 'E_STRIDE'
  /** A buffer too short for the shape, strides and offset it is used with. */
  | 'E_BUFFER'
  /** A scalar argument out of its domain (head_dim_v != 512, NaN scale, ...). */
  | 'E_VALUE'
  /** An index, block id, length or sequence length outside the cache it refers to. */
  | 'E_RANGE'
  /** A combination FlashMLA does not support (e.g. causal with indices, h_q = 96 sparse). */
  | 'E_UNSUPPORTED'
  /** The FlashMLASchedMeta was first used with another configuration (docs/flashmla-interface.md#sched-meta-caching). */
  | 'E_SCHED_META'
  /** The requested backend cannot run here (no addon, no library, no device, wrong arch). */
  | 'E_BACKEND'
  /** A tensor lives on another device (or the host where a device tensor is required). */
  | 'E_DEVICE'
  /** A device tensor or FlashMLA instance was used after dispose(). */
  | 'E_DISPOSED'
  /** The CUDA runtime or a FlashMLA launcher reported an error. */
  | 'E_CUDA'
  /** Device memory ran out (after the memory of dropped device tensors was collected). */
  | 'E_OUT_OF_MEMORY'
  /** An earlier device fault left the device's CUDA context unusable for the rest of the process. */
  | 'E_DEVICE_LOST'
  /** An internal invariant failed: a bug in flashmla-node. */
  | 'E_INTERNAL';

/** The one error class of the package: every invalid argument, unusable backend and device or launcher failure. Compare `code`, not messages. */
export class FlashMLAError extends Error {
  /** Always 'FlashMLAError'. */
  override readonly name = 'FlashMLAError';
  /** Stable code of what went wrong (part of the API). */
  readonly code: FlashMLAErrorCode;
  /** The offending argument ('q', 'kCache', 'options.threads', …), when there is one; the message names it too. */
  readonly argument: string | undefined;

  /** @param code stable code; @param message a self-contained reason; @param argument the offending argument, prefixed to the message. */
  constructor(code: FlashMLAErrorCode, message: string, argument?: string) {
    super(argument !== undefined && !message.includes(argument) ? `${argument}: ${message}` : message);
    this.code = code;
    this.argument = argument;
  }
}

/** Throws a FlashMLAError unless `condition` holds. */
export function check(
  condition: unknown,
  code: FlashMLAErrorCode,
  argument: string | undefined,
  message: string | (() => string),
): asserts condition {
  if (!condition) {
    throw new FlashMLAError(code, typeof message === 'string' ? message : message(), argument);
  }
}
