// The `flashmla-node engram …` commands as users run them: the compiled dist/cli/main.js in a child
// process (tests/setup/build.ts recompiles dist/ when a source is newer), on small files written here.
import { execFile } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { configFromHf } from '../../../src/engram/config.js';
import { layout } from '../../../src/engram/layout.js';
import { readTableHeader } from '../../../src/engram/table-format.js';
import type { TableInspection } from '../../../src/engram/table-inspect.js';
import { writeEngramTable } from '../../../src/engram/table-writer.js';
import { fakeLayout, syntheticTable, tempDir, writeShard } from './table-fixtures.js';

const root = join(import.meta.dirname, '..', '..', '..');
const main = join(root, 'dist', 'cli', 'main.js');

interface Run { status: number | null; stdout: string; stderr: string }

function cli(args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [main, ...args], { cwd: root, maxBuffer: 1 << 26 }, (err, stdout, stderr) => {
      resolve({ status: err ? (typeof err.code === 'number' ? err.code : null) : 0, stdout, stderr });
    });
  });
}

const dir = tempDir();
afterAll(() => rmSync(dir, { recursive: true, force: true }));

// A small V4.1-style config: layer 3, orders 2..3, 2 heads, 32 values per row, V′ 26.
const configJson = {
  text_config: {
    engram_layer_ids: [3], engram_max_ngram_size: 3, engram_n_heads: 2, engram_head_dim: 32, engram_vocab_size: 50,
    engram_compressed_vocab_size: 26, engram_pad_token_id: 2, hc_mult: 4, hidden_size: 64,
  },
};
const config = configFromHf(configJson);
const rows = layout(config)[0]!.numEmbeddings;
// Byte-level BPE over a…z then A…X: 50 raw ids, 26 canonical ones (A…X fold onto a…x).
const letters = [...'abcdefghijklmnopqrstuvwxyz', ...'ABCDEFGHIJKLMNOPQRSTUVWX'];
const tokenizerJson = { model: { type: 'BPE', vocab: Object.fromEntries(letters.map((t, i) => [t, i])), merges: [] }, decoder: { type: 'ByteLevel' }, added_tokens: [] };

const shard = join(dir, 'shard.safetensors');
const table = syntheticTable(rows, 32, 5);
table.scales.forEach((s, i) => { if (s === 0xff) table.scales[i] = 0xfe; }); // no NaN scale: a clean shard
writeShard(shard, table, 3);
const configPath = join(dir, 'config.json');
writeFileSync(configPath, JSON.stringify(configJson));
const tokenizerPath = join(dir, 'tokenizer.json');
writeFileSync(tokenizerPath, JSON.stringify(tokenizerJson));

