/** Positional file reads shared by the header parsers, the pread gather and the writer's converter. */
import { readSync } from 'node:fs';
import { FlashMLAError } from '../errors.js';

/** Largest single read: readSync takes at most 2^31 − 1 bytes per call. */
const MAX_READ = 1 << 30;

/**
 * Reads exactly `buf.length` bytes of `fd` at file offset `position` into `buf`. A short file is a
 * FlashMLAError (E_BUFFER) naming `path` (callers check sizes first; this catches a file that
 * shrank after it was opened).
 */
export function readFully(fd: number, buf: Uint8Array, position: number, path: string): void {
  let done = 0;
  while (done < buf.length) {
    const got = readSync(fd, buf, done, Math.min(buf.length - done, MAX_READ), position + done);
    if (got === 0) throw new FlashMLAError('E_BUFFER', `${path}: unexpected end of file at byte ${position + done}`);
    done += got;
  }
}
