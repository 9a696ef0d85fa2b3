// The README's examples run as written against the built package (self-reference 'flashmla-node').
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const dir = fileURLToPath(new URL('../../examples/', import.meta.url));

describe('examples/', () => {
  it.each(readdirSync(dir).filter((f) => f.endsWith('.mjs')))('%s runs and its result matches the float64 oracle', (file) => {
    const out = execFileSync(process.execPath, [file], { cwd: dir, encoding: 'utf8', timeout: 60_000 });
    expect(out).toMatch(/512/);
    expect(out).toMatch(/matches the float64 oracle: true/);
  });
});

describe('README', () => {
  it('shows each example exactly as the file that runs above', () => {
    const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
    const blocks = [...readme.matchAll(/```js\n([\s\S]*?)\n```/g)].map((m) => m[1]);
    for (const file of ['dense-decode.mjs', 'sparse-model1-decode.mjs', 'sparse-prefill.mjs']) {
      expect(blocks, file).toContain(readFileSync(new URL(`../../examples/${file}`, import.meta.url), 'utf8').trimEnd());
    }
  });
});
