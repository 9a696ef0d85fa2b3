// Builds and interpreters that exit, crash, hang or ignore SIGTERM: `auto`, `backendInfo` and
// doctor must end with a reason, in bounded time, with this process alive. The in-process load
// is only tried after a child process loaded the same file.
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { backendInfo, doctorReport } from '../../src/backend-info.js';
import { FlashMLA } from '../../src/flashmla.js';
import { askPython } from '../../src/cuda/locate.js';

const dir = mkdtempSync(join(tmpdir(), 'flashmla-broken-'));
afterEach(() => {
  delete process.env.FLASHMLA_PROBE_TIMEOUT_MS;
});

/** A library that passes the file checks (a launcher symbol, the runtime, a fatbin) and misbehaves when loaded. */
function brokenBuild(name: string, constructorBody: string): string {
  const src = join(dir, `${name}.cc`);
  writeFileSync(src, [
    '#include <csignal>',
    '#include <cstdlib>',
    '#include <unistd.h>',
    'extern "C" void _ZN4smxx6decode34run_get_decoding_sched_meta_kernelER24GetDecodeSchedMetaParams() {}',
    'extern "C" int cudaGetDeviceCount(int*) { return 0; }',
    '__attribute__((used, section(".nv_fatbin"))) static const unsigned char fatbin[16] = {0x50, 0xed, 0x55, 0xba, 1, 0, 16};',
    `__attribute__((constructor)) static void misbehave() { ${constructorBody} }`,
  ].join('\n'));
  const so = join(dir, `lib${name}.so`);
  execFileSync('g++', ['-shared', '-fPIC', '-o', so, src]);
  return so;
}

it.each([
  ['exits', 'std::_Exit(3);', /exited with status 3/],
  ['segfaults', 'std::raise(SIGSEGV);', /killed by SIGSEGV/],
  ['hangs and ignores SIGTERM', 'std::signal(SIGTERM, SIG_IGN); for (;;) pause();', /did not finish within 3000 ms/],
])('a build whose constructor %s: auto and backendInfo fall back, this process lives', async (name, body, reason) => {
  process.env.FLASHMLA_PROBE_TIMEOUT_MS = '3000';
  const library = brokenBuild(name.replace(/\W+/g, '-'), body);
  const t0 = Date.now();
  const info = await backendInfo({ library });
  expect(info.backend).toBe('reference');
  expect(info.reason).toMatch(reason);
  const auto = await FlashMLA.open({ library });
  expect(auto.backend).toBe('reference');
  await expect(FlashMLA.open({ backend: 'cuda', library })).rejects.toMatchObject({ code: 'E_BACKEND' });
  expect((await doctorReport({ library, timeoutMs: 3000 })).reason).toMatch(reason);
  expect(Date.now() - t0).toBeLessThan(20_000);
}, 30_000);

it('a Python that sleeps and ignores SIGTERM is killed after 5 s and reported', async () => {
  const python = join(dir, 'python-sleepy');
  writeFileSync(python, "#!/bin/sh\ntrap '' TERM\nsleep 60\n");
  chmodSync(python, 0o755);
  const t0 = Date.now();
  const r = await askPython(python);
  expect(Date.now() - t0).toBeLessThan(10_000);
  expect(r).toMatchObject({ error: expect.stringMatching(/did not answer within 5 s and was killed/) });
}, 20_000);
