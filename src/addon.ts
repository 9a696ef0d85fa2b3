import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FlashMLAError } from './errors.js';

/** The package root (the same relative place from src/ and dist/). */
export const PACKAGE_ROOT = fileURLToPath(new URL('../', import.meta.url));
const BUILD_ERROR_FILE = join(PACKAGE_ROOT, 'build', 'native-build-error.txt');

export interface NativeAllocation {
  readonly id: number;
  readonly address: bigint;
}

export interface NativeLibraryInfo {
  readonly path: string;
  /** Launcher key → the symbol that resolved, or null. */
  readonly launchers: Readonly<Record<string, string | null>>;
  /** CUDA runtime functions that did not resolve through the build's handle. */
  readonly cudaMissing: readonly string[];
}

export interface NativeDeviceProbe {
  readonly index: number;
  readonly name: string;
  readonly major: number;
  readonly minor: number;
  readonly sms: number;
  readonly totalMemory: number;
}

export interface NativeProbe {
  readonly error?: string;
  readonly runtimeVersion?: number | null;
  readonly driverVersion?: number | null;
  readonly deviceCount?: number;
  readonly deviceCountError?: number;
  readonly deviceCountErrorText?: string;
  readonly devices?: readonly NativeDeviceProbe[];
}

export interface NativeLibrary {
  info(): NativeLibraryInfo;
  probe(): NativeProbe;
}

/** What a failed `load` says (on the FlashMLAError it throws): which file, at which stage, dlerror's text. */
export interface NativeLoadFailure {
  readonly stage: 'preload' | 'library';
  readonly path: string;
  readonly message: string;
}

export interface NativeStart {
  readonly major: number;
  readonly minor: number;
  readonly sms: number;
  readonly freeMemory: number;
  readonly totalMemory: number;
}

export interface NativeDecodeOutcome {
  readonly schedMetaRan: boolean;
  readonly out?: NativeAllocation;
  readonly lse?: NativeAllocation;
}

/**
 * The scalar part of a decode request (binding/decode.h `DecodeRequest`), as the host layer fills it
 * (src/cuda/host-layer.ts `requestFields`).
 */
export interface NativeDecodeFields {
  readonly dense: boolean;
  readonly mainLauncher: number;
  readonly combineLauncher: number;
  readonly twice: boolean;
  readonly b: number; readonly sQ: number; readonly hQ: number; readonly hK: number; readonly dQK: number; readonly dV: number;
  readonly numSmParts: number; readonly fixedOverhead: number; readonly topk: number; readonly extraTopk: number;
  readonly scale: number; readonly scaleLog2: number; readonly causal: boolean;
  readonly numBlocks: number; readonly pageBlockSize: number; readonly extraNumBlocks: number; readonly extraPageBlockSize: number;
  readonly elemBytes: number;
  readonly qStrides: readonly [number, number, number];
  readonly regroupQ: boolean;
  readonly qReStrides: readonly [number, number, number];
  readonly kStrides: readonly [number, number, number];
  readonly blockTableStride: number;
  readonly strideKvBlock: number; readonly strideKvRow: number; readonly strideIndicesB: number; readonly strideIndicesS: number;
  readonly strideExtraKvBlock: number; readonly strideExtraKvRow: number; readonly strideExtraIndicesB: number; readonly strideExtraIndicesS: number;
  readonly outDirect: boolean;
  readonly lseDirect: boolean;
}

/** A whole decode request: the scalars, the sched-meta slot, the operands, and host output buffers (host-tensor calls). */
export interface NativeDecodeRequest extends NativeDecodeFields {
  readonly slot: number;
  /** By operand name: a device address (element 0, offset applied), or the host bytes to upload; null when absent. */
  readonly operands: Readonly<Record<string, bigint | ArrayBufferView | null>>;
  readonly hostOut: Uint16Array | undefined;
  readonly hostLse: Float32Array | undefined;
}

/** The per-instance worker of binding/engine.h. Every Promise rejects with a FlashMLAError (its code from the addon). */
export interface NativeEngine {
  start(): Promise<NativeStart>;
  malloc(bytes: number): Promise<NativeAllocation>;
  free(id: number): void;
  upload(address: bigint, data: ArrayBufferView): Promise<void>;
  download(address: bigint, data: ArrayBufferView): Promise<void>;
  pointerInfo(address: bigint): Promise<{ type: number; device: number }>;
  newSchedSlot(): number;
  freeSchedSlot(id: number): void;
  decode(request: NativeDecodeRequest): Promise<NativeDecodeOutcome>;
  dispose(): Promise<void>;
}

/**
 * Where an Engram table's rows lie in its file (binding/engram_mapping.cc checks every row against
 * the file's size before mapping it; docs/engram-native.md#mapping).
 */
export interface NativeEngramSpec {
  /** Rows in the table (0 … 2^31 − 1: row ids are int32). */
  readonly rows: number;
  /** Values per row (a multiple of 32 for 'fp8', at most 65536). */
  readonly headDim: number;
  /** 'fp8': e4m3fn weights and one e8m0 scale per 32 values; 'fp32': little-endian float32 rows. */
  readonly format: 'fp8' | 'fp32';
  /** File byte offset of row 0's weights (a safe integer; may exceed 4 GiB). */
  readonly weightOffset: number;
  /** Bytes between consecutive rows' weights (256 split, 264 packed V4.1 rows, 4·headDim fp32). */
  readonly weightStride: number;
  /** 'fp8' only: file byte offset of row 0's scales (packed: weightOffset + headDim). */
  readonly scaleOffset: number;
  /** 'fp8' only: bytes between consecutive rows' scales (8 split, 264 packed). */
  readonly scaleStride: number;
}

