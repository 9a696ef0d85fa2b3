import { inspectTable, type TableInspection } from '../engram/table-inspect.js';
import type { Command } from './args.js';
import { bytesText } from './engram-progress.js';
import { formatTable } from './table.js';

/** The report of inspectTable in words: tables, layout, sections, token map, tensors. */
function inspectionText(r: TableInspection): string {
  const out: string[] = [
    `${r.path}: ${r.kind === 'engram' ? 'Engram table (own format, docs/engram-tables.md#own-format)' : 'safetensors checkpoint shard'}`,
    `  ${r.fileBytes.toLocaleString('en-US')} bytes (${bytesText(r.fileBytes)}), header ${r.headerBytes.toLocaleString('en-US')} bytes` +
      (r.headerCrc32c !== undefined ? `, header CRC-32C ${r.headerCrc32c} (verified)` : ''),
    '',
  ];
  if (r.tables.length === 0) {
    out.push('Engram tables: none (no tensor named layers.{L}.engram.embed.weight of dtype F8_E4M3 or F32)', '');
  } else {
    out.push('Engram tables:', formatTable(['layer', 'rows', 'headDim', 'format', 'rowBytes', 'bytes'],
      r.tables.map((t) => [String(t.layerId), t.rows.toLocaleString('en-US'), String(t.headDim), t.format, String(t.rowBytes), bytesText(t.rows * t.rowBytes)]),
      [0, 1, 2, 4, 5]), '');
  }
  if (r.layout !== undefined) {
    const l = r.layout;
    const orders = l.multipliers.length - 1;
    out.push(`Layout of layer ${l.layerId}: ${l.primes.length} primes (${orders} orders × ${l.primes.length / orders} heads), ` +
      `Σ = ${l.numEmbeddings.toLocaleString('en-US')} rows`,
    `  primes ${l.primes[0]} … ${l.primes[l.primes.length - 1]}`,
    `  multipliers ${l.multipliers.join(' ')}`, '');
  }
  if (r.kind === 'engram') {
    out.push('Sections:', formatTable(['section', 'offset', 'length', 'CRC-32C', '2 MiB aligned'],
      r.sections.map((s) => [s.name, s.offset.toLocaleString('en-US'), s.length.toLocaleString('en-US'), s.crc32c ?? 'none recorded', s.aligned ? 'yes' : 'NO']),
      [1, 2]), '');
    out.push(`Token map: ${r.tokenMap === undefined ? 'none stored' : `${r.tokenMap.entries.toLocaleString('en-US')} raw ids → V′ = ${r.tokenMap.size.toLocaleString('en-US')} canonical ids`}`);
    out.push(`Configuration stored: ${r.hasConfig ? 'yes' : 'no'}`, '');
  }
  if (r.tensors.length > 0) {
    out.push(`Tensors (${r.tensors.length}):`, formatTable(['name', 'dtype', 'shape', 'file offset', 'bytes'],
      r.tensors.map((t) => [t.name, t.dtype, `[${t.shape.join(', ')}]`, t.fileOffset.toLocaleString('en-US'), t.byteLength.toLocaleString('en-US')]),
      [3, 4]), '');
    const meta = Object.entries(r.metadata);
    if (meta.length > 0) out.push('Metadata:', ...meta.map(([k, v]) => `  ${k}: ${v}`), '');
  }
  return out.join('\n');
}

/** `flashmla-node engram inspect FILE`: what a table file or checkpoint shard holds, from its header alone. */
export const engramInspect: Command = {
  name: 'engram inspect',
  usage: 'FILE [--json]',
  summary: 'Describes an Engram table file (own format) or a safetensors checkpoint shard from its header alone:\n' +
    'the Engram tables per layer (rows, headDim, format, rowBytes), the own format\'s layout (primes, Σ,\n' +
    'multipliers), sections (offsets, 2 MiB alignment, CRC-32C) and token map, a shard\'s tensors. No row is read.',
  options: { json: { type: 'boolean', help: 'print the inspection as JSON' } },
  positionals: ['FILE'],
  async run(values, [file]) {
    const r = inspectTable(file!);
    process.stdout.write(values.json === true ? `${JSON.stringify(r, null, 2)}\n` : inspectionText(r));
    return 0;
  },
};
