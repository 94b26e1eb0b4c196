import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';

import { HoldfastError, errorCode, ioError } from '../../appliance/errors/index.ts';
import { syncDir, writeFileAtomic as writeAtomic } from '../../appliance/storage/index.ts';

export { syncDir };

/** storage's writeFileAtomic; an exclusive write that finds the name taken is HF_REPO_EXISTS. */
export function writeFileAtomic(file: string, data: string | Uint8Array, opts: { mode: number; exclusive: boolean }): Promise<void> {
  return writeAtomic(file, data, { ...opts, existsCode: 'HF_REPO_EXISTS' });
}

/** What copyFileAtomic copied: the bytes' length and digests (hex), taken from the bytes written. */
export interface CopiedFile {
  file: string;
  length: number;
  sha256: string;
  sha512: string;
}

/**
 * Copies `src` into `dir` atomically under a name chosen from the digests of
 * the bytes copied (`nameFor`), so the name always matches what is on disk
 * even if `src` changes while it is read: temp → fsync → rename → fsync dir.
 * When a file of that name exists already it holds the same bytes (the name
 * carries the sha256) and is kept.
 */
export async function copyFileAtomic(src: string, dir: string, nameFor: (digest: { sha256: string; length: number }) => string, mode = 0o644): Promise<CopiedFile> {
  await fsp.mkdir(dir, { recursive: true }).catch((err: unknown) => { throw ioError(`cannot create ${dir}`, err); });
  const tmp = tempName(path.join(dir, 'import'));
  try {
    const sha256 = createHash('sha256');
    const sha512 = createHash('sha512');
    let length = 0;
    const fh = await fsp.open(tmp, 'wx', mode);
    try {
      for await (const chunk of createReadStream(src) as AsyncIterable<Buffer>) {
        sha256.update(chunk);
        sha512.update(chunk);
        length += chunk.length;
        await fh.write(chunk);
      }
      await fh.chmod(mode);
      await fh.sync();
    } finally {
      await fh.close();
    }
    const digest = { sha256: sha256.digest('hex'), sha512: sha512.digest('hex') };
    const file = path.join(dir, nameFor({ sha256: digest.sha256, length }));
    try {
      await fsp.link(tmp, file);
    } catch (err) {
      if (errorCode(err) !== 'EEXIST') throw err;
    }
    await fsp.unlink(tmp);
    await syncDir(dir);
    return { file, length, ...digest };
  } catch (err) {
    await fsp.unlink(tmp).catch(() => undefined);
    throw ioError(`cannot copy ${src} into ${dir}`, err);
  }
}

/** Renames `from` to `to` and fsyncs both directories (a key moved aside, a file retired). */
export async function moveFile(from: string, to: string): Promise<void> {
  try {
    await fsp.mkdir(path.dirname(to), { recursive: true, mode: 0o700 });
    await place(from, to, true);
    await syncDir(path.dirname(to));
    await syncDir(path.dirname(from));
  } catch (err) {
    throw ioError(`cannot move ${from} to ${to}`, err);
  }
}

function tempName(file: string): string {
  return path.join(path.dirname(file), `.${path.basename(file)}.tmp-${randomBytes(6).toString('hex')}`);
}

/** link + unlink (exclusive: never replaces) or rename (replaces). */
async function place(tmp: string, file: string, exclusive: boolean): Promise<void> {
  if (!exclusive) {
    await fsp.rename(tmp, file);
    return;
  }
  try {
    await fsp.link(tmp, file);
  } catch (err) {
    if (errorCode(err) === 'EEXIST') {
      throw new HoldfastError('HF_REPO_EXISTS', `${file} already exists; it is not overwritten`, { cause: err });
    }
    throw err;
  }
  await fsp.unlink(tmp);
}
