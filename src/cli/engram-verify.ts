import { closeSync, openSync, readSync } from 'node:fs';
import { readSafetensorsHeader } from '../engram/safetensors.js';
import { hasTableMagic, verifyTable } from '../engram/table-format.js';
import { findCheckpointTable } from '../engram/table-placement.js';
import type { Command } from './args.js';
import { unitProgress } from './engram-progress.js';

/** Progress is drawn for files of at least this many bytes. */
const PROGRESS_MIN_BYTES = 64 * 1024 * 1024;

/** The e8m0 code that means NaN (docs/engram-tables.md#v41-tensors). */
const E8M0_NAN = 0xff;

function isOwnFormat(path: string): boolean {
  const fd = openSync(path, 'r');
  try {
    const head = new Uint8Array(8);
    return readSync(fd, head, 0, 8, 0) === 8 && hasTableMagic(head);
  } finally {
    closeSync(fd);
  }
}

/** An own-format file: every recorded section checksum against the bytes on disk. */
async function verifyOwn(path: string, json: boolean): Promise<number> {
  const progress = unitProgress(process.stderr, 'verify', 'bytes', PROGRESS_MIN_BYTES);
  const r = await verifyTable(path, { onProgress: (done, total) => progress.update(done, total) });
  progress.end();
  if (json) {
    process.stdout.write(`${JSON.stringify({ path, kind: 'engram', ...r }, null, 2)}\n`);
  } else {
    const lines = [`header   OK        CRC-32C ${r.headerCrc32c}`];
    for (const s of r.sections) {
      const status = s.expected === null ? 'UNCHECKED' : s.ok ? 'OK' : 'MISMATCH';
      lines.push(`${s.section.padEnd(9)}${status.padEnd(10)}${s.expected === null ? `no checksum recorded (read: ${s.actual})` : `stored ${s.expected}, computed ${s.actual}`}`);
    }
    lines.push(r.ok ? `PASS: ${path}: every recorded checksum matches.` : `FAIL: ${path}: checksum mismatch (the file is damaged or was changed after writing).`);
    process.stdout.write(`${lines.join('\n')}\n`);
  }
  return r.ok ? 0 : 1;
}

/** Counts e8m0 NaN codes (0xFF) in `length` bytes of `path` from `offset`, in 8 MiB reads. */
function countNanScales(fd: number, offset: number, length: number, onBytes: (n: number) => void): number {
  const buf = new Uint8Array(Math.min(length, 8 * 1024 * 1024));
  let nan = 0;
  for (let at = 0; at < length;) {
    const n = readSync(fd, buf, 0, Math.min(buf.length, length - at), offset + at);
    if (n === 0) throw new Error(`unexpected end of file at byte ${offset + at}`);
    for (let i = 0; i < n; i++) if (buf[i] === E8M0_NAN) nan++;
    at += n;
    onBytes(n);
  }
  return nan;
}

/**
 * A safetensors shard has no checksums: its header is validated (offsets, dtypes, shapes, file size),
 * each Engram layer's tensors are checked as a table, and with `scanScales` every e8m0 scale byte
 * is read and NaN codes are counted (a NaN scale makes 32 values of its row NaN).
 */
function verifyShard(path: string, json: boolean, scanScales: boolean): number {
  const header = readSafetensorsHeader(path);
  const layers = header.tensors.map((t) => /^layers\.(\d+)\.engram\.embed\.weight$/.exec(t.name)).filter((m) => m !== null).map((m) => Number(m[1]));
  const tables = layers.map((l) => findCheckpointTable(header, l, 'path'));
  const scans: { layerId: number; scaleBytes: number; nanScales: number }[] = [];
  if (scanScales) {
    const total = tables.reduce((s, t) => s + (t.scale?.byteLength ?? 0), 0);
    const progress = unitProgress(process.stderr, 'scan scales', 'bytes', PROGRESS_MIN_BYTES);
    let done = 0;
    const fd = openSync(path, 'r');
    try {
      for (const t of tables) {
        if (t.scale === undefined) continue;
        const nanScales = countNanScales(fd, t.scale.fileOffset, t.scale.byteLength, (n) => progress.update((done += n), total));
        scans.push({ layerId: t.layerId, scaleBytes: t.scale.byteLength, nanScales });
      }
    } finally {
      closeSync(fd);
      progress.end();
    }
  }
  const ok = scans.every((s) => s.nanScales === 0);
  const checked = ['safetensors header (JSON, dtypes, shapes, offsets contiguous and ending at the end of the file)',
    ...tables.map((t) => `layer ${t.layerId}: ${t.weight.name} ${t.weight.dtype} [${t.weight.shape.join(', ')}]` +
      (t.scale !== undefined ? ` with ${t.scale.name} ${t.scale.dtype} [${t.scale.shape.join(', ')}]` : '') + ' form a table'),
    ...scans.map((s) => `layer ${s.layerId}: ${s.scaleBytes.toLocaleString('en-US')} e8m0 scales read, ${s.nanScales} NaN (0xFF)`)];
  const notChecked = 'the tensor data has no checksum in safetensors: weight bytes were not verified' +
    (scanScales ? '' : ' (scales not scanned; --scan-scales reads them)');
  if (json) {
    process.stdout.write(`${JSON.stringify({ path, kind: 'safetensors', ok, checked, notChecked, tables: tables.map((t) => ({ layerId: t.layerId, ...t.placement })), scans }, null, 2)}\n`);
  } else {
    process.stdout.write([`${path}: safetensors shard (no checksums)`, ...checked.map((c) => `  checked: ${c}`), `  not checked: ${notChecked}`,
      ok ? `PASS: ${path}: the header is valid${tables.length === 0 ? ' (no Engram table in it)' : ''}${scanScales ? ' and no scale is NaN' : ''}.`
        : `FAIL: ${path}: NaN scales found.`, ''].join('\n'));
  }
  return ok ? 0 : 1;
}

/** `flashmla-node engram verify FILE`: the own format's checksums, or a shard's header (and scales). */
export const engramVerify: Command = {
  name: 'engram verify',
  usage: 'FILE [--scan-scales] [--json]',
  summary: 'Own format: reads every section and compares its CRC-32C with the header\'s (OK/MISMATCH per\n' +
    'section; exit 1 on a mismatch). safetensors shard (no checksums): validates the header and the Engram\n' +
    'tensors; --scan-scales also reads every e8m0 scale and fails on NaN codes. Progress on stderr.',
  options: {
    'scan-scales': { type: 'boolean', help: 'safetensors: read the e8m0 scales and count NaN codes (0xFF) (default: header only)' },
    json: { type: 'boolean', help: 'print the result as JSON' },
  },
  positionals: ['FILE'],
  async run(values, [file]) {
    const json = values.json === true;
    // inspectTable/readTableHeader name unreadable paths; open once here for the kind.
    let own: boolean;
    try {
      own = isOwnFormat(file!);
    } catch {
      own = false; // unreadable: readSafetensorsHeader reports it as a FlashMLAError naming the path
    }
    return own ? verifyOwn(file!, json) : verifyShard(file!, json, values['scan-scales'] === true);
  },
};
