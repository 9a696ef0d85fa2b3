import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

/**
 * execArgv for a worker thread that runs TypeScript test code (Node 20 cannot load .ts by itself):
 * module hooks that resolve `./x.js` to `./x.ts` and transpile .ts with the `typescript` package.
 */
export function sourceExecArgv(): string[] {
  const ts = pathToFileURL(createRequire(import.meta.url).resolve('typescript')).href;
  const hooks = `
import ts from ${JSON.stringify(ts)};
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
export async function resolve(spec, ctx, next) {
  if (spec.startsWith('.') && spec.endsWith('.js') && ctx.parentURL?.endsWith('.ts')) {
    const url = new URL(spec.slice(0, -3) + '.ts', ctx.parentURL);
    if (existsSync(fileURLToPath(url))) return { url: url.href, shortCircuit: true };
  }
  return next(spec, ctx);
}
export async function load(url, ctx, next) {
  if (!url.endsWith('.ts')) return next(url, ctx);
  const { outputText } = ts.transpileModule(readFileSync(fileURLToPath(url), 'utf8'), {
    compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
  });
  return { format: 'module', source: outputText, shortCircuit: true };
}`;
  const register = `import { register } from 'node:module'; register(${JSON.stringify(`data:text/javascript,${encodeURIComponent(hooks)}`)});`;
  return ['--import', `data:text/javascript,${encodeURIComponent(register)}`];
}
