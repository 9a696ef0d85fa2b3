import { loadAddon, type NativeAddon, type NativeLibrary, type NativeLibraryInfo, type NativeProbe } from '../addon.js';
import { lostReason } from './device-state.js';
import type { Arch } from './host-layer.js';
import { targetsByLauncher, targetsOf } from './kernels.js';
import { alternatesFor, cudaVersionString, deviceProblem, runtimeProblem, vetBuild, type Loader } from './library.js';
import { locateFlashMla, type LibraryKind, type LibrarySource, type LocatedLibrary, type Preload } from './locate.js';
import { assess, assessByArch, type Assessment, type FeatureStatus, type Features } from './usability.js';

/** A CUDA device as the build's runtime reports it. */
export interface DeviceInfo {
  /** CUDA device ordinal. */
  readonly index: number;
  /** Device name as the runtime reports it. */
  readonly name: string;
  /** '9.0', '10.0', … */
  readonly computeCapability: string;
  /** Streaming multiprocessors. */
  readonly sms: number;
  /** Device memory, bytes. */
  readonly totalMemory: number;
  /** Whether FlashMLA has kernels for it at all (compute capability 9.0 or 10.x). */
  readonly supported: FeatureStatus;
}

/** Everything about the CUDA path: the part of `backendInfo()` that is not the reference backend. */
export interface CudaReport {
  /** Whether CUDA runs decode or prefill here (for the chosen device), and why (not). */
  readonly usable: boolean;
  readonly reason: string;
  readonly addon: { readonly ok: boolean; readonly path: string | null; readonly reason: string; readonly buildError: string | null };
  readonly library: {
    readonly ok: boolean;
    readonly path: string | null;
    readonly kind: LibraryKind | null;
    readonly source: LibrarySource | null;
    readonly reason: string;
    readonly needed: readonly string[];
    /** libpython (RTLD_GLOBAL) and torch's libraries, loaded first for a PyTorch extension. */
    readonly preloads: readonly Preload[];
    readonly python: { readonly executable: string; readonly version: string; readonly libpython: string | null; readonly torchLib: string | null } | null;
  };
  /** The GPU code the build carries (nvcc targets), for the whole file and per launcher. */
  readonly architectures: { readonly targets: readonly string[]; readonly byLauncher: Readonly<Record<string, readonly string[]>> } | null;
  readonly cuda: {
    readonly ok: boolean;
    readonly reason: string;
    readonly runtimeVersion: string | null;
    readonly driverVersion: string | null;
    readonly missingFunctions: readonly string[];
  };
  readonly devices: readonly DeviceInfo[];
  /** The device the features are reported for (and `auto` would use). */
  readonly device: number | null;
  /** Launcher key → resolved symbol, or null. */
  readonly entryPoints: Readonly<Record<string, string | null>>;
  /** Each feature on the chosen device; every one "no" with the same reason when there is no usable device. */
  readonly features: Features;
  /** What the build would provide on each architecture, whatever the devices here. */
  readonly featuresByArch: Readonly<Record<Arch, Assessment>> | null;
  /** Where the library was loaded and probed. */
  readonly probedIn: 'this process' | 'child process';
}

export interface AssessOptions {
  readonly device?: number;
  readonly library?: string;
}

/** The assessment plus, when the build was loaded in this process and is usable, what a session needs. */
export interface CudaAssessment {
  readonly report: CudaReport;
  readonly ready: { readonly addon: NativeAddon; readonly located: LocatedLibrary; readonly native: NativeLibrary; readonly info: NativeLibraryInfo; readonly probe: NativeProbe } | null;
}

const blockedFeatures = (reason: string): Features => {
  const f = { ok: false, reason };
  return { denseBf16: f, denseFp16: f, v32: f, model1: f, prefillV32: f, prefillModel1: f };
};

/**
 * Is CUDA usable here, and why not: finds the build, vets its file (launchers exported, GPU code
 * readable, shared runtime), loads it with `load`, checks runtime, driver and device, then asks
 * usability.ts which features run on the device. The only place that decides; `backendInfo`,
 * doctor and `FlashMLA.open` all call it.
 */
