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
  /** The instance's cudaStream_t (made, or the caller's). */
  readonly stream: bigint;
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
  /** Preallocated device outputs (element 0), else a block of the instance's pool is used. */
  readonly outAddress?: bigint;
  readonly lseAddress?: bigint;
}

/** The scalar part of a sparse prefill request (binding/prefill.h `PrefillRequest`), as src/cuda/prefill-host-layer.ts fills it. */
export interface NativePrefillFields {
  readonly launcher: number;
  readonly sQ: number; readonly sKv: number; readonly hQ: number; readonly hKv: number; readonly dQK: number; readonly dV: number; readonly topk: number;
  readonly smScale: number; readonly smScaleLog2: number;
  /** Element strides of q (s_q, h_q), kv (s_kv, h_kv) and indices (s_q, h_kv). */
  readonly strideQS: number; readonly strideQH: number; readonly strideKvS: number; readonly strideKvH: number;
  readonly strideIndicesS: number; readonly strideIndicesH: number;
  readonly numSm: number;
}

/** A whole prefill request: the scalars, the operands and, for a host q, the host output buffers. */
export interface NativePrefillRequest extends NativePrefillFields {
  /** q, kv, indices, attnSink, topkLength: a device address (element 0), or the host bytes to upload; null when absent. */
  readonly operands: Readonly<Record<string, bigint | ArrayBufferView | null>>;
  readonly hostOut: Uint16Array | undefined;
  readonly hostMaxLogits: Float32Array | undefined;
  readonly hostLse: Float32Array | undefined;
}

/** A prefill's device outputs (blocks of the instance's pool), absent for host outputs. */
export interface NativePrefillOutcome {
  readonly out?: NativeAllocation;
  readonly maxLogits?: NativeAllocation;
  readonly lse?: NativeAllocation;
}

/** A decode request parsed once by the addon (`prepare`), launched many times. Opaque. */
export interface NativePrepared {
  readonly __prepared: unique symbol;
}

/**
 * The per-call exchange of `launch` (binding/decode.h `Mailbox`): in [slot, outAddress, lseAddress]
 * (0n: none), out [outId, outAddress, lseId, lseAddress, schedMetaRan].
 */
export const MAILBOX = { slot: 0, outAddress: 1, lseAddress: 2, outId: 3, outPtr: 4, lseId: 5, lsePtr: 6, schedMetaRan: 7, size: 8 } as const;

