import { execFile } from 'node:child_process';
import type { BackendName } from './types.js';
import { resolveThreads, resolveTier, TIERS, tierUnavailable, type Tier } from './reference/index.js';
import { loadAddon, type NativeAddon, type NativeDeviceProbe, type NativeLibraryInfo, type NativeProbe } from './native/addon.js';
import { archOf } from './native/host-layer.js';
import { alternatesFor, cudaVersionString, deviceProblem, loadFailure, openLibrary, runtimeProblem } from './native/library.js';
import { locateFlashMla, type LibraryKind, type LibrarySource, type LocatedLibrary, type Preload } from './native/locate.js';

/** A yes/no with the reason a person can act on. */
export interface FeatureStatus {
  readonly ok: boolean;
  readonly reason: string;
}

export interface DeviceInfo {
  readonly index: number;
  readonly name: string;
  readonly computeCapability: string;
  readonly sms: number;
  readonly totalMemory: number;
  /** Whether FlashMLA's kernels run on it (compute capability 9.0 or 10.x). */
  readonly supported: FeatureStatus;
}

/** What `backendInfo()` / `flashmla-node doctor` report (DESIGN §3). */
export interface BackendInfo {
  /** The backend `auto` picks, and why. */
  readonly backend: BackendName;
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
  /** Launcher key → resolved symbol, or null (SPEC §4.1). */
  readonly entryPoints: Readonly<Record<string, string | null>>;
  readonly features: {
    readonly denseBf16: FeatureStatus;
    readonly denseFp16: FeatureStatus;
    readonly v32: FeatureStatus;
    readonly model1: FeatureStatus;
    readonly sm100: FeatureStatus;
  };
  /** Where the library was loaded and probed. */
  readonly probedIn: 'this process' | 'child process';
  /** The reference backend in this process: the tile tier `auto` uses, each tier's status, default threads. */
  readonly reference: {
    readonly tier: Tier;
    readonly tiers: Readonly<Record<Tier, FeatureStatus>>;
    readonly threads: number;
  };
}

function referenceInfo(): BackendInfo['reference'] {
  const tiers = Object.fromEntries(TIERS.map((t) => {
    const why = tierUnavailable(t);
    return [t, why === null ? { ok: true, reason: 'available' } : no(why)];
  })) as Record<Tier, FeatureStatus>;
  return { tier: resolveTier(), tiers, threads: resolveThreads(undefined) };
}

export interface BackendInfoOptions {
  device?: number;
  library?: string;
}

type Probed = { ok: true; info: NativeLibraryInfo; probe: NativeProbe } | { ok: false; reason: string };

const no = (reason: string): FeatureStatus => ({ ok: false, reason });

function features(entry: Readonly<Record<string, string | null>>, dev: NativeDeviceProbe | undefined, blocked: string | null): BackendInfo['features'] {
  if (blocked !== null) {
    const f = no(blocked);
    return { denseBf16: f, denseFp16: f, v32: f, model1: f, sm100: f };
  }
  const arch = archOf(dev!);
  const has = (...keys: string[]) => keys.filter((k) => entry[k] === null || entry[k] === undefined);
  const need = (what: string, keys: string[]): FeatureStatus => {
    const missing = has(...keys, 'sched_meta');
    return missing.length === 0 ? { ok: true, reason: `${what}: ${keys.join(', ')} resolved` }
      : no(`this FlashMLA build lacks ${missing.join(', ')}` + (missing.some((k) => k.endsWith('fp16')) ? ' (built with FLASH_MLA_DISABLE_FP16)' : ''));
  };
  const cc = `${dev!.major}.${dev!.minor}`;
  const dense = (dtype: 'bf16' | 'fp16'): FeatureStatus => arch === 'sm90'
    ? need(`dense ${dtype} on sm90`, [`dense_${dtype}`, `combine_${dtype}`])
    : no(`dense decode runs only on compute capability 9.0 (Hopper); device ${dev!.index} is ${cc}`);
  const sparse = (layout: 'v32' | 'model1'): FeatureStatus => {
    const keys = arch === 'sm90' ? [`sm90_sparse_${layout}_h64`, `sm90_sparse_${layout}_h128`]
      : layout === 'v32' ? ['sm100_head64_v32'] : ['sm100_head64_model1', 'sm100_head128_model1'];
    return need(`${layout === 'v32' ? 'V3.2' : 'MODEL1'} on ${arch}`, [...keys, 'combine_bf16']);
  };
  const sm100: FeatureStatus = arch === 'sm100'
    ? need('sm100 decode', ['sm100_head64_v32', 'sm100_head64_model1', 'sm100_head128_model1', 'combine_bf16'])
    : no(`device ${dev!.index} is compute capability ${cc}; the sm100 kernels need a Blackwell (10.x) GPU`);
  return { denseBf16: dense('bf16'), denseFp16: dense('fp16'), v32: sparse('v32'), model1: sparse('model1'), sm100 };
}

async function collect(options: BackendInfoOptions, probe: (lib: LocatedLibrary, alternates: (string | null)[]) => Promise<Probed>,
  probedIn: BackendInfo['probedIn']): Promise<BackendInfo> {
  return { ...(await collectCuda(options, probe, probedIn)), reference: referenceInfo() };
}

