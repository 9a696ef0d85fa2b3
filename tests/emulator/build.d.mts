/** A stand-in FlashMLA build with chosen GPU code and exports (see build.mjs). */
export interface EmulatorVariant {
  /** Library file name suffix: libflashmla_emu-<name>.so. */
  name: string;
  /** nvcc targets of every kernel (default sm_90a, sm_100f, as FlashMLA's setup.py). */
  targets?: string[];
  /** Per launcher key, targets that replace `targets`. */
  kernelTargets?: Record<string, string[]>;
  /** 'all' (default), 'no-launchers' (0/12 entry points) or 'no-runtime' (like a static CUDA runtime). */
  exports?: 'all' | 'no-launchers' | 'no-runtime';
  /** 'ok' (default), 'none' (no .nv_fatbin section) or 'corrupt' (unreadable). */
  fatbin?: 'ok' | 'none' | 'corrupt';
}
export declare function buildEmulator(variant?: EmulatorVariant): Promise<string>;
