import { randomBytes } from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';

import { type ErrorCode, HoldfastError, errorCode, ioError } from '../errors/index.ts';
import { syncDir } from './local-storage.ts';

/**
 * Writes a small file atomically: a temp file in the same directory,
 * written with `mode` (exactly: the umask does not apply), fsynced, then
 * linked into place (exclusive: `existsCode`, default HF_STORAGE_EXISTS,
 * when the name exists) or renamed over it (replace), and the directory
 * fsynced. A reader sees the old file or the whole new one, never a part.
 * Other failures are HF_IO / HF_DISK_FULL naming the file.
 */
export async function writeFileAtomic(file: string, data: string | Uint8Array, opts: { mode: number; exclusive: boolean; existsCode?: ErrorCode }): Promise<void> {
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.tmp-${randomBytes(6).toString('hex')}`);
  try {
    const fh = await fsp.open(tmp, 'wx', opts.mode);
    try {
      await fh.writeFile(data);
      await fh.chmod(opts.mode);
      await fh.sync();
    } finally {
      await fh.close();
    }
    if (opts.exclusive) {
      try {
        await fsp.link(tmp, file);
      } catch (err) {
        if (errorCode(err) === 'EEXIST') {
          throw new HoldfastError(opts.existsCode ?? 'HF_STORAGE_EXISTS', `${file} already exists; it is not overwritten`, { cause: err });
        }
        throw err;
      }
      await fsp.unlink(tmp);
    } else {
      await fsp.rename(tmp, file);
    }
    await syncDir(dir);
  } catch (err) {
    await fsp.unlink(tmp).catch(() => undefined);
    if (err instanceof HoldfastError) throw err;
    throw ioError(`cannot write ${file}`, err);
  }
}
