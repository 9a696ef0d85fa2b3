/**
 * Byte or row progress of the long Engram commands (verify, convert, the bench's table writer) on
 * stderr, so stdout stays clean for results and JSON: a redrawn line on a TTY, otherwise one line
 * per tenth of the work. Small jobs (under `minTotal` units) print nothing.
 */
export interface UnitProgress {
  /** `done` of `total` units finished. */
  update(done: number, total: number): void;
  /** Clears the TTY line (a plain stream keeps its lines). */
  end(): void;
}

/** A progress line labelled `label`, counting `unit`s ('bytes' are shown in GiB/MiB). */
export function unitProgress(stream: NodeJS.WriteStream, label: string, unit: 'bytes' | 'rows', minTotal: number): UnitProgress {
  const t0 = performance.now();
  let lastDraw = 0;
  let lastTenth = -1;
  let drawn = false;
  const amount = (n: number): string => (unit === 'bytes' ? bytesText(n) : `${n.toLocaleString('en-US')} rows`);
  const text = (done: number, total: number): string => {
    const s = (performance.now() - t0) / 1000;
    const rate = s > 0 ? done / s : 0;
    return `${label}: ${amount(done)} of ${amount(total)} (${((100 * done) / Math.max(total, 1)).toFixed(0)}%, ${unit === 'bytes' ? `${bytesText(rate)}/s` : `${(rate / 1e6).toFixed(2)} M rows/s`})`;
  };
  return {
    update(done, total) {
      if (total < minTotal) return;
      if (stream.isTTY) {
        const now = performance.now();
        if (now - lastDraw < 200 && done < total) return;
        lastDraw = now;
        drawn = true;
        stream.write(`\r\x1b[2K${text(done, total).slice(0, (stream.columns ?? 100) - 1)}`);
        return;
      }
      const tenth = Math.floor((10 * done) / Math.max(total, 1));
      if (tenth === lastTenth) return;
      lastTenth = tenth;
      stream.write(`${text(done, total)}\n`);
    },
    end() {
      if (drawn) stream.write('\r\x1b[2K');
    },
  };
}

/** Bytes in the binary unit that keeps 1–4 integer digits: "512 B", "3.50 MiB", "98.3 GiB". */
export function bytesText(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let u = 0;
  let x = n;
  while (x >= 1024 && u < units.length - 1) { x /= 1024; u++; }
  return u === 0 ? `${n} B` : `${x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2)} ${units[u]}`;
}
