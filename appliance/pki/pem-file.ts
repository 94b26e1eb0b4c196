import { randomBytes } from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';

import { HoldfastError, errorCode, ioError } from '../errors/index.ts';

/** What a PEM file holds, for messages: which command makes it. */
export type PemKind = 'CA certificate' | 'CA key' | 'certificate' | 'key' | 'CRL';

/**
 * Reads a PEM file. A missing file is HF_PKI_NOT_FOUND naming the file and the
 * command that makes it; a file without a PEM block is HF_PKI_INVALID; any
 * other failure is HF_IO.
 */
export async function readPem(file: string, what: PemKind): Promise<string> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    if (errorCode(err) === 'ENOENT' || errorCode(err) === 'ENOTDIR') {
      const hint = what.startsWith('CA') || what === 'CRL'
        ? 'run `holdfast pki init` to create the CA (ca.crt, ca.key, crl.pem)'
        : 'run `holdfast pki issue` to issue it';
      throw new HoldfastError('HF_PKI_NOT_FOUND', `${what} ${file} does not exist: ${hint}`, { cause: err });
    }
    throw ioError(`cannot read ${what} ${file}`, err);
  }
  if (!/-----BEGIN [A-Z0-9 ]+-----/.test(text)) {
    throw new HoldfastError('HF_PKI_INVALID', `${what} ${file} is not a PEM file`);
  }
  return text;
}

/**
 * Writes a file atomically: a temp file in the same directory, written with
 * `mode`, fsynced, then linked (exclusive: fails with HF_PKI_EXISTS when the
 * name exists) or renamed (replace) into place, and the directory fsynced.
 * A reader sees the old file or the whole new one, never a part.
 */
export async function writeFileAtomic(file: string, data: string, opts: { mode: number; exclusive: boolean }): Promise<void> {
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.tmp-${randomBytes(6).toString('hex')}`);
  try {
    const fh = await fsp.open(tmp, 'wx', opts.mode);
    try {
      await fh.writeFile(data);
      await fh.chmod(opts.mode); // open() applies the umask; set the mode exactly
      await fh.sync();
    } finally {
      await fh.close();
    }
    if (opts.exclusive) {
      try {
        await fsp.link(tmp, file);
      } catch (err) {
        if (errorCode(err) === 'EEXIST') {
          throw new HoldfastError('HF_PKI_EXISTS', `${file} already exists; it is not overwritten`, { cause: err });
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
    throw ioError(`cannot write ${file}`, err);
  }
}

async function syncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
