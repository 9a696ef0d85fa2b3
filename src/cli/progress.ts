/** Progress of a sequence of cases: a redrawn bar on a TTY, one plain line per case otherwise. */
export interface Progress {
  start(index: number, total: number, name: string): void;
  done(index: number, total: number, name: string, status: string): void;
  /** Clears the bar (TTY) before the final output. */
  end(): void;
}

/** `stream` is stderr, so stdout stays clean for tables and JSON (logs still show where a run was). */
export function createProgress(stream: NodeJS.WriteStream): Progress {
  if (stream.isTTY) {
    const width = 30;
    const draw = (done: number, total: number, name: string): void => {
      const filled = Math.round((done / Math.max(total, 1)) * width);
      const cols = stream.columns ?? 100;
      const text = `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total} ${name}`;
      stream.write(`\r\x1b[2K${text.slice(0, cols - 1)}`);
    };
    return {
      start: (i, total, name) => draw(i, total, name),
      done: (i, total, name) => draw(i + 1, total, name),
      end: () => stream.write('\r\x1b[2K'),
    };
  }
  return {
    start: () => undefined,
    done: (i, total, name, status) => stream.write(`[${i + 1}/${total}] ${status} ${name}\n`),
    end: () => undefined,
  };
}
