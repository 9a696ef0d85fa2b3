// Code comments, docs and the README cite docs/ pages by stable anchors (`docs/<page>.md#<anchor>` or a
// Markdown link to `<page>.md#<anchor>`); every one must name a page that exists and an anchor on it,
// and every relative Markdown link must name a file in the repository.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';

const root = fileURLToPath(new URL('../../', import.meta.url));
const SCANNED = ['src', 'binding', 'tests', 'scripts', 'wasm', 'docs', 'examples', 'README.md', 'BENCHMARKS.md'];
const SKIPPED_DIRS = new Set(['node_modules', 'build', 'build-asan', 'dist', 'prebuilds']);
const TEXT = /\.(ts|mts|mjs|js|cc|h|md|sh|wat|txt)$/;

function files(path: string): string[] {
  if (!existsSync(path)) return [];
  if (!statSync(path).isDirectory()) return TEXT.test(path) ? [path] : [];
  return readdirSync(path).flatMap((name) => (SKIPPED_DIRS.has(name) ? [] : files(join(path, name))));
}

/** The anchors of a docs page: explicit `<a id>` and GitHub's heading slugs. */
function anchorsOf(page: string): Set<string> {
  const text = readFileSync(page, 'utf8');
  const ids = [...text.matchAll(/<a id="([^"]+)"/g)].map((m) => m[1]!);
  const slugs = [...text.matchAll(/^#+ (.+)$/gm)].map((m) => m[1]!.toLowerCase().replace(/[^a-z0-9 _-]/g, '').replace(/ /g, '-'));
  return new Set([...ids, ...slugs]);
}

it('every docs anchor and relative Markdown link cited in the repository exists', () => {
  const anchors = new Map<string, Set<string>>();
  const broken: string[] = [];
  for (const file of SCANNED.flatMap((p) => files(join(root, p)))) {
    const text = readFileSync(file, 'utf8');
    const at = relative(root, file);
    for (const m of text.matchAll(/docs\/([a-z0-9-]+\.md)#([A-Za-z0-9_-]+)/g)) {
      const page = join(root, 'docs', m[1]!);
      if (!existsSync(page)) {
        broken.push(`${at}: docs/${m[1]} does not exist`);
        continue;
      }
      if (!anchors.has(page)) anchors.set(page, anchorsOf(page));
      if (!anchors.get(page)!.has(m[2]!)) broken.push(`${at}: docs/${m[1]}#${m[2]} has no such anchor`);
    }
    if (!file.endsWith('.md')) continue;
    for (const m of text.matchAll(/\]\(([^)#\s:]+)(?:#([A-Za-z0-9_-]+))?\)/g)) {
      const target = join(dirname(file), m[1]!);
      if (!existsSync(target)) {
        broken.push(`${at}: link to ${m[1]} names no file`);
        continue;
      }
      if (m[2] === undefined || !target.endsWith('.md')) continue;
      if (!anchors.has(target)) anchors.set(target, anchorsOf(target));
      if (!anchors.get(target)!.has(m[2])) broken.push(`${at}: ${m[1]}#${m[2]} has no such anchor`);
    }
  }
  expect(broken).toEqual([]);
});