/** The per-instance worker of binding/engine.h. Every Promise rejects with a FlashMLAError (its code from the addon). */
export interface NativeEngine {
  /** Selects the device and makes a stream, or adopts `stream` (a cudaStream_t of that device: E_DEVICE otherwise). */
  start(stream?: bigint): Promise<NativeStart>;
  /** Resolves once the stream has completed everything issued before the call. */
  synchronize(): Promise<void>;
  /** Records a new event on the stream after everything issued so far; returns its id. */
  recordEvent(): number;
  synchronizeEvent(id: number): Promise<void>;
  destroyEvent(id: number): void;
  /** Starts capturing the stream on the calling thread (the queue must hold no stream work). */
  beginCapture(): void;
  /** Ends the capture: with keep, the instantiated graph's id; else the capture is dropped. */
  endCapture(keep: boolean): number | undefined;
  /** Issues a graph here (undefined) or behind queued work (a Promise). */
  launchGraph(id: number): Promise<void> | undefined;
  destroyGraph(id: number): void;
  malloc(bytes: number): Promise<NativeAllocation>;
  free(id: number): void;
  /** Page-locked host memory (cudaHostAlloc) as an ArrayBuffer that frees it when collected. */
  hostAlloc(bytes: number): Promise<ArrayBuffer>;
  /** `pinned`: data lies in a hostAlloc block (the copy holds the block, so it is read in place). */
  upload(address: bigint, data: ArrayBufferView, pinned?: boolean): Promise<void>;
  download(address: bigint, data: ArrayBufferView): Promise<void>;
  pointerInfo(address: bigint): Promise<{ type: number; device: number }>;
  newSchedSlot(): number;
  freeSchedSlot(id: number): void;
  decode(request: NativeDecodeRequest): Promise<NativeDecodeOutcome>;
  /** Parses a request whose operands are all device addresses and whose outputs stay on the device. */
  prepare(request: Omit<NativeDecodeRequest, 'slot'> & { slot: 0 }): NativePrepared;
  /**
   * Issues a prepared decode on the calling thread (undefined: the outcome is in the mailbox), or
   * queues it behind earlier work that has still to issue its own (a Promise, as decode's). Throws
   * a FlashMLAError when issuing here fails.
   */
  launch(prepared: NativePrepared): Promise<NativeDecodeOutcome> | undefined;
  /**
   * A sparse prefill: issued on the calling thread (the outcome) when every operand is a device
   * address and no queued work has still to issue its own, else on the worker thread (a Promise;
   * host operands are uploaded and host outputs downloaded there). Throws a FlashMLAError when
   * issuing here fails.
   */
  prefill(request: NativePrefillRequest): NativePrefillOutcome | Promise<NativePrefillOutcome>;
  /** The BigUint64Array (MAILBOX.size elements) through which launch exchanges its per-call values; given once. */
  setMailbox(mailbox: BigUint64Array): void;
  /** Bytes the instance's pool holds (blocks in use and cached). */
  pooledBytes(): number;
  /** Frees the pool's cached blocks (on the worker thread). */
  emptyCache(): Promise<void>;
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
  /** Whether huge pages were asked for and the kernel accepted MADV_HUGEPAGE (advice only: it does not promise huge pages). */
  readonly hugePages: boolean;
  /** Packed records of rowIds into out: 'fp8' → headDim e4m3 bytes then headDim/32 e8m0 bytes per row; 'fp32' → 4·headDim bytes. */
  gatherRaw(rowIds: Int32Array, out: Uint8Array): void;
  /** Dequantised rows (exact) into out: float32 values (Float32Array) or bf16 bits rounded to nearest even (Uint16Array). */
  gather(rowIds: Int32Array, out: Float32Array | Uint16Array): void;
  /** gatherRaw on the libuv pool into the addon's own memory (rowIds are copied at the call): resolves to the records. */
  gatherRawAsync(rowIds: Int32Array): Promise<ArrayBuffer>;
  /** gather on the libuv pool into the addon's own memory: resolves to float32 values ('fp32') or bf16 bits ('bf16'). */
  gatherAsync(rowIds: Int32Array, dtype: 'fp32' | 'bf16'): Promise<ArrayBuffer>;
  /**
   * On the libuv pool, straight into `out` (a view of a SharedArrayBuffer, which cannot be detached):
   * the rows of block b (rowIds[b·blockRows …]) at out's byte b·blockStride.
   */
  gatherBlocksAsync(rowIds: Int32Array, kind: 'raw' | 'fp32' | 'bf16', out: Uint8Array | Float32Array | Uint16Array, blockRows: number, blockStride: number): Promise<void>;
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
  /**
   * docs/flashmla-interface.md#mangled-names, in launcher-id order; `fallback`: the stable part of
   * a small-topk launcher's name looked for when the exact name is missing (docs/flashmla-interface.md#head128-fallback).
   */
  readonly launchers: readonly { id: number; key: string; mangled: string; fallback?: string }[];
  readonly cudaFunctions: readonly string[];
  /**
   * Maps an Engram table file (absent from addons built before it: callers then read rows with pread).
   * `kernels` says which dequantisation runs: 'avx2-f16c', or 'portable' (SSE2 baseline; also forced by FLASHMLA_ENGRAM_ISA=portable).
   */
  readonly EngramMapping?: (new (path: string, spec: NativeEngramSpec, options?: { hugePages?: boolean }) => NativeEngramMapping) & { readonly kernels: 'avx2-f16c' | 'portable' };
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

