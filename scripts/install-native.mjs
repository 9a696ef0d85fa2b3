#!/usr/bin/env node
// The package's `install` script. It uses the prebuilt addon of the tarball
// (prebuilds/<platform>-<arch>/) when that loads here, and otherwise builds the addon with
// cmake-js (`--compile` always builds). It never fails the install
// (docs/architecture.md#native-addon): without the addon the package runs its reference backend,
// and backendInfo() reports the reason written to build/native-build-error.txt.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const errorFile = join(root, 'build', 'native-build-error.txt');

if (process.env.FLASHMLA_SKIP_NATIVE_BUILD === '1') {
  mkdirSync(dirname(errorFile), { recursive: true });
  writeFileSync(errorFile, 'the native build was skipped (FLASHMLA_SKIP_NATIVE_BUILD=1); run `npm rebuild flashmla-node` to build it\n');
  console.log('flashmla-node: native addon build skipped (FLASHMLA_SKIP_NATIVE_BUILD=1); the reference backend will be used.');
  process.exit(0);
}

const prebuilt = join(root, 'prebuilds', `${process.platform}-${process.arch}`, 'flashmla_node.node');
if (!process.argv.includes('--compile') && existsSync(prebuilt)) {
  // Loaded in a child: a binary that does not fit this machine must not end the install.
  const probe = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(prebuilt)})`], { encoding: 'utf8' });
  if (probe.status === 0) {
    rmSync(errorFile, { force: true });
    console.log(`flashmla-node: using the prebuilt native addon (${process.platform}-${process.arch}).`);
    process.exit(0);
  }
  console.warn(`flashmla-node: the prebuilt addon does not load here (${(probe.stderr || '').trim().split('\n')[0]}); building it.`);
}

let cmakeJs;
try {
  cmakeJs = createRequire(import.meta.url).resolve('cmake-js/bin/cmake-js');
} catch (e) {
  fail(`cmake-js is not installed (${e.message})`);
}

const result = spawnSync(process.execPath, [cmakeJs, 'compile', '--directory', root], {
  cwd: root,
  encoding: 'utf8',
  stdio: ['ignore', 'pipe', 'pipe'],
});
if (result.error) fail(`cmake-js could not run: ${result.error.message}`);
if (result.status !== 0) {
  const log = `${result.stdout ?? ''}\n${result.stderr ?? ''}`;
  const lines = log.split('\n').filter((l) => /error|not found|could not/i.test(l)).slice(0, 12);
  fail(`cmake-js compile exited with status ${result.status}${lines.length ? `: ${lines.join('\n')}` : ''}\n\nFull log:\n${log}`);
}
rmSync(errorFile, { force: true });
console.log('flashmla-node: native addon built.');

function fail(reason) {
  mkdirSync(dirname(errorFile), { recursive: true });
  writeFileSync(errorFile, `${reason}\n`);
  console.warn(`flashmla-node: native addon not built (${reason.split('\n')[0]}); the reference backend will be used. Details: ${errorFile}`);
  process.exit(0);
}
