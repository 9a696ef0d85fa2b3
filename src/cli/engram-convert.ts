import { readFileSync } from 'node:fs';
import { configFromHf, type EngramConfig } from '../engram/config.js';
import { buildTokenMap } from '../engram/token-map.js';
import { convertTable } from '../engram/table-writer.js';
import type { TokenMap } from '../engram/types.js';
import { choice, integer, str, UsageError, type Command } from './args.js';
import { bytesText, unitProgress } from './engram-progress.js';

/** Progress is drawn for tables of at least this many rows (~256 MiB of V4.1 rows). */
const PROGRESS_MIN_ROWS = 1 << 20;

/** A file the user named, read as text; an unreadable one is a usage error naming the option. */
function readText(path: string, option: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    throw new UsageError(`--${option}: cannot read '${path}' (${(e as Error).message.replace(/, open '.*$/, '')})`);
  }
}

/**
 * The token map and the config with V′ settled: the config's V′ is the expected size of the map; a
 * config without V′ (the paper demo's) takes the map's size, so the layout's multipliers can be drawn.
 */
function settle(config: EngramConfig, tokenizerPath: string | undefined): { config: EngramConfig; tokenMap: TokenMap | undefined } {
  if (tokenizerPath === undefined) return { config, tokenMap: undefined };
  const expected = config.compressedVocabSize;
  const tokenMap = buildTokenMap(readText(tokenizerPath, 'tokenizer'), expected === undefined ? {} : { expectedSize: expected });
  return { config: expected === undefined ? { ...config, compressedVocabSize: tokenMap.size } : config, tokenMap };
}

/** `flashmla-node engram convert SHARD OUT --layer L --config config.json [--tokenizer tokenizer.json]`. */
export const engramConvert: Command = {
  name: 'engram convert',
  usage: 'SHARD OUT --layer L --config config.json [--tokenizer tokenizer.json] [--variant v4.1|paper-demo] [--json]',
  summary: 'Streams layer L\'s Engram table from a safetensors checkpoint shard into the package\'s own format\n' +
    '(packed rows, 2 MiB aligned, CRC-32C per section; docs/engram-tables.md#own-format). The own format stores\n' +
    'the layer\'s hash layout, computed from config.json (checked against the shard: rows, headDim, format).\n' +
    'With --tokenizer the token map (raw → canonical ids) is built and stored too.',
  options: {
    layer: { type: 'string', value: 'L', help: 'the Engram layer (block index) to convert (required)' },
    config: { type: 'string', value: 'FILE', help: "the model's Hugging Face config.json (required: it gives the layout)" },
    tokenizer: { type: 'string', value: 'FILE', help: 'tokenizer.json: build and store the token map (default: none stored)' },
    variant: { type: 'string', value: 'NAME', help: 'which Engram config.json describes: v4.1 (default) or paper-demo' },
    json: { type: 'boolean', help: 'print the written header as JSON' },
  },
  positionals: ['SHARD', 'OUT'],
  async run(values, [shard, out]) {
    if (values.layer === undefined) throw new UsageError('--layer L is required');
    const layerId = integer(values, 'layer', 0, 0);
    const configPath = str(values, 'config');
    if (configPath === undefined) throw new UsageError('--config is required: the own format stores the layer\'s hash layout, computed from config.json');
    const variant = choice(values, 'variant', ['v4.1', 'paper-demo'] as const, 'v4.1');
    const settled = settle(configFromHf(readText(configPath, 'config'), { variant }), str(values, 'tokenizer'));
    const progress = unitProgress(process.stderr, 'convert', 'rows', PROGRESS_MIN_ROWS);
    const t0 = performance.now();
    const file = await convertTable(shard!, out!, {
      layerId, config: settled.config, ...(settled.tokenMap !== undefined ? { tokenMap: settled.tokenMap } : {}),
      onProgress: (done, total) => progress.update(done, total),
    });
    progress.end();
    const seconds = (performance.now() - t0) / 1000;
    if (values.json === true) {
      const { layout, ...rest } = file;
      process.stdout.write(`${JSON.stringify({ ...rest, layout: { ...layout, primes: [...layout.primes], offsets: [...layout.offsets], multipliers: [...layout.multipliers].map(String) }, seconds }, null, 2)}\n`);
    } else {
      process.stdout.write([
        `wrote ${out}: layer ${file.layout.layerId}, ${file.rows.toLocaleString('en-US')} rows × ${file.rowBytes} bytes (${file.format}, headDim ${file.headDim}), ${bytesText(file.fileBytes)} in ${seconds.toFixed(1)} s`,
        `  rows CRC-32C ${file.rowsSection.crc32c ?? 'none'}; token map: ${file.tokenMap === undefined ? 'none' : `${file.tokenMap.entries} raw ids → V′ = ${file.tokenMap.size}`}; config stored`,
        `  check it with: flashmla-node engram verify ${out}`, ''].join('\n'));
    }
    return 0;
  },
};
