// FlashMLA.allocatePinned: page-locked host memory of the build's runtime (the emulator's
// cudaHostAlloc), uploaded in place.
import { describe, expect, it } from 'vitest';
import { FlashMLA } from '../../src/flashmla.js';
import { useEmulatedInstance } from '../helpers/emulator.js';
import { rejectionOf } from '../helpers/errors.js';

const emu = useEmulatedInstance();

describe('allocatePinned', () => {
  it('gives a contiguous host tensor whose upload (in place) and download round-trip', async () => {
    const t = await emu.fm.allocatePinned('fp32', [3, 5]);
    expect([t.dtype, t.shape, t.data.length, t.data instanceof Float32Array]).toEqual(['fp32', [3, 5], 15, true]);
    t.data.set(Array.from({ length: 15 }, (_, i) => i * 0.5));
    const dev = await emu.fm.upload(t);
    expect(Array.from((await emu.fm.download(dev)).data)).toEqual(Array.from(t.data));
    // A strided view of it uploads the elements it covers.
    const view = await emu.fm.upload({ dtype: 'fp32', shape: [2, 2], strides: [5, 2], offset: 6, data: t.data });
    expect(Array.from((await emu.fm.download(view)).data)).toEqual([3, 4, 5.5, 6.5]);
    dev.dispose();
    view.dispose();
  });

  it('an empty shape needs no memory; bad shapes and other backends are refused', async () => {
    expect((await emu.fm.allocatePinned('bf16', [0, 4])).data.length).toBe(0);
    const shape = await rejectionOf(() => emu.fm.allocatePinned('uint8', [-1]));
    expect([shape.code, shape.argument]).toEqual(['E_SHAPE', 'shape']);
    const ref = await FlashMLA.open({ backend: 'reference' });
    expect((await rejectionOf(() => ref.allocatePinned('uint8', [4]))).code).toBe('E_BACKEND');
    await ref.dispose();
  });
});
