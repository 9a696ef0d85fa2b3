import { FlashMLAError } from '../errors.js';
import { JsWorkspace } from './tile-js.js';
import { NativeWorkspace, nativeTileApi, type CpuTileApi } from './tile-native.js';
import { WasmWorkspace, wasmModule } from './tile-wasm.js';
import type { Workspace } from './workspace.js';

/**
 * Implementation tiers of the reference backend's tile loops, fastest first: C++ in the native
 * addon (AVX-512 or AVX2 + FMA, binding/cpu_kernels.cc), WebAssembly with relaxed-SIMD FMA, plain
 * WebAssembly SIMD128, plain TypeScript. All give FlashMLA's results within FlashMLA's tolerances;
 * they differ in rounding (FMA, summation order, exp2 polynomial), not in semantics.
 */
export type Tier = 'native' | 'relaxed' | 'simd' | 'js';
export const TIERS: readonly Tier[] = ['native', 'relaxed', 'simd', 'js'];

/** Environment variable that forces a tier (tests, benchmarks). */
export const TIER_ENV = 'FLASHMLA_REFERENCE_TIER';

/** A tier's workspaces, one per (rows, dim, dv), created on first use and kept. */
export interface TileKernels {
  readonly name: Tier;
  workspace(rows: number, dim: number, dv: number): Workspace;
}

function kernelsOf(name: Tier, create: (rows: number, dim: number, dv: number) => Workspace): TileKernels {
  const cache = new Map<string, Workspace>();
  return {
    name,
    workspace(rows, dim, dv) {
      const key = `${rows}x${dim}x${dv}`;
      let ws = cache.get(key);
      if (!ws) cache.set(key, (ws = create(rows, dim, dv)));
      return ws;
    },
  };
}

export const jsKernels: TileKernels = kernelsOf('js', (r, d, v) => new JsWorkspace(r, d, v));
const compiledKernels = new Map<Tier, TileKernels>();

/** Why `tier` cannot run in this process, or null when it can. */
export function tierUnavailable(tier: Tier): string | null {
  if (tier === 'js') return null;
  if (tier === 'native') {
    const api = nativeTileApi();
    return typeof api === 'string' ? `reference tier native: ${api}` : null;
  }
  if (wasmModule(tier) !== null) return null;
  return tier === 'relaxed'
    ? 'reference tier relaxed needs relaxed SIMD (Node 20: --experimental-wasm-relaxed-simd) and wasm/tile-relaxed.wasm (npm run build)'
    : `reference tier ${tier} needs wasm/tile-${tier}.wasm (npm run build) and WebAssembly SIMD`;
}

/** Whether `tier` can run in this process. */
export function tierAvailable(tier: Tier): boolean {
  return tierUnavailable(tier) === null;
}

/** The kernels of `tier`; E_BACKEND when this runtime (or this build) lacks it. */
export function kernelsFor(tier: Tier): TileKernels {
  if (tier === 'js') return jsKernels;
  let k = compiledKernels.get(tier);
  if (!k) {
    const why = tierUnavailable(tier);
    if (why !== null) throw new FlashMLAError('E_BACKEND', why, 'tier');
    if (tier === 'native') {
      const api = nativeTileApi() as CpuTileApi;
      k = kernelsOf(tier, (r, d, v) => new NativeWorkspace(api, r, d, v));
    } else {
      const module = wasmModule(tier)!;
      k = kernelsOf(tier, (r, d, v) => new WasmWorkspace(module, r, d, v));
    }
    compiledKernels.set(tier, k);
  }
  return k;
}

/**
 * The tier to run: `requested` (an option), else $FLASHMLA_REFERENCE_TIER, else the fastest
 * available. A name that is not a tier is E_VALUE naming where it came from.
 */
export function resolveTier(requested?: string): Tier {
  const [value, name] = requested !== undefined ? [requested, 'options.tier'] : [process.env[TIER_ENV] || undefined, TIER_ENV];
  if (value === undefined) return TIERS.find(tierAvailable)!;
  if (!(TIERS as readonly string[]).includes(value)) {
    throw new FlashMLAError('E_VALUE', `${name} must be one of ${TIERS.join(', ')}, got ${value}`, name);
  }
  return value as Tier;
}
