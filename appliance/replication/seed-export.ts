import fsp from 'node:fs/promises';
import path from 'node:path';

import { ioError } from '../errors/index.ts';
import { filePath, type LocalStorage, syncDir } from '../storage/index.ts';
import { localFiles } from './replicator.ts';

export const SEED_MANIFEST = 'holdfast-seed.json';

/**
 * Writes a repository's replicated files to a directory (a disk to ship to
 * the store), in the repository's own layout, and last a manifest with every
 * file's size and digest (`holdfast-seed.json`): a seed without its manifest
 * is incomplete, and `holdfast store import` refuses it. Files already on the
 * disk with the right size are kept, so an interrupted export resumes.
 */
export async function exportSeed(storage: LocalStorage, to: string, onFile?: (bytes: number) => void): Promise<{ files: number; bytes: number }> {
  const files = await localFiles(storage);
  let bytes = 0;
  try {
    await fsp.mkdir(to, { recursive: true });
    await fsp.unlink(path.join(to, SEED_MANIFEST)).catch(() => undefined);
    for (const f of files) {
      const src = filePath(storage.location, f.type, f.name);
      const dst = filePath(to, f.type, f.name);
      const st = await fsp.stat(dst).catch(() => null);
      if (st?.size !== f.size) {
        await fsp.mkdir(path.dirname(dst), { recursive: true });
        await fsp.copyFile(src, `${dst}.tmp`);
        const fh = await fsp.open(`${dst}.tmp`, 'r+');
        await fh.sync();
        await fh.close();
        await fsp.rename(`${dst}.tmp`, dst);
      }
      bytes += f.size;
      onFile?.(f.size);
    }
    const manifest = { magic: 'holdfast-seed', version: 1, created: new Date().toISOString(), files };
    await fsp.writeFile(path.join(to, `${SEED_MANIFEST}.tmp`), `${JSON.stringify(manifest)}\n`);
    const fh = await fsp.open(path.join(to, `${SEED_MANIFEST}.tmp`), 'r+');
    await fh.sync();
    await fh.close();
    await fsp.rename(path.join(to, `${SEED_MANIFEST}.tmp`), path.join(to, SEED_MANIFEST));
    await syncDir(to);
  } catch (err) {
    throw ioError(`cannot write the seed to ${to}`, err);
  }
  return { files: files.length, bytes };
}
