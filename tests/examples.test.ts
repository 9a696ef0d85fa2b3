// The README's examples run as written against the built package (self-reference 'flashmla-node').
import { execFileSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const dir = fileURLToPath(new URL('../examples/', import.meta.url));

describe('examples/', () => {
  it.each(readdirSync(dir).filter((f) => f.endsWith('.mjs')))('%s runs and its result matches the float64 oracle', (file) => {
    const out = execFileSync(process.execPath, [file], { cwd: dir, encoding: 'utf8', timeout: 60_000 });
    expect(out).toMatch(/512/);
    expect(out).toMatch(/matches the float64 oracle: true/);
  });
});