export async function assessCuda(options: AssessOptions, load: Loader, probedIn: CudaReport['probedIn']): Promise<CudaAssessment> {
  const addon = loadAddon();
  const addonInfo = addon.ok
    ? { ok: true, path: addon.path, reason: 'loaded', buildError: null }
    : { ok: false, path: null, reason: addon.reason, buildError: addon.buildError };
  const noCuda = (reason: string): CudaReport['cuda'] => ({ ok: false, reason, runtimeVersion: null, driverVersion: null, missingFunctions: [] });
  const refuse = (reason: string, library: CudaReport['library'], cuda: CudaReport['cuda'], rest: Partial<CudaReport> = {}): CudaAssessment => ({
    report: {
      usable: false, reason, addon: addonInfo, library, architectures: null, cuda,
      devices: [], device: null, entryPoints: {}, features: blockedFeatures(reason), featuresByArch: null, probedIn, ...rest,
    },
    ready: null,
  });
  const noLibrary = (reason: string, python: CudaReport['library']['python'] = null): CudaReport['library'] =>
    ({ ok: false, path: null, kind: null, source: null, reason, needed: [], preloads: [], python });
  if (!addon.ok) return refuse(addon.reason, noLibrary('not looked for: the native addon is not available'), noCuda('not probed: no addon'));

  const located = await locateFlashMla(options.library);
  if (!located.ok) {
    const py = located.python;
    return refuse(located.reason, noLibrary(located.reason, py && { executable: py.executable, version: py.version, libpython: py.libpython, torchLib: py.torchLib }),
      noCuda('not probed: no FlashMLA build'));
  }
  const lib = located.library;
  const py = lib.python;
  const libraryInfo = (ok: boolean, reason: string): CudaReport['library'] => ({
    ok, path: lib.path, kind: lib.kind, source: lib.source, reason, needed: lib.needed, preloads: lib.preloads,
    python: py && { executable: py.executable, version: py.version, libpython: py.libpython, torchLib: py.torchLib },
  });
  const architectures = lib.file.fatbin.ok ? { targets: targetsOf(lib.file.fatbin.entries), byLauncher: targetsByLauncher(lib.file) } : null;
  const vetoed = vetBuild(addon.addon, lib);
  if (vetoed !== null) return refuse(vetoed, libraryInfo(false, vetoed), noCuda('not probed: the build was not loaded'), { architectures });

  const loaded = await load(lib, alternatesFor(addon.addon, lib.file));
  if (!loaded.ok) return refuse(loaded.reason, libraryInfo(false, loaded.reason), noCuda('not probed: the build did not load'), { architectures });

  const { info, probe } = loaded;
  const build = { file: lib.file, launchers: info.launchers };
  const resolvedCount = Object.values(info.launchers).filter((v) => v !== null).length;
  const featuresByArch = assessByArch(build);
  const cudaProblem = runtimeProblem({ info, probe });
  const cuda = {
    ok: cudaProblem === null, reason: cudaProblem ?? 'usable',
    runtimeVersion: cudaVersionString(probe.runtimeVersion), driverVersion: cudaVersionString(probe.driverVersion), missingFunctions: info.cudaMissing,
  };
  const devices: DeviceInfo[] = (probe.devices ?? []).map((d) => {
    const problem = deviceProblem(d);
    return {
      index: d.index, name: d.name, computeCapability: `${d.major}.${d.minor}`, sms: d.sms, totalMemory: d.totalMemory,
      supported: problem === null ? { ok: true, reason: `compute capability ${d.major}.${d.minor} is supported` } : { ok: false, reason: problem },
    };
  });
  const device = options.device ?? 0;
  const dev = probe.devices?.[device];
  const common = { architectures, cuda, devices, entryPoints: info.launchers, featuresByArch };
  const notABuild = resolvedCount === 0
    ? `${lib.path} is not a FlashMLA build (0/${Object.keys(info.launchers).length} entry points resolved)` : null;
  const lost = lostReason(device);
  const blocked = notABuild ?? cudaProblem ??
    (dev === undefined ? `device ${device} does not exist (${devices.length} CUDA device(s) visible)` : deviceProblem(dev)) ??
    (lost === null ? null : `CUDA device ${device} is lost for the rest of this process; its first fault was: ${lost}`);
  if (blocked !== null) return refuse(blocked, libraryInfo(true, 'loaded'), cuda, { ...common, device: dev === undefined ? null : device });

  const onDevice = assess(build, dev!);
  const where = `${lib.path} (${lib.kind}) on device ${device} (${dev!.name}, compute capability ${dev!.major}.${dev!.minor})`;
  const report: CudaReport = {
    usable: onDevice.usable,
    reason: onDevice.usable ? `${where} ${onDevice.reason}` : onDevice.reason,
    addon: addonInfo, library: libraryInfo(true, 'loaded'), ...common, device, features: onDevice.features, probedIn,
  };
  const ready = onDevice.usable && loaded.native !== undefined ? { addon: addon.addon, located: lib, native: loaded.native, info, probe } : null;
  return { report, ready };
}
