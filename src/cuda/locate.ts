import { execFile } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { basename, isAbsolute, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { inspectBuild, type BuildFile } from './build-file.js';
import { ElfError } from './elf.js';

const run = promisify(execFile);

/** Where the FlashMLA build came from. */
export type LibrarySource = 'option' | 'env' | 'python';
/** A kernels-only build NEEDs only libcudart; a PyTorch extension NEEDs libtorch (docs/cuda-path.md#which-build). */
export type LibraryKind = 'kernels-only' | 'torch-extension';

export interface Preload {
  readonly path: string;
  /** RTLD_GLOBAL (libpython only: libtorch_python's CPython data symbols must resolve). */
  readonly global: boolean;
  readonly role: 'libpython' | 'torch';
}

/** What `python3` says about the installed packages, asked without importing torch or flash_mla. */
export interface PythonFacts {
  readonly executable: string;
  readonly version: string;
  /** The flash_mla package folder, or null when not installed. */
  readonly flashMla: string | null;
  /** Names of `cuda.*.so` files in it. */
  readonly extensions: readonly string[];
  /** `<site-packages>/torch/lib`, or null. */
  readonly torchLib: string | null;
  /** Path of the shared libpython, or null when this Python has none. */
  readonly libpython: string | null;
  readonly shared: boolean;
}

export interface LocatedLibrary {
  readonly path: string;
  readonly source: LibrarySource;
  readonly kind: LibraryKind;
  readonly needed: readonly string[];
  /** What the file says about itself (read without loading it). */
  readonly file: BuildFile;
  /** Loaded first, in this order (docs/cuda-path.md#which-build). */
  readonly preloads: readonly Preload[];
  readonly python: PythonFacts | null;
}

export type LocateResult =
  | { readonly ok: true; readonly library: LocatedLibrary }
  | { readonly ok: false; readonly reason: string; readonly python: PythonFacts | null };

// importlib.util.find_spec on top-level names does not execute the packages (docs/cuda-path.md#which-build).
const PYTHON_PROBE = `
import importlib.util, json, os, sys, sysconfig
def folder(name):
    try:
        s = importlib.util.find_spec(name)
    except Exception:
        return None
    if s is None:
        return None
    locs = list(s.submodule_search_locations or [])
    return locs[0] if locs else (os.path.dirname(s.origin) if s.origin else None)
fm = folder('flash_mla')
exts = sorted(n for n in os.listdir(fm) if n.startswith('cuda.') and n.endswith('.so')) if fm and os.path.isdir(fm) else []
t = folder('torch')
libdir = sysconfig.get_config_var('LIBDIR')
so = sysconfig.get_config_var('INSTSONAME') or sysconfig.get_config_var('LDLIBRARY')
lp = os.path.join(libdir, so) if libdir and so and '.so' in so else None
print(json.dumps({'executable': sys.executable, 'version': sys.version.split()[0], 'flashMla': fm, 'extensions': exts,
  'torchLib': os.path.join(t, 'lib') if t else None, 'libpython': lp if lp and os.path.exists(lp) else None,
  'shared': bool(sysconfig.get_config_var('Py_ENABLE_SHARED'))}))
`;

/** The interpreter used to find FlashMLA: FLASHMLA_PYTHON, else python3. */
export function pythonExecutable(): string {
  return process.env.FLASHMLA_PYTHON || 'python3';
}

/**
 * A Python that finds packages answers in well under a second (nothing is imported); one that
 * sleeps, hangs or ignores SIGTERM is killed after this long and reported.
 */
const PYTHON_TIMEOUT_MS = 5_000;
const pythonAnswers = new Map<string, Promise<PythonFacts | { error: string }>>();

/** What `python` says about flash_mla and torch; asked once per interpreter per process. */
export function askPython(python = pythonExecutable()): Promise<PythonFacts | { error: string }> {
  let answer = pythonAnswers.get(python);
  if (answer === undefined) {
    answer = queryPython(python);
    pythonAnswers.set(python, answer);
  }
  return answer;
}

async function queryPython(python: string): Promise<PythonFacts | { error: string }> {
  try {
    const { stdout } = await run(python, ['-c', PYTHON_PROBE], { timeout: PYTHON_TIMEOUT_MS, killSignal: 'SIGKILL', maxBuffer: 1 << 20 });
    return JSON.parse(stdout.trim().split('\n').pop()!) as PythonFacts;
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: string; killed?: boolean };
    if (err.code === 'ENOENT') return { error: `${python} was not found (set FLASHMLA_PYTHON to the Python that has flash_mla installed)` };
    if (err.killed) return { error: `${python} did not answer within ${PYTHON_TIMEOUT_MS / 1000} s and was killed` };
    return { error: `${python} failed: ${(err.stderr || err.message).trim().split('\n').pop()}` };
  }
}

