import { execFile } from 'node:child_process';
import type { BuildFile } from './build-file.js';
import { loadAddon, type NativeAddon, type NativeDeviceProbe, type NativeLibrary, type NativeLibraryInfo, type NativeLoadFailure, type NativeProbe } from '../addon.js';
import type { LocatedLibrary } from './locate.js';

/** A FlashMLA build loaded into this process, with what resolved and what its runtime reports. */
export interface OpenedLibrary {
  readonly native: NativeLibrary;
  readonly located: LocatedLibrary;
  readonly info: NativeLibraryInfo;
  readonly probe: NativeProbe;
}

export type OpenResult = { readonly ok: true; readonly library: OpenedLibrary } | { readonly ok: false; readonly reason: string };

const opened = new Map<string, NativeLibrary>();

/** "12.4" from 12040. */
export function cudaVersionString(v: number | null | undefined): string | null {
  if (v === null || v === undefined || v <= 0) return null;
  return `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}`;
}

/**
 * The docs/flashmla-interface.md#head128-fallback: for each launcher with a fallback (the two
 * small-topk instantiations) whose exact name the build does not export, a defined dynamic symbol
 * that contains the stable part of its mangling (another standard library spells
 * std::conditional_t differently). Returns the alternates array the addon takes (index = launcher
 * id; empty when nothing needs one).
 */
export function alternatesFor(addon: NativeAddon, file: BuildFile): (string | null)[] {
  const missing = addon.launchers.filter((l) => l.fallback !== undefined && !file.exports.has(l.mangled));
  if (missing.length === 0) return [];
  const exported = [...file.exports];
  const out = new Array<string | null>(addon.launchers.length).fill(null);
  for (const l of missing) out[l.id] = exported.find((s) => s.includes(l.fallback!)) ?? null;
  return out;
}

/**
 * Why a located build must not be loaded at all, from its file alone, or null. Checked before
 * dlopen, in this order: it exports FlashMLA's launchers; it carries readable GPU code; it shares
 * the CUDA runtime with the binding (a statically linked runtime exports no cuda* function, and a
 * second runtime instance would not share the build's state).
 */
export function vetBuild(addon: NativeAddon, located: LocatedLibrary): string | null {
  const { file, path } = located;
  const alternates = alternatesFor(addon, file);
  const found = addon.launchers.filter((l) => file.exports.has(l.mangled) || alternates[l.id]).length;
  if (found === 0) {
    return `${path} is not a FlashMLA build (0/${addon.launchers.length} entry points): it exports none of FlashMLA's decode or prefill launchers ` +
      '(builds older than FlashMLA 082094b, 2026-01-16, have other launcher signatures)';
  }
  if (!file.fatbin.ok) return `${path} is not usable: ${file.fatbin.reason}`;
  const sharesRuntime = file.needed.some((n) => n.startsWith('libcudart.so')) || file.exports.has('cudaGetDeviceCount');
  if (located.kind === 'kernels-only' && !sharesRuntime) {
    return `${path} links the CUDA runtime statically (it NEEDs no libcudart.so and exports no cuda* function); ` +
      'flashmla-node shares the CUDA runtime of the build, so a kernels-only build must be linked with the shared runtime ' +
      "(nvcc's -cudart shared, which makes it NEED libcudart.so.<major>)";
  }
  return null;
}

/** A readable account of a failed dlopen, with what to do about it. */
export function loadFailure(located: LocatedLibrary, error: NativeLoadFailure): string {
  const { stage, path, message } = error;
  let hint = '';
  if (/libcudart/.test(message)) hint = ' (the CUDA runtime it was built against is not on the library path; add its folder to LD_LIBRARY_PATH)';
  else if (/undefined symbol: _?Py/.test(message)) hint = ' (libpython was not preloaded; is this the Python FlashMLA was built with? set FLASHMLA_PYTHON)';
  else if (located.kind === 'torch-extension' && /lib(torch|c10)/.test(message)) hint = " (torch's libraries do not match; set FLASHMLA_PYTHON to the Python FlashMLA was built with)";
  return stage === 'preload' ? `preloading ${path} failed: ${message}${hint}` : `dlopen(${path}) failed: ${message}${hint}`;
}

