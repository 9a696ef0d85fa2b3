#!/usr/bin/env node
// CI: packs the package, installs the tarball into an empty folder, and uses it there as a user
// would: import, backendInfo() (the native tier must come from the prebuilt addon: nothing is
// compiled at install), and `npx flashmla-node demo`. Exits non-zero on any failure.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const dir = mkdtempSync(join(tmpdir(), 'flashmla-package-'));
const run = (cmd, args, cwd) => execFileSync(cmd, args, { cwd, stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });

run('npm', ['pack', '--pack-destination', dir], root);
const tarball = readdirSync(dir).find((f) => f.endsWith('.tgz'));
writeFileSync(join(dir, 'package.json'), '{ "name": "flashmla-package-check", "private": true, "type": "module" }\n');
const install = run('npm', ['install', '--no-audit', '--no-fund', `./${tarball}`], dir);
process.stdout.write(install);
const check = `
import { backendInfo, flashMlaWithKvCache } from 'flashmla-node';
const info = await backendInfo();
if (!info.addon.ok || !info.addon.path.includes('prebuilds')) throw new Error('the prebuilt addon did not load: ' + info.addon.reason);
if (!info.reference.tiers.native.ok) throw new Error('no native tier: ' + info.reference.tiers.native.reason);
console.log('installed package: addon', info.addon.path, '- reference tier', info.reference.tier, '- auto picks', info.backend);
`;
writeFileSync(join(dir, 'check.mjs'), check);
process.stdout.write(run(process.execPath, ['check.mjs'], dir));
process.stdout.write(run('npx', ['--no-install', 'flashmla-node', 'demo'], dir));
console.log(`package check passed (${tarball})`);
