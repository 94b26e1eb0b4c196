import fsp from 'node:fs/promises';

import { HoldfastError, errorCode, ioError } from '../errors/index.ts';
import { writeFileAtomic as writeAtomic } from '../storage/index.ts';

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

/** storage's writeFileAtomic, HF_PKI_EXISTS when an exclusive write finds the name taken. */
export function writeFileAtomic(file: string, data: string, opts: { mode: number; exclusive: boolean }): Promise<void> {
  return writeAtomic(file, data, { ...opts, existsCode: 'HF_PKI_EXISTS' });
}
