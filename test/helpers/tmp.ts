import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import type { Test } from 'tap';

/** A fresh directory removed when the test ends (HOLDFAST_KEEP_TMP=1 keeps it). */
export function tmpDir(t: Test, prefix = 'hf-test-'): string {
  const dir = fs.mkdtempSync(path.join(process.env.HOLDFAST_TEST_TMP ?? os.tmpdir(), prefix));
  t.teardown(() => {
    if (!process.env.HOLDFAST_KEEP_TMP) fs.rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}
