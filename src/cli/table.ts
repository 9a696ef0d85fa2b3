/** Column-aligned text table; columns listed in `right` are right-aligned. */
export function formatTable(header: readonly string[], rows: readonly (readonly string[])[], right: readonly number[] = []): string {
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => (r[c] ?? '').length)));
  const line = (cells: readonly string[]): string =>
    cells.map((s, c) => (right.includes(c) ? s.padStart(widths[c]!) : s.padEnd(widths[c]!))).join('  ').trimEnd();
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

/** Milliseconds with three significant digits ("–" when absent). */
export function fmtMs(ms: number | null): string {
  if (ms === null) return '–';
  return ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms >= 1 ? ms.toFixed(2) : ms.toPrecision(2);
}

/** Errors and cos_diff: "0" or two-digit scientific. */
export function fmtErr(x: number | null | undefined): string {
  if (x === null || x === undefined) return '–';
  return x === 0 ? '0' : x.toExponential(1);
}

/** Throughput in the unit that keeps 1–4 integer digits: "512 GFLOP/s", "1.23 TFLOP/s". */
export function fmtRate(perSecond1e9: number, unit: 'FLOP/s' | 'B/s'): string {
  return perSecond1e9 >= 1000 ? `${(perSecond1e9 / 1000).toFixed(2)} T${unit}` : `${perSecond1e9.toPrecision(3)} G${unit}`;
}
