#!/usr/bin/env node
// `npm pack` / `npm publish` (prepack): compiles the native addon and places it in
// prebuilds/<platform>-<arch>/ so the tarball installs without a compiler where it loads. The
// addon links no CUDA and uses N-API 8 only, so one binary serves every Node.js ≥ 20 on that
// platform; its CPU kernels pick AVX-512 or AVX2 at run time. Fails (and so stops the pack) when
// the addon cannot be built: a published package must carry it.
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const built = join(root, 'build', 'Release', 'flashmla_node.node');
const r = spawnSync(process.execPath, [join(root, 'scripts', 'install-native.mjs'), '--compile'], { cwd: root, stdio: 'inherit' });
if (r.status !== 0 || !existsSync(built)) {
  console.error('prebuild: the native addon did not build; see build/native-build-error.txt');
  process.exit(1);
}
const dir = join(root, 'prebuilds', `${process.platform}-${process.arch}`);
mkdirSync(dir, { recursive: true });
copyFileSync(built, join(dir, 'flashmla_node.node'));
console.log(`prebuild: ${join(dir, 'flashmla_node.node')}`);
