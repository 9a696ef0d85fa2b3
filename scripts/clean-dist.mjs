#!/usr/bin/env node
// Before packing: an empty dist/, so the tarball holds only what the current sources compile to.
import { rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

rmSync(join(dirname(dirname(fileURLToPath(import.meta.url))), 'dist'), { recursive: true, force: true });