const TORCH_EXTENSION_NAME = /^cuda\.cpython-.*\.so$/;
// docs/cuda-path.md#which-build: torch's libraries by absolute path, in this order.
const TORCH_LIBS = ['libc10.so', 'libtorch_cpu.so', 'libtorch_python.so', 'libc10_cuda.so', 'libtorch_cuda.so', 'libtorch.so'];

export function kindOf(path: string, needed: readonly string[]): LibraryKind {
  const torchNeeded = needed.some((n) => /^lib(torch|c10)/.test(n));
  return torchNeeded || TORCH_EXTENSION_NAME.test(basename(path)) ? 'torch-extension' : 'kernels-only';
}

/**
 * Finds the FlashMLA build: `library` (the API option), else FLASHMLA_LIBRARY, else the extension
 * module of the flash_mla package of `python3` (FLASHMLA_PYTHON). For a PyTorch extension it also
 * works out the preloads (shared libpython, then torch's libraries). Never loads anything.
 */
export async function locateFlashMla(library?: string): Promise<LocateResult> {
  let path: string;
  let source: LibrarySource;
  let python: PythonFacts | null = null;
  if (library !== undefined) {
    path = library;
    source = 'option';
  } else if (process.env.FLASHMLA_LIBRARY) {
    path = process.env.FLASHMLA_LIBRARY;
    source = 'env';
  } else {
    const facts = await askPython();
    if ('error' in facts) {
      return { ok: false, python: null, reason: `no FlashMLA build given (library option or FLASHMLA_LIBRARY), and ${facts.error}` };
    }
    python = facts;
    if (facts.flashMla === null) {
      return {
        ok: false, python,
        reason: `no FlashMLA build given (library option or FLASHMLA_LIBRARY), and ${facts.executable} (Python ${facts.version}) ` +
          'has no flash_mla package; install FlashMLA there, or point FLASHMLA_LIBRARY at a build',
      };
    }
    const ext = facts.extensions.find((n) => TORCH_EXTENSION_NAME.test(n)) ?? facts.extensions[0];
    if (ext === undefined) {
      return { ok: false, python, reason: `the flash_mla package at ${facts.flashMla} has no compiled cuda.*.so extension (was it built?)` };
    }
    path = join(facts.flashMla, ext);
    source = 'python';
  }
  path = isAbsolute(path) ? path : resolve(path);
  const where = source === 'option' ? 'the library option' : source === 'env' ? 'FLASHMLA_LIBRARY' : 'the flash_mla package';
  if (!existsSync(path)) return { ok: false, python, reason: `${path} (from ${where}) does not exist` };
  let file: BuildFile;
  try {
    file = inspectBuild(path);
  } catch (e) {
    const why = e instanceof ElfError ? e.message : `it cannot be read (${(e as Error).message})`;
    return { ok: false, python, reason: `${path} (from ${where}) is not a loadable shared library: ${why.replace(`${path} `, 'it ')}` };
  }
  const needed = file.needed;
  const kind = kindOf(path, needed);
  if (kind === 'kernels-only') return { ok: true, library: { path, source, kind, needed, file, preloads: [], python } };

  if (python === null) {
    const facts = await askPython();
    if ('error' in facts) return { ok: false, python: null, reason: `${path} is a PyTorch extension, which needs its Python's libpython and torch: ${facts.error}` };
    python = facts;
  }
  if (python.libpython === null) {
    return {
      ok: false, python,
      reason: `${path} is a PyTorch extension, which needs a shared libpython, but ${python.executable} (Python ${python.version}) ` +
        'was built without one (e.g. pyenv without --enable-shared). Rebuild Python with --enable-shared, set FLASHMLA_PYTHON to ' +
        'a Python that has one, or use a kernels-only FlashMLA build',
    };
  }
  if (python.torchLib === null || !existsSync(python.torchLib)) {
    return { ok: false, python, reason: `${path} is a PyTorch extension, but ${python.executable} has no torch package (set FLASHMLA_PYTHON to the Python FlashMLA was built with)` };
  }
  const present = new Set(readdirSync(python.torchLib));
  const preloads: Preload[] = [{ path: python.libpython, global: true, role: 'libpython' }];
  for (const lib of TORCH_LIBS) {
    if (present.has(lib)) preloads.push({ path: join(python.torchLib, lib), global: false, role: 'torch' });
  }
  return { ok: true, library: { path, source, kind, needed, file, preloads, python } };
}
