// Builds tests/emulator/build/libflashmla_emu.so, the test-only stand-in for a FlashMLA build
// (DESIGN §6), when a source is newer than the library. Safe when several processes build at
// once: each compiles to its own temporary name and renames it into place.
import { execFile } from 'node:child_process';
import { mkdir, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '..', '..');
const bindingDir = join(root, 'binding');
const outDir = join(here, 'build');
const output = join(outDir, 'libflashmla_emu.so');
/** The self-test driver is a separate program, not part of the library. */
const driverSource = 'selftest.cc';
/**
 * Exports: the launchers (namespaces sm90, sm100, smxx) and the C runtime functions; everything
 * else, including std:: template instances from libstdc++ headers, stays local.
 */
const versionScript = '{\n  global:\n    cuda*;\n    _ZN4sm90*;\n    _ZN5sm100*;\n    _ZN4smxx*;\n  local:\n    *;\n};\n';

async function mtime(path) {
  try {
    return (await stat(path)).mtimeMs;
  } catch {
    return -1;
  }
}

async function librarySources() {
  const names = (await readdir(here)).filter((n) => n.endsWith('.cc') && n !== driverSource).sort();
  return names.map((n) => join(here, n));
}

async function inputs() {
  const own = (await readdir(here)).filter((n) => n.endsWith('.cc') || n.endsWith('.h')).map((n) => join(here, n));
  const binding = ['flashmla_params.h', 'cuda_runtime_abi.h'].map((n) => join(bindingDir, n));
  return [...own, ...binding, fileURLToPath(import.meta.url)];
}

/** Compiles the emulator if needed and returns the absolute path of libflashmla_emu.so. */
export async function buildEmulator() {
  const built = await mtime(output);
  const newest = Math.max(...(await Promise.all((await inputs()).map(mtime))));
  if (built >= newest) return output;
  await mkdir(outDir, { recursive: true });
  const tmp = `${output}.${process.pid}.${Date.now()}.tmp`;
  const mapFile = `${tmp}.map`;
  await writeFile(mapFile, versionScript);
  const args = [
    '-std=c++20', '-O2', '-fPIC', '-shared', '-fvisibility=hidden', '-Wall', '-Wextra',
    '-I', bindingDir, '-I', here,
    ...(await librarySources()),
    '-o', tmp, `-Wl,--version-script=${mapFile}`, '-lm', '-pthread',
  ];
  try {
    await run('g++', args, { maxBuffer: 16 * 1024 * 1024 });
    await rename(tmp, output);
    await rm(mapFile, { force: true });
  } catch (err) {
    await rm(tmp, { force: true });
    await rm(mapFile, { force: true });
    const e = /** @type {{ stderr?: string, message: string }} */ (err);
    throw new Error(`building the FlashMLA emulator failed:\n${e.stderr ?? e.message}`);
  }
  return output;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  buildEmulator().then(
    (path) => console.log(path),
    (err) => {
      console.error(err instanceof Error ? err.message : err);
      process.exit(1);
    },
  );
}
