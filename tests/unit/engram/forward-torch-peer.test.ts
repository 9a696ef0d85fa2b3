// Cross-check against real torch (Debian's CPU torch, scripts/engram-torch-peer.py): the V4.1 gate
// written as float32 torch tensor ops on bf16 inputs, and the paper demo's module with torch's own
// Linear, Conv1d (padding, dilation, groups) and SiLU (docs/engram-math.md#torch-peer). Skipped
// where /usr/bin/python3 cannot import torch.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { forwardDemo } from '../../../src/engram/forward-demo.js';
import { gate } from '../../../src/engram/gate.js';
import { calcDiff } from '../../../src/engram/oracle.js';
import { bf16ToF32, f32ToBf16 } from '../../../src/formats/bf16.js';
import { Rng } from '../../../src/harness/random.js';

const PYTHON = '/usr/bin/python3';
const PEER = fileURLToPath(new URL('../../../scripts/engram-torch-peer.py', import.meta.url));
const hasTorch = spawnSync(PYTHON, ['-c', 'import torch, numpy'], { stdio: 'ignore' }).status === 0;

const dir = mkdtempSync(join(tmpdir(), 'engram-torch-peer-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function put(name: string, data: Uint16Array | Float32Array): void {
  writeFileSync(join(dir, name), new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
}
function getF32(name: string): Float32Array {
  const b = readFileSync(join(dir, name));
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}
function getBf16(name: string): Uint16Array {
  const b = readFileSync(join(dir, name));
  return new Uint16Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}
function runPeer(meta: object): void {
  writeFileSync(join(dir, 'meta.json'), JSON.stringify(meta));
  const r = spawnSync(PYTHON, [PEER, dir], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
}

const randBf16 = (rng: Rng, n: number): Uint16Array => Uint16Array.from({ length: n }, () => f32ToBf16(rng.randn()));
const randF32 = (rng: Rng, n: number, scale = 1): Float32Array => Float32Array.from({ length: n }, () => rng.randn() * scale);

describe.skipIf(!hasTorch)('Engram math against torch (CPU)', () => {
  it.each(['copysign', 'sign'] as const)('V4.1 gate (%s): dot and gate within calc_diff 2e-10, out at least 99.9 percent bit-identical, the rest within one bf16 ulp', (sign) => {
    const [T, M, d] = [64, 4, 1024];
    const rng = new Rng(sign === 'copysign' ? 61 : 62);
    const h = randBf16(rng, T * M * d);
    const key = randBf16(rng, T * M * d);
    const value = randBf16(rng, T * d);
    const q = randBf16(rng, M * d);
    const k = randBf16(rng, M * d);
    put('h.bin', h); put('key.bin', key); put('value.bin', value); put('q.bin', q); put('k.bin', k);
    runPeer({ case: 'gate', T, M, d, eps: 1e-20, clamp: 1e-6, sign });
    const ours = gate({
      h: { dtype: 'bf16', shape: [T, M, d], data: h }, key: { dtype: 'bf16', shape: [T, M, d], data: key },
      value: { dtype: 'bf16', shape: [T, d], data: value }, qWeight: { dtype: 'bf16', shape: [M, d], data: q },
      kWeight: { dtype: 'bf16', shape: [M, d], data: k },
    }, { sign });
    const theirs = getBf16('out.bin');
    const mine = ours.out.data as Uint16Array;
    let same = 0;
    for (let i = 0; i < mine.length; i++) {
      if (mine[i] === theirs[i]) {
        same++;
        continue;
      }
      const a = bf16ToF32(mine[i]!);
      const b = bf16ToF32(theirs[i]!);
      expect(Math.abs(a - b)).toBeLessThanOrEqual(2 ** (Math.floor(Math.log2(Math.max(Math.abs(a), Math.abs(b)))) - 7));
    }
    const diffs = { dot: calcDiff(ours.dot.data, getF32('dot.bin')), gate: calcDiff(ours.gate.data, getF32('gate.bin')) };
    console.log(`gate vs torch (${sign}, T=${T} M=${M} d=${d}): ${same} of ${mine.length} outputs bit-identical; calc_diff ${JSON.stringify(diffs)}`);
    expect(same / mine.length).toBeGreaterThanOrEqual(0.999);
    expect(diffs.dot).toBeLessThan(2e-10);
    expect(diffs.gate).toBeLessThan(2e-10);
  });

  it('paper demo: Y and the gate within calc_diff 2e-10 of torch\'s Linear, RMSNorm, Conv1d and SiLU', () => {
    const [T, M, D, Ke, kernel, dilation] = [23, 4, 32, 64, 4, 3];
    const rng = new Rng(63);
    const w = Ke ** -0.5;
    const t = {
      e: randF32(rng, T * Ke), h: randF32(rng, T * M * D), wk: randF32(rng, M * D * Ke, w), bk: randF32(rng, M * D, w),
      wv: randF32(rng, D * Ke, w), bv: randF32(rng, D, w), n1: randF32(rng, M * D), n2: randF32(rng, M * D), n3: randF32(rng, M * D),
      cw: randF32(rng, M * D * kernel, 0.5),
    };
    for (const [name, data] of Object.entries(t)) put(`${name}.bin`, data);
    runPeer({ case: 'demo', T, M, D, Ke, kernel, dilation, conv_eps: 1e-5 });
    const ours = forwardDemo({
      e: { dtype: 'fp32', shape: [T, Ke], data: t.e }, h: { dtype: 'fp32', shape: [T, M, D], data: t.h },
      keyWeight: { dtype: 'fp32', shape: [M, D, Ke], data: t.wk }, keyBias: { dtype: 'fp32', shape: [M, D], data: t.bk },
      valueWeight: { dtype: 'fp32', shape: [D, Ke], data: t.wv }, valueBias: { dtype: 'fp32', shape: [D], data: t.bv },
      keyNormWeight: { dtype: 'fp32', shape: [M, D], data: t.n1 }, queryNormWeight: { dtype: 'fp32', shape: [M, D], data: t.n2 },
      convNormWeight: { dtype: 'fp32', shape: [M, D], data: t.n3 }, convWeight: { dtype: 'fp32', shape: [M * D, 1, kernel], data: t.cw },
    }, { dilation });
    const diffs = { out: calcDiff(ours.out.data, getF32('out.bin')), gate: calcDiff(ours.gate.data, getF32('gate.bin')) };
    console.log(`forwardDemo vs torch (T=${T}, M=${M}, D=${D}, Ke=${Ke}): calc_diff ${JSON.stringify(diffs)}`);
    expect(diffs.out).toBeLessThan(2e-10);
    expect(diffs.gate).toBeLessThan(2e-10);
  });
});