async function collectCuda(options: BackendInfoOptions, probe: (lib: LocatedLibrary, alternates: (string | null)[]) => Promise<Probed>,
  probedIn: BackendInfo['probedIn']): Promise<Omit<BackendInfo, 'reference'>> {
  const addon = loadAddon();
  const addonInfo = addon.ok
    ? { ok: true, path: addon.path, reason: 'loaded', buildError: null }
    : { ok: false, path: null, reason: addon.reason, buildError: addon.buildError };
  const emptyCuda = (reason: string) => ({ ok: false, reason, runtimeVersion: null, driverVersion: null, missingFunctions: [] });
  const base = (reason: string, library: BackendInfo['library'], cuda: BackendInfo['cuda'], rest: Partial<BackendInfo> = {}): Omit<BackendInfo, 'reference'> => ({
    backend: 'reference', reason: `the reference backend is used: ${reason}`, addon: addonInfo, library, cuda,
    devices: [], device: null, entryPoints: {}, features: features({}, undefined, reason), probedIn, ...rest,
  });
  const noLibrary = (reason: string, python: BackendInfo['library']['python'] = null): BackendInfo['library'] =>
    ({ ok: false, path: null, kind: null, source: null, reason, needed: [], preloads: [], python });
  if (!addon.ok) return base(addon.reason, noLibrary('not looked for: the native addon is not available'), emptyCuda('not probed: no addon'));

  const located = await locateFlashMla(options.library);
  if (!located.ok) {
    const py = located.python;
    return base(located.reason, noLibrary(located.reason, py && { executable: py.executable, version: py.version, libpython: py.libpython, torchLib: py.torchLib }),
      emptyCuda('not probed: no FlashMLA build'));
  }
  const lib = located.library;
  const py = lib.python;
  const libraryInfo = (ok: boolean, reason: string): BackendInfo['library'] => ({
    ok, path: lib.path, kind: lib.kind, source: lib.source, reason, needed: lib.needed, preloads: lib.preloads,
    python: py && { executable: py.executable, version: py.version, libpython: py.libpython, torchLib: py.torchLib },
  });
  const probed = await probe(lib, alternatesFor(addon.addon, lib.path));
  if (!probed.ok) return base(probed.reason, libraryInfo(false, probed.reason), emptyCuda('not probed: the build did not load'));

  const { info, probe: p } = probed;
  const cudaProblem = runtimeProblem({ info, probe: p });
  const cuda = {
    ok: cudaProblem === null, reason: cudaProblem ?? 'usable',
    runtimeVersion: cudaVersionString(p.runtimeVersion), driverVersion: cudaVersionString(p.driverVersion), missingFunctions: info.cudaMissing,
  };
  const devices: DeviceInfo[] = (p.devices ?? []).map((d) => {
    const problem = deviceProblem(d);
    return {
      index: d.index, name: d.name, computeCapability: `${d.major}.${d.minor}`, sms: d.sms, totalMemory: d.totalMemory,
      supported: problem === null ? { ok: true, reason: `compute capability ${d.major}.${d.minor} is supported` } : no(problem),
    };
  });
  const device = options.device ?? 0;
  const dev = p.devices?.[device];
  const blocked = cudaProblem ?? (dev === undefined ? `device ${device} does not exist (${devices.length} CUDA device(s) visible)` : deviceProblem(dev));
  const feats = features(info.launchers, dev, blocked);
  const usable = blocked === null && (feats.denseBf16.ok || feats.v32.ok || feats.model1.ok);
  const reason = usable
    ? `the CUDA backend is used: ${lib.path} (${lib.kind}) on device ${device} (${dev!.name}, compute capability ${dev!.major}.${dev!.minor})`
    : `the reference backend is used: ${blocked ?? 'the FlashMLA build has no decode kernels for this device'}`;
  return {
    backend: usable ? 'cuda' : 'reference', reason, addon: addonInfo, library: libraryInfo(true, 'loaded'), cuda, devices,
    device: dev === undefined ? null : device, entryPoints: info.launchers, features: feats, probedIn,
  };
}

/**
 * Which backend `auto` picks and why: the addon, the FlashMLA build (path, kind, preloads), the
 * CUDA runtime and driver, the devices, the entry points and features. Loads the build into this
 * process (as the CUDA backend would); use `doctorReport` to probe in a child process instead.
 */
export async function backendInfo(options: BackendInfoOptions = {}): Promise<BackendInfo> {
  return collect(options, async (lib) => {
    const opened = openLibrary((loadAddon() as { addon: NativeAddon }).addon, lib);
    return opened.ok ? { ok: true, info: opened.library.info, probe: opened.library.probe } : { ok: false, reason: opened.reason };
  }, 'this process');
}

// Run by `node -e` in the child: loads the addon by path, loads the build, prints one JSON line.
const CHILD_PROBE = `
const [addonPath, payload] = process.argv.slice(1);
const { path, preloads, alternates } = JSON.parse(payload);
const addon = require(addonPath);
const lib = addon.load(path, preloads, alternates);
process.stdout.write(JSON.stringify('error' in lib ? { loadError: lib.error } : { info: lib.info(), probe: lib.probe() }) + '\\n');
`;