/**
 * A table file mapped read-only by the addon (binding/engram_mapping.cc). Every method checks its
 * arguments: a row id outside 0 … rows − 1 is a FlashMLAError E_RANGE naming `rowIds[i]`, a short
 * output E_BUFFER naming `out`, a wrong array type E_DTYPE, a call after close() E_DISPOSED; the
 * async methods reject with the same errors.
 */
export interface NativeEngramMapping {
  /** Size of the file in bytes when it was opened. */
  readonly fileBytes: number;
  /** Whether the kernel accepted MADV_HUGEPAGE for the mapping (advice only: it does not promise huge pages). */
  readonly hugePages: boolean;
  /** Packed records of rowIds into out: 'fp8' → headDim e4m3 bytes then headDim/32 e8m0 bytes per row; 'fp32' → 4·headDim bytes. */
  gatherRaw(rowIds: Int32Array, out: Uint8Array): void;
  /** Dequantised rows (exact) into out: float32 values (Float32Array) or bf16 bits rounded to nearest even (Uint16Array). */
  gather(rowIds: Int32Array, out: Float32Array | Uint16Array): void;
  /** gatherRaw on the libuv pool; rowIds are copied at the call, out is kept alive (do not transfer its buffer until the Promise settles). */
  gatherRawAsync(rowIds: Int32Array, out: Uint8Array): Promise<void>;
  /** gather on the libuv pool; rowIds are copied at the call, out is kept alive (do not transfer its buffer until the Promise settles). */
  gatherAsync(rowIds: Int32Array, out: Float32Array | Uint16Array): Promise<void>;
  /** The same bytes as gatherRaw by one plain memcpy per row region: the bench's baseline (src/bench/engram-gather.ts). */
  gatherBaseline(rowIds: Int32Array, out: Uint8Array): void;
  /** Releases the mapping (idempotent); async gathers still running keep it mapped until they end. */
  close(): void;
}

/** The whole native module (binding/addon.cc). */
export interface NativeAddon {
  /** Hands the package's error class to the addon: every error it throws or rejects with is one (once per thread). */
  setErrorClass(cls: typeof FlashMLAError): void;
  /** Loads a build (preloads first); a failed dlopen throws a FlashMLAError (E_BACKEND) carrying NativeLoadFailure. */
  load(path: string, preloads: readonly { path: string; global: boolean }[], alternates: readonly (string | null)[]): NativeLibrary;
  Engine: new (library: NativeLibrary, device: number) => NativeEngine;
  /** docs/flashmla-interface.md#mangled-names, in launcher-id order. */
  readonly launchers: readonly { id: number; key: string; mangled: string }[];
  readonly head128Fallback: string;
  readonly cudaFunctions: readonly string[];
  /**
   * Maps an Engram table file (absent from addons built before it: callers then read rows with pread).
   * `kernels` says which dequantisation runs: 'avx2-f16c', or 'portable' (SSE2 baseline; also forced by FLASHMLA_ENGRAM_ISA=portable).
   */
  readonly EngramMapping?: (new (path: string, spec: NativeEngramSpec) => NativeEngramMapping) & { readonly kernels: 'avx2-f16c' | 'portable' };
  /**
   * Engram's N-gram hash (binding/engram_hash.cc, src/engram/hash-native.ts), one instance per layout:
   * hash() writes out[t − history][layer][col] for t in [history, seq.length); seq holds canonical ids,
   * −1 for a dead token. Absent from addons built before it.
   */
  readonly EngramHasher?: new (pad: number, vocab: number, multipliers: BigInt64Array, primes: Int32Array, offsets: Int32Array,
    layers: number, order: number, heads: number) => { hash(seq: Int32Array, history: number, out: Int32Array): void };
}

export type AddonResult =
  | { readonly ok: true; readonly addon: NativeAddon; readonly path: string }
  | { readonly ok: false; readonly reason: string; readonly buildError: string | null };

let cached: AddonResult | undefined;

/** The addon compiled here, else the prebuilt one the package ships for this platform. */
const CANDIDATES = [
  join(PACKAGE_ROOT, 'build', 'Release', 'flashmla_node.node'),
  join(PACKAGE_ROOT, 'prebuilds', `${process.platform}-${process.arch}`, 'flashmla_node.node'),
];

/** Loads the native addon (compiled here, else prebuilt), once. Never throws. */
export function loadAddon(): AddonResult {
  if (cached) return cached;
  const buildError = existsSync(BUILD_ERROR_FILE) ? readFileSync(BUILD_ERROR_FILE, 'utf8').trim() : null;
  try {
    const require = createRequire(import.meta.url);
    const path = CANDIDATES.find((p) => existsSync(p));
    if (path === undefined) throw new Error('no build/Release/flashmla_node.node and no prebuilt addon for this platform');
    const addon = require(path) as NativeAddon;
    addon.setErrorClass(FlashMLAError);
    cached = { ok: true, addon, path };
  } catch (e) {
    const first = (e as Error).message.split('\n')[0];
    const reason = buildError !== null
      ? `the native addon was not built: ${buildError.split('\n')[0]} (see ${BUILD_ERROR_FILE}; fix it, then run \`npm rebuild flashmla-node\`)`
      : `the native addon could not be loaded (${first}); build it with \`npm rebuild flashmla-node\` (needs cmake and a C++ compiler)`;
    cached = { ok: false, reason, buildError };
  }
  return cached;
}