/**
 * Loads the located build (preloads first, docs/cuda-path.md#which-build) and asks its CUDA runtime for versions and
 * devices. A build is loaded once per process (the addon never unloads it).
 */
export function openLibrary(addon: NativeAddon, located: LocatedLibrary): OpenResult {
  let native = opened.get(located.path);
  if (native === undefined) {
    try {
      native = addon.load(located.path, located.preloads.map((p) => ({ path: p.path, global: p.global })), alternatesFor(addon, located.file));
    } catch (e) {
      const f = e as Error & Partial<NativeLoadFailure>;
      return { ok: false, reason: loadFailure(located, { stage: f.stage ?? 'library', path: f.path ?? located.path, message: f.message }) };
    }
    opened.set(located.path, native);
  }
  // Versions and devices are asked again on every open (cheap; needs no CUDA context).
  return { ok: true, library: { native, located, info: native.info(), probe: native.probe() } };
}

/** Why the CUDA runtime of this build cannot run decode here, or null when it can. */
export function runtimeProblem(lib: { readonly info: NativeLibraryInfo; readonly probe: NativeProbe }): string | null {
  const { info, probe } = lib;
  if (info.cudaMissing.length > 0) {
    return `${info.path} does not resolve the CUDA runtime functions ${info.cudaMissing.join(', ')} (is it a FlashMLA build linked against the shared libcudart?)`;
  }
  const runtime = probe.runtimeVersion ?? null;
  const driver = probe.driverVersion ?? null;
  if (driver === 0 && probe.deviceCountError !== undefined) return 'no NVIDIA driver is installed (cudaDriverGetVersion reports 0)';
  // docs/flashmla-interface.md#launcher-checks / docs/cuda-path.md#which-build: "driver version is
  // insufficient" (error 35) makes the launchers exit(1); a driver of an older CUDA major gives it.
  const olderMajor = runtime !== null && driver !== null && Math.floor(driver / 1000) < Math.floor(runtime / 1000);
  if (olderMajor || probe.deviceCountError === 35) {
    return `the NVIDIA driver (CUDA ${cudaVersionString(driver) ?? 'unknown'}) is older than the CUDA runtime ${cudaVersionString(runtime) ?? ''} this build uses; ` +
      'update the driver (CUDA 13 builds need an R580+ driver) or use a build made with an older CUDA';
  }
  const noDevice = 'no CUDA device is visible (check CUDA_VISIBLE_DEVICES and nvidia-smi)';
  if (probe.deviceCountError === 100) return noDevice;
  if (probe.deviceCountError !== undefined) return `cudaGetDeviceCount failed: ${probe.deviceCountErrorText ?? probe.deviceCountError}`;
  return (probe.deviceCount ?? 0) === 0 ? noDevice : null;
}

/** FlashMLA's kernels exist for compute capability 9.0 (sm90a) and 10.x (sm100f) only (docs/flashmla-interface.md#supported-shapes). */
export function deviceProblem(d: NativeDeviceProbe): string | null {
  if ((d.major === 9 && d.minor === 0) || d.major === 10) return null;
  return `${d.name || `device ${d.index}`} has compute capability ${d.major}.${d.minor}; FlashMLA's decode kernels run on 9.0 (Hopper) and 10.x (Blackwell) only`;
}

/** What loading a build gave: its launchers and runtime facts (and, in this process, the handle). */
export type Loaded =
  | { readonly ok: true; readonly info: NativeLibraryInfo; readonly probe: NativeProbe; readonly native?: NativeLibrary }
  | { readonly ok: false; readonly reason: string };

/** Loads a vetted build somewhere (this process, or a child) and reports what it found. */
export type Loader = (located: LocatedLibrary, alternates: (string | null)[]) => Promise<Loaded>;

