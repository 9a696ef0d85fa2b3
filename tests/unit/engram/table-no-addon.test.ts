// Without an addon (or one built before EngramMapping), 'auto' reads with pread and 'mmap' is refused.
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it, vi } from 'vitest';

vi.mock('../../../src/addon.js', async (importOriginal) => ({
  ...(await importOriginal<typeof import('../../../src/addon.js')>()),
  loadAddon: () => ({ ok: false, reason: 'the native addon could not be loaded (test)', buildError: null }),
}));

const { EngramTable } = await import('../../../src/engram/table.js');
const { packedRows, syntheticTable, tempDir, writeShard } = await import('./table-fixtures.js');

const dir = tempDir();
afterAll(() => rmSync(dir, { recursive: true, force: true }));

it("falls back to pread under io 'auto' and refuses io 'mmap' with E_BACKEND naming options.io", () => {
  const table = syntheticTable(10, 256, 2);
  const path = join(dir, 'shard.safetensors');
  writeShard(path, table, 1);
  const t = EngramTable.open(path);
  expect(t.io).toBe('pread');
  expect(t.lookupRaw([9, 0])).toEqual(packedRows(table, [9, 0]));
  t.close();
  expect(() => EngramTable.open(path, { io: 'mmap' })).toThrow(expect.objectContaining({ code: 'E_BACKEND', argument: 'options.io' }) as Error);
});
