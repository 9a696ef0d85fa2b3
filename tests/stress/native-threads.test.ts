// Worker threads that hold CUDA instances and die with work in flight (worker.terminate(), or
// process.exit() inside the worker): the process survives and exits normally. Run in a child
// process, since a failure here is an abort of the whole process.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { beforeAll, expect, it } from 'vitest';
import { buildEmulator } from '../emulator/build.mjs';

const script = fileURLToPath(new URL('../fixtures/terminate-workers.mjs', import.meta.url));
let library: string;
beforeAll(async () => {
  library = await buildEmulator();
});

it.each(['terminate', 'exit'])('20 workers ended by %s while copies and decodes complete', (mode) => {
  const r = spawnSync(process.execPath, [script, library, mode, '20'], {
    encoding: 'utf8', timeout: 120_000, env: { ...process.env, FLASHMLA_EMU_ARCH: 'sm90', FLASHMLA_EMU_MODE: 'noop' },
  });
  expect(r.signal, r.stderr).toBeNull();
  expect(r.status, r.stderr).toBe(0);
  expect(r.stdout).toMatch(/20 workers ended, process alive/);
}, 150_000);