// Run by `node -e` in the child: loads the addon by path, loads the build, prints one JSON line.
const CHILD_PROBE = `
const [addonPath, payload] = process.argv.slice(1);
const { path, preloads, alternates } = JSON.parse(payload);
const addon = require(addonPath);
let report;
try {
  const lib = addon.load(path, preloads, alternates);
  report = { info: lib.info(), probe: lib.probe() };
} catch (e) {
  report = { loadError: { stage: e.stage, path: e.path, message: e.message } };
}
process.stdout.write(JSON.stringify(report) + '\\n');
`;

/**
 * A Loader that loads the build in a child process (killed after `timeoutMs`): a build whose
 * constructor exits, crashes or hangs, or a driver that does, ends the child, not the caller.
 */
export function loadInChild(timeoutMs: number): Loader {
  return (located, alternates) => new Promise<Loaded>((resolve) => {
    const { path, preloads } = located;
    const addon = loadAddon();
    if (!addon.ok) return resolve({ ok: false, reason: addon.reason });
    const payload = JSON.stringify({ path, preloads: preloads.map((p) => ({ path: p.path, global: p.global })), alternates });
    execFile(process.execPath, ['-e', CHILD_PROBE, addon.path, payload], { timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 1 << 22 }, (err, stdout, stderr) => {
      const line = stdout.trim().split('\n').pop() ?? '';
      if (err) {
        const e = err as NodeJS.ErrnoException & { killed?: boolean; signal?: string | null; code?: number | string };
        const why = e.killed ? `did not finish within ${timeoutMs} ms`
          : e.signal ? `was killed by ${e.signal}` : `exited with status ${String(e.code)}`;
        const tail = stderr.trim().split('\n').slice(-3).join(' | ');
        return resolve({ ok: false, reason: `loading ${path} in a probe process failed: the process ${why}${tail ? ` (${tail})` : ''}` });
      }
      try {
        const r = JSON.parse(line) as { loadError?: NativeLoadFailure; info?: NativeLibraryInfo; probe?: NativeProbe };
        if (r.loadError) return resolve({ ok: false, reason: loadFailure(located, r.loadError) });
        resolve({ ok: true, info: r.info!, probe: r.probe! });
      } catch {
        resolve({ ok: false, reason: `the probe process printed no report (${line.slice(0, 200)})` });
      }
    });
  });
}

/**
 * How long the first in-process load waits for the child that tries the build first
 * (FLASHMLA_PROBE_TIMEOUT_MS, default 60 s: the first CUDA initialisation on a large machine is slow).
 */
export function probeTimeoutMs(): number {
  const v = Number(process.env.FLASHMLA_PROBE_TIMEOUT_MS);
  return Number.isSafeInteger(v) && v > 0 ? v : 60_000;
}
/** Child verdicts by path, size and mtime: a build is tried in a child once per process. */
const vetted = new Map<string, { key: string; reason: string | null }>();

/**
 * A Loader that loads the build into this process, as the CUDA backend does, after a child
 * process has loaded the same file without crashing, exiting or hanging (dlopen runs the build's
 * constructors, and a bad one would end this process).
 */
export const loadInProcess: Loader = async (located, alternates) => {
  const addon = loadAddon();
  if (!addon.ok) return { ok: false, reason: addon.reason };
  if (!opened.has(located.path)) {
    const key = `${located.file.size}:${located.file.mtimeMs}`;
    let verdict = vetted.get(located.path);
    if (verdict === undefined || verdict.key !== key) {
      const tried = await loadInChild(probeTimeoutMs())(located, alternates);
      verdict = { key, reason: tried.ok ? null : tried.reason };
      vetted.set(located.path, verdict);
    }
    if (verdict.reason !== null) return { ok: false, reason: verdict.reason };
  }
  const result = openLibrary(addon.addon, located);
  return result.ok ? { ok: true, info: result.library.info, probe: result.library.probe, native: result.library.native } : { ok: false, reason: result.reason };
};
