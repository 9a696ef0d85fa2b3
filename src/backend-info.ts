import type { BackendName } from './types.js';
import { resolveThreads, resolveTier, TIERS, tierUnavailable, type Tier } from './reference/index.js';
import { assessCuda, type CudaReport } from './cuda/assess.js';
import { loadInChild, loadInProcess, probeTimeoutMs } from './cuda/library.js';
import { FEATURE_LABELS, type FeatureName, type FeatureStatus } from './cuda/usability.js';
import { PREFILL_LAUNCHERS } from './cuda/prefill-host-layer.js';

export type { DeviceInfo } from './cuda/assess.js';
export type { FeatureStatus } from './cuda/usability.js';

/** What `backendInfo()` / `flashmla-node doctor` report. */
export interface BackendInfo extends Omit<CudaReport, 'usable'> {
  /** The backend `auto` picks, and why. */
  readonly backend: BackendName;
  /** Why `auto` picks it (a sentence; for the reference, why CUDA is not usable). */
  readonly reason: string;
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
    return [t, why === null ? { ok: true, reason: 'available' } : { ok: false, reason: why }];
  })) as Record<Tier, FeatureStatus>;
  return { tier: resolveTier(), tiers, threads: resolveThreads(undefined) };
}

/** What `backendInfo` and `doctorReport` look at. */
export interface BackendInfoOptions {
  /** CUDA device to report features for (default 0). */
  device?: number;
  /** FlashMLA build to inspect (default: FLASHMLA_LIBRARY, else the installed flash_mla package). */
  library?: string;
}

function withReference({ usable, ...report }: CudaReport): BackendInfo {
  return {
    ...report,
    backend: usable ? 'cuda' : 'reference',
    reason: usable ? `the CUDA backend is used: ${report.reason}` : `the reference backend is used: ${report.reason}`,
    reference: referenceInfo(),
  };
}

/**
 * Which backend `auto` picks and why: the addon, the FlashMLA build (path, kind, preloads, GPU
 * code per launcher), the CUDA runtime and driver, the devices, the entry points and features.
 * Loads the build into this process (as the CUDA backend would); use `doctorReport` to probe in a
 * child process instead.
 */
export async function backendInfo(options: BackendInfoOptions = {}): Promise<BackendInfo> {
  return withReference((await assessCuda(options, loadInProcess, 'this process')).report);
}

/**
 * `backendInfo` with the dangerous part (dlopen of the build, CUDA initialisation) in a child
 * process, so a broken build or driver cannot take the caller down; gives up after `timeoutMs`
 * (default FLASHMLA_PROBE_TIMEOUT_MS, else 60 s) and kills the child.
 */
export async function doctorReport(options: BackendInfoOptions & { timeoutMs?: number } = {}): Promise<BackendInfo> {
  return withReference((await assessCuda(options, loadInChild(options.timeoutMs ?? probeTimeoutMs()), 'child process')).report);
}

const mark = (f: FeatureStatus): string => (f.ok ? (f.reason === 'available' ? 'yes' : `yes (${f.reason})`) : `no — ${f.reason}`);

/** The `flashmla-node doctor` text: each reason said once, where it applies. */
export function formatDoctor(info: BackendInfo): string {
  const lines: string[] = [];
  lines.push(`backend (auto): ${info.backend}`, `  ${info.reason}`, '');
  lines.push(`native addon:   ${info.addon.ok ? `yes (${info.addon.path})` : `no — ${info.addon.reason}`}`);
  const l = info.library;
  lines.push(`FlashMLA build: ${l.path ? `${l.path}` : 'none'}${l.kind ? ` [${l.kind}, from ${l.source}]` : ''}`);
  if (!l.ok && l.reason !== info.reason.replace(/^the reference backend is used: /, '')) lines.push(`  ${l.reason}`);
  if (l.python) lines.push(`  python: ${l.python.executable} (${l.python.version}); libpython: ${l.python.libpython ?? 'none (no shared libpython)'}`);
  for (const p of l.preloads) lines.push(`  preload (${p.role}${p.global ? ', RTLD_GLOBAL' : ''}): ${p.path}`);
  if (info.architectures !== null) lines.push(`GPU code:       ${info.architectures.targets.join(', ') || 'none'}`);
  if (l.ok) {
    lines.push(`CUDA runtime:   ${info.cuda.runtimeVersion ?? 'unknown'}; driver supports: ${info.cuda.driverVersion ?? 'unknown'}${info.cuda.ok ? '' : ` — ${info.cuda.reason}`}`);
    if (info.devices.length === 0) lines.push('devices:        none');
  }
  for (const d of info.devices) {
    lines.push(`device ${d.index}:       ${d.name} (compute capability ${d.computeCapability}, ${d.sms} SMs, ${(d.totalMemory / 2 ** 30).toFixed(1)} GiB)` +
      (d.supported.ok ? '' : ` — ${d.supported.reason}`));
  }
  const entries = Object.entries(info.entryPoints);
  if (entries.length > 0) {
    // Decode and sparse prefill counted apart: a decode-only build (FlashMLA's decode units alone) is common.
    const resolved = (prefill: boolean): string => {
      const part = entries.filter(([k]) => PREFILL_LAUNCHERS.includes(k) === prefill);
      return `${part.filter(([, v]) => v !== null).length}/${part.length} resolved`;
    };
    lines.push(`entry points:   decode ${resolved(false)}, prefill ${resolved(true)}`);
    const code = info.architectures?.byLauncher ?? {};
    for (const [k, v] of entries) lines.push(`  ${v !== null ? '✓' : '✗'} ${k.padEnd(26)}${code[k] ? ` ${code[k]!.join(', ') || 'no GPU code'}` : ''}`);
  }
  const names = Object.keys(FEATURE_LABELS) as FeatureName[];
  if (info.device !== null && info.backend === 'cuda') {
    lines.push(`features on device ${info.device}:`);
    for (const f of names) lines.push(`  ${FEATURE_LABELS[f].padEnd(14)} ${mark(info.features[f])}`);
  } else if (info.device !== null) {
    lines.push(`features on device ${info.device}: none (see above)`);
  }
  if (info.featuresByArch !== null) {
    lines.push('features this build provides, per architecture:');
    for (const [arch, a] of Object.entries(info.featuresByArch)) {
      if (!a.usable) {
        lines.push(`  ${arch}: none — ${a.reason}`);
        continue;
      }
      lines.push(`  ${arch}:`);
      for (const f of names) lines.push(`    ${FEATURE_LABELS[f].padEnd(14)} ${mark(a.features[f])}`);
    }
  }
  const r = info.reference;
  lines.push(`reference:      tier ${r.tier}, ${r.threads} thread(s) by default`);
  for (const [t, st] of Object.entries(r.tiers)) lines.push(`  ${t.padEnd(8)} ${mark(st)}`);
  lines.push(`(probed in ${info.probedIn})`);
  return lines.join('\n');
}
