// Vitest global setup: assembles wasm/*.wat into the .wasm files the reference backend's SIMD
// tiers load (they are build outputs, not committed).
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export default function setup(): void {
  execFileSync(process.execPath, [fileURLToPath(new URL('../../scripts/build-wasm.mjs', import.meta.url))], { stdio: 'inherit' });
}