/**
 * `backendInfo` with the dangerous part (dlopen of the build, CUDA initialisation) in a child
 * process, so a broken build or driver cannot take the caller down; gives up after `timeoutMs`.
 */
export async function doctorReport(options: BackendInfoOptions & { timeoutMs?: number } = {}): Promise<BackendInfo> {
  const timeout = options.timeoutMs ?? 60_000;
  return collect(options, (lib, alternates) => new Promise<Probed>((resolve) => {
    const { path, preloads } = lib;
    const addon = loadAddon();
    if (!addon.ok) return resolve({ ok: false, reason: addon.reason });
    const payload = JSON.stringify({ path, preloads: preloads.map((p) => ({ path: p.path, global: p.global })), alternates });
    execFile(process.execPath, ['-e', CHILD_PROBE, addon.path, payload], { timeout, maxBuffer: 1 << 22 }, (err, stdout, stderr) => {
      const line = stdout.trim().split('\n').pop() ?? '';
      if (err) {
        const e = err as NodeJS.ErrnoException & { killed?: boolean; signal?: string | null; code?: number | string };
        const why = e.killed && e.signal === 'SIGTERM' ? `did not finish within ${timeout} ms`
          : e.signal ? `was killed by ${e.signal}` : `exited with status ${String(e.code)}`;
        const tail = stderr.trim().split('\n').slice(-3).join(' | ');
        return resolve({ ok: false, reason: `loading ${path} in a probe process failed: the process ${why}${tail ? ` (${tail})` : ''}` });
      }
      try {
        const r = JSON.parse(line) as { loadError?: { stage: 'preload' | 'library'; path: string; message: string }; info?: NativeLibraryInfo; probe?: NativeProbe };
        if (r.loadError) {
          return resolve({ ok: false, reason: loadFailure(lib, r.loadError) });
        }
        resolve({ ok: true, info: r.info!, probe: r.probe! });
      } catch {
        resolve({ ok: false, reason: `the probe process printed no report (${line.slice(0, 200)})` });
      }
    });
  }), 'child process');
}

const mark = (f: FeatureStatus): string => (f.ok ? 'yes' : `no — ${f.reason}`);

/** The `flashmla-node doctor` text. */
export function formatDoctor(info: BackendInfo): string {
  const lines: string[] = [];
  lines.push(`backend (auto): ${info.backend}`, `  ${info.reason}`, '');
  lines.push(`native addon:   ${info.addon.ok ? `yes (${info.addon.path})` : `no — ${info.addon.reason}`}`);
  const l = info.library;
  lines.push(`FlashMLA build: ${l.path ? `${l.path}` : 'none'}${l.kind ? ` [${l.kind}, from ${l.source}]` : ''}`);
  if (!l.ok) lines.push(`  ${l.reason}`);
  if (l.python) lines.push(`  python: ${l.python.executable} (${l.python.version}); libpython: ${l.python.libpython ?? 'none (no shared libpython)'}`);
  for (const p of l.preloads) lines.push(`  preload (${p.role}${p.global ? ', RTLD_GLOBAL' : ''}): ${p.path}`);
  lines.push(`CUDA runtime:   ${info.cuda.runtimeVersion ?? 'unknown'}; driver supports: ${info.cuda.driverVersion ?? 'unknown'}${info.cuda.ok ? '' : ` — ${info.cuda.reason}`}`);
  if (info.devices.length === 0) lines.push('devices:        none');
  for (const d of info.devices) {
    lines.push(`device ${d.index}:       ${d.name} (compute capability ${d.computeCapability}, ${d.sms} SMs, ${(d.totalMemory / 2 ** 30).toFixed(1)} GiB)` +
      (d.supported.ok ? '' : ` — ${d.supported.reason}`));
  }
  const entries = Object.entries(info.entryPoints);
  if (entries.length > 0) {
    lines.push(`entry points:   ${entries.filter(([, v]) => v !== null).length}/${entries.length} resolved`);
    for (const [k, v] of entries) lines.push(`  ${v !== null ? '✓' : '✗'} ${k}`);
  }
  if (!l.ok) {
    lines.push('features:       none without a FlashMLA build (see above)');
  } else {
    lines.push('features:');
    lines.push(`  dense bf16:  ${mark(info.features.denseBf16)}`);
    lines.push(`  dense fp16:  ${mark(info.features.denseFp16)}`);
    lines.push(`  V3.2 sparse: ${mark(info.features.v32)}`);
    lines.push(`  MODEL1:      ${mark(info.features.model1)}`);
    lines.push(`  sm100:       ${mark(info.features.sm100)}`);
  }
  const r = info.reference;
  lines.push(`reference:      tier ${r.tier}, ${r.threads} thread(s) by default`);
  for (const [t, st] of Object.entries(r.tiers)) lines.push(`  ${t.padEnd(8)} ${mark(st)}`);
  lines.push(`(probed in ${info.probedIn})`);
  return lines.join('\n');
}