describe('engram commands: help and usage errors', () => {
  test('the top-level help lists the group; every command has --help', async () => {
    const top = await cli(['--help']);
    for (const c of ['inspect', 'verify', 'convert', 'demo', 'bench']) {
      expect(top.stdout).toContain(`  engram ${c}`);
      const r = await cli(['engram', c, '--help']);
      expect(r.status).toBe(0);
      expect(r.stdout).toMatch(new RegExp(`^Usage: flashmla-node engram ${c}`));
    }
  });

  test.each([
    [['engram', 'inspect'], /engram inspect: expects FILE \(1 argument\), got 0/],
    [['engram', 'verify'], /engram verify: expects FILE/],
    [['engram', 'verify', 'a', 'b'], /expects FILE \(1 argument\), got 2/],
    [['engram', 'convert', 'shard'], /expects SHARD OUT \(2 arguments\), got 1/],
    [['engram', 'convert', 'a', 'b', '--config', 'c.json'], /--layer L is required/],
    [['engram', 'convert', 'a', 'b', '--layer', '3'], /--config is required/],
    [['engram', 'convert', 'a', 'b', '--layer', '-1', '--config', 'c.json'], /--layer must be/],
    [['engram', 'convert', 'a', 'b', '--layer', '3', '--config', join(dir, 'missing.json')], /--config: cannot read/],
    [['engram', 'nosuch'], /unknown command 'engram nosuch' \(commands: engram inspect, engram verify/],
    [['engram', 'demo', '--io', 'disk'], /--io must be one of auto, mmap, pread/],
    [['engram', 'demo', '--hidden', '48'], /--hidden must be a multiple of 32/],
    [['engram', 'bench', '--table-gib', '0'], /--table-gib must be a number of GiB/],
    [['engram', 'bench', '--only', 'gather,disk'], /--only must be a comma-separated list of gather, hash, prefetch/],
    [['engram', 'bench', '--rows', '0'], /--rows must be/],
    [['engram', 'bench', '--dir', join(dir, 'no-such-folder')], /--dir: '.*no-such-folder' is not a folder/],
  ])('%j exits 2 with one line', async (args, message) => {
    const r = await cli(args);
    expect(r.status).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(message);
  });

  test('a file that is not there is a FlashMLAError, exit 1', async () => {
    const r = await cli(['engram', 'inspect', join(dir, 'nothing.engram')]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^flashmla-node engram inspect: error: \[E_VALUE\] path: cannot open/);
  });
});

describe('engram inspect, convert, verify', () => {
  const out = join(dir, 'layer3.engram');

  test('inspect a shard: its tensors and the Engram table of layer 3', async () => {
    const text = await cli(['engram', 'inspect', shard]);
    expect(text.status).toBe(0);
    expect(text.stdout).toContain('safetensors checkpoint shard');
    expect(text.stdout).toContain('layers.3.engram.embed.weight');
    expect(text.stdout).toMatch(new RegExp(`^\\s*3\\s+${rows.toLocaleString('en-US')}\\s+32\\s+fp8\\s+33`, 'm'));
    const json = await cli(['engram', 'inspect', shard, '--json']);
    const r = JSON.parse(json.stdout) as TableInspection;
    expect(r.kind).toBe('safetensors');
    expect(r.tables).toEqual([{ layerId: 3, rows, headDim: 32, format: 'fp8', rowBytes: 33 }]);
    expect(r.tensors.map((t) => t.name)).toEqual(['layers.3.attn.wq.weight', 'layers.3.engram.embed.weight', 'layers.3.engram.embed.scale']);
  });

  test('convert with config and tokenizer, then inspect the own format', async () => {
    const r = await cli(['engram', 'convert', shard, out, '--layer', '3', '--config', configPath, '--tokenizer', tokenizerPath]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^wrote .*layer3.engram: layer 3, ${rows} rows × 33 bytes \\(fp8, headDim 32\\)`));
    expect(r.stdout).toContain('50 raw ids → V′ = 26');
    const f = readTableHeader(out);
    expect([f.rows, f.tokenMap?.size, f.tokenMap?.entries, f.config?.layerIds]).toEqual([rows, 26, 50, [3]]);
    const inspected = JSON.parse((await cli(['engram', 'inspect', out, '--json'])).stdout) as TableInspection;
    expect(inspected.kind).toBe('engram');
    expect(inspected.tokenMap).toEqual({ size: 26, entries: 50 });
    expect(inspected.layout?.numEmbeddings).toBe(rows);
    expect(inspected.sections.map((s) => [s.name, s.aligned, s.crc32c !== null])).toEqual([['tokenMap', true, true], ['rows', true, true]]);
    const text = await cli(['engram', 'inspect', out]);
    expect(text.stdout).toMatch(/Layout of layer 3: 4 primes \(2 orders × 2 heads\)/);
    expect(text.stdout).toContain('Token map: 50 raw ids → V′ = 26 canonical ids');
  });

  test('convert refuses a layer the shard does not hold (exit 1, FlashMLAError)', async () => {
    const r = await cli(['engram', 'convert', shard, join(dir, 'x.engram'), '--layer', '4', '--config', configPath]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/\[E_VALUE\] .*has no tensor layers\.4\.engram\.embed\.weight/);
  });

  test('verify: every checksum OK, then a flipped byte is a MISMATCH (exit 1)', async () => {
    const ok = await cli(['engram', 'verify', out]);
    expect(ok.status).toBe(0);
    expect(ok.stdout).toMatch(/^tokenMap OK/m);
    expect(ok.stdout).toMatch(/^rows {5}OK/m);
    const f = readTableHeader(out);
    const bytes = readFileSync(out);
    bytes[f.rowsSection.offset + 1000] = bytes[f.rowsSection.offset + 1000]! ^ 0x10;
    const bad = join(dir, 'flipped.engram');
    writeFileSync(bad, bytes);
    const r = await cli(['engram', 'verify', bad]);
    expect(r.status).toBe(1);
    expect(r.stdout).toMatch(/^rows {5}MISMATCH/m);
    expect(r.stdout).toMatch(/^tokenMap OK/m);
    expect(r.stdout).toMatch(/^FAIL: /m);
    const json = JSON.parse((await cli(['engram', 'verify', bad, '--json'])).stdout) as { ok: boolean; sections: { section: string; ok: boolean }[] };
    expect([json.ok, json.sections.map((s) => [s.section, s.ok])]).toEqual([false, [['tokenMap', true], ['rows', false]]]);
  });

  test('verify a shard: the header is checked, --scan-scales finds a NaN scale', async () => {
    const r = await cli(['engram', 'verify', shard]);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('no checksums');
    expect(r.stdout).toMatch(/not checked: .*weight bytes were not verified/);
    const scanned = await cli(['engram', 'verify', shard, '--scan-scales', '--json']);
    expect(scanned.status).toBe(0);
    expect((JSON.parse(scanned.stdout) as { scans: unknown[] }).scans).toEqual([{ layerId: 3, scaleBytes: rows, nanScales: 0 }]);
    const nan = syntheticTable(rows, 32, 5);
    nan.scales[7] = 0xff;
    nan.scales[9] = 0xff;
    const nanShard = join(dir, 'nan.safetensors');
    writeShard(nanShard, { ...nan, scales: nan.scales.map((s, i) => (s === 0xff && i !== 7 && i !== 9 ? 0xfe : s)) }, 3);
    const failed = await cli(['engram', 'verify', nanShard, '--scan-scales']);
    expect(failed.status).toBe(1);
    expect(failed.stdout).toContain('2 NaN (0xFF)');
  });

  test('inspect a table written with writeEngramTable (no token map, no config)', async () => {
    const l = fakeLayout(9, 100);
    const path = join(dir, 'written.engram');
    await writeEngramTable(path, { layout: l, headDim: 64, format: 'fp32', rows: [new Uint8Array(100 * 256)] });
    const r = JSON.parse((await cli(['engram', 'inspect', path, '--json'])).stdout) as TableInspection;
    expect([r.kind, r.tables, r.tokenMap, r.hasConfig]).toEqual(['engram', [{ layerId: 9, rows: 100, headDim: 64, format: 'fp32', rowBytes: 256 }], undefined, false]);
    expect((await cli(['engram', 'verify', path])).status).toBe(0);
  });
});

describe('engram demo and bench', () => {
  test('demo: every check passes (exit 0)', async () => {
    const r = await cli(['engram', 'demo', '--json']);
    const report = JSON.parse(r.stdout) as { pass: boolean; checks: { name: string; pass: boolean }[] };
    expect(report.checks.filter((c) => !c.pass)).toEqual([]);
    expect(report.checks.length).toBe(11);
    expect(r.status).toBe(0);
  });

  test('demo --io pread --hidden 64 prints PASS lines', async () => {
    const r = await cli(['engram', 'demo', '--io', 'pread', '--hidden', '64']);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('io pread');
    expect(r.stdout).toMatch(/^All 11 checks passed\.$/m);
  });

  test('bench with tiny sizes prints its three tables', async () => {
    const benchDir = join(dir, 'bench');
    (await import('node:fs')).mkdirSync(benchDir);
    const args = ['engram', 'bench', '--dir', benchDir, '--table-gib', '0.002', '--rows', '2000', '--repeats', '1', '--batch', '256',
      '--hash-tokens', '300', '--hash-runs', '1', '--steps', '3', '--warmup', '1', '--requests', '4'];
    const r = await cli(args);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^\(a\) gather: 2,000 random ids/m);
    expect(r.stdout).toMatch(/^lookup bf16 /m);
    expect(r.stdout).toMatch(/^\(b\) hash, V4.1 layout/m);
    expect(r.stdout).toMatch(/^js /m);
    expect(r.stdout).toMatch(/^\(c\) EngramStore.prefetch of a 4-request decode step \(4 tokens, 192 rows, bf16 out\)/m);
    expect(r.stdout).toMatch(/^prefetch step +[\d.]+ /m);
    expect(r.stdout).toMatch(/^hash alone +[\d.]+ /m);
    const json = JSON.parse((await cli([...args, '--json', '--only', 'gather,prefetch'])).stdout) as { gather: { results: { method: string }[] }; hash?: unknown; prefetch: { latencyMs: { p99: number }; hashMs: { p99: number } } };
    expect(json.gather.results.map((x) => x.method)).toEqual(['baseline', 'lookupRaw', 'lookup bf16', 'lookup fp32', 'lookupRawAsync ×2', 'sequential', 'PCIe Gen5 x16']);
    expect(json.hash).toBeUndefined();
    expect(json.prefetch.latencyMs.p99).toBeGreaterThan(0);
    expect(json.prefetch.hashMs.p99).toBeGreaterThan(0);
  });
});
