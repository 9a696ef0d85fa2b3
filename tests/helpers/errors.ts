// What the tests expect of a refusal: a FlashMLAError, with its code and the argument it names.
import { expect } from 'vitest';
import { FlashMLAError, type FlashMLAErrorCode } from '../../src/errors.js';

/** The FlashMLAError `f` throws (fails the test when it throws nothing or something else). */
export function errorOf(f: () => unknown): FlashMLAError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(FlashMLAError);
    return e as FlashMLAError;
  }
  throw new Error('expected a FlashMLAError, nothing was thrown');
}

/** The FlashMLAError `f` throws or rejects with. */
export async function rejectionOf(f: () => unknown): Promise<FlashMLAError> {
  try {
    await f();
  } catch (e) {
    expect(e).toBeInstanceOf(FlashMLAError);
    return e as FlashMLAError;
  }
  throw new Error('expected a FlashMLAError, nothing was thrown');
}

/** `f` throws a FlashMLAError with this code, naming `argument` (in `argument` and in the message) when there is one. */
export function expectError(f: () => unknown, code: FlashMLAErrorCode | string, argument: string | undefined): void {
  const e = errorOf(f);
  expect({ code: e.code, argument: e.argument }).toEqual({ code, argument });
  if (argument !== undefined) expect(e.message).toContain(argument);
}
