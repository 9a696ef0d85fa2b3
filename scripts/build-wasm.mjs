#!/usr/bin/env node
// Assembles wasm/*.wat into wasm/*.wasm with the `wabt` package (offline; the .wasm files are build
// outputs, never committed). Each source is built twice: `-simd` with `(FMA a b c)` expanded to
// f32x4.mul + f32x4.add (plain SIMD128) and `-relaxed` with f32x4.relaxed_madd (relaxed SIMD).
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import wabtInit from 'wabt';

const dir = join(dirname(fileURLToPath(import.meta.url)), '..', 'wasm');

/** Index just past the balanced s-expression or atom starting at text[i] (after spaces). */
function skipExpr(text, i) {
  while (/\s/.test(text[i])) i++;
  if (text[i] !== '(') { while (i < text.length && !/[\s()]/.test(text[i])) i++; return i; }
  for (let depth = 0; i < text.length; i++) {
    if (text[i] === '(') depth++;
    else if (text[i] === ')' && --depth === 0) return i + 1;
  }
  throw new Error('unbalanced parentheses');
}

/** Rewrites every `(FMA a b c)` (innermost first, so arguments may contain FMA too). */
function expandFma(text, relaxed) {
  for (let at = text.lastIndexOf('(FMA '); at >= 0; at = text.lastIndexOf('(FMA ')) {
    const args = [];
    let i = at + 5;
    for (let n = 0; n < 3; n++) { const end = skipExpr(text, i); args.push(text.slice(i, end).trim()); i = end; }
    const close = text.indexOf(')', i);
    const [a, b, c] = args;
    const op = relaxed ? `(f32x4.relaxed_madd ${a} ${b} ${c})` : `(f32x4.add (f32x4.mul ${a} ${b}) ${c})`;
    text = text.slice(0, at) + op + text.slice(close + 1);
  }
  return text;
}

const wabt = await wabtInit();
for (const file of readdirSync(dir).filter((f) => f.endsWith('.wat'))) {
  const source = readFileSync(join(dir, file), 'utf8');
  for (const variant of ['simd', 'relaxed']) {
    const name = file.replace(/\.wat$/, `-${variant}.wasm`);
    const mod = wabt.parseWat(name, expandFma(source, variant === 'relaxed'), { simd: true, relaxed_simd: true, bulk_memory: true });
    try {
      mod.resolveNames();
      mod.validate();
      writeFileSync(join(dir, name), Buffer.from(mod.toBinary({}).buffer));
    } finally {
      mod.destroy();
    }
  }
}
