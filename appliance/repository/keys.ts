import { createCipheriv, createDecipheriv, hkdfSync, randomBytes, scrypt as scryptCb, type ScryptOptions } from 'node:crypto';
import os from 'node:os';

import { HoldfastError } from '../errors/index.ts';
import { parseRecoveryKey } from './recovery-key.ts';

/**
 * Key files and the key hierarchy (docs/DESIGN.md, "Keys").
 *
 * A random 32-byte master key is wrapped (AES-256-GCM) once per key file:
 * by scrypt(passphrase) for "passphrase" keys, by HKDF(recovery key) for the
 * "recovery" key. Working keys are derived from the master key with
 * HKDF-SHA-256, salted with the repository id.
 */

export const KEY_MAGIC = 'holdfast-key';
export const KEY_VERSION = 1;

/** scrypt cost: N = 2^15, r = 8, p = 1 (about 32 MiB and 0.1 s here). */
export const SCRYPT = { N: 1 << 15, r: 8, p: 1 } as const;

export type KeyKind = 'passphrase' | 'recovery';

export interface KeyFile {
  magic: typeof KEY_MAGIC;
  version: number;
  repository: string;
  kind: KeyKind;
  kdf:
    | { name: 'scrypt'; N: number; r: number; p: number; salt: string }
    | { name: 'hkdf-sha256'; salt: string };
  /** base64 of nonce(12) || AES-256-GCM(master key) || tag(16) */
  wrapped: string;
  created: string;
  host: string;
}

export interface WorkingKeys {
  encKey: Buffer;
  idKey: Buffer;
  gearSecret: Buffer;
}

export function deriveWorkingKeys(masterKey: Buffer, repoId: string): WorkingKeys {
  const salt = Buffer.from(repoId, 'hex');
  const derive = (info: string) => Buffer.from(hkdfSync('sha256', masterKey, salt, info, 32));
  return {
    encKey: derive('holdfast v1 encryption'),
    idKey: derive('holdfast v1 blob id'),
    gearSecret: derive('holdfast v1 gear'),
  };
}

function scrypt(password: string, salt: Buffer, p: { N: number; r: number; p: number }): Promise<Buffer> {
  const opts: ScryptOptions = { N: p.N, r: p.r, p: p.p, maxmem: 256 * p.N * p.r + (16 << 20) };
  return new Promise((resolve, reject) => {
    scryptCb(password.normalize('NFC'), salt, 32, opts, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

function aad(kind: KeyKind, repoId: string): Buffer {
  return Buffer.from(`holdfast-key v1 ${kind} ${repoId}`);
}

function wrap(kek: Buffer, masterKey: Buffer, ad: Buffer): string {
  const nonce = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', kek, nonce);
  c.setAAD(ad);
  const ct = Buffer.concat([c.update(masterKey), c.final()]);
  return Buffer.concat([nonce, ct, c.getAuthTag()]).toString('base64');
}

function unwrap(kek: Buffer, wrapped: string, ad: Buffer): Buffer | null {
  const b = Buffer.from(wrapped, 'base64');
  if (b.length !== 12 + 32 + 16) return null;
  try {
    const d = createDecipheriv('aes-256-gcm', kek, b.subarray(0, 12));
    d.setAAD(ad);
    d.setAuthTag(b.subarray(44));
    return Buffer.concat([d.update(b.subarray(12, 44)), d.final()]);
  } catch {
    return null;
  }
}

function recoveryKek(recoveryBytes: Buffer, salt: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', recoveryBytes, salt, 'holdfast v1 recovery key', 32));
}

export async function makePassphraseKey(masterKey: Buffer, repoId: string, passphrase: string): Promise<KeyFile> {
  if (passphrase.length === 0) {
    throw new HoldfastError('HF_NO_PASSWORD', 'the passphrase is empty; choose a non-empty passphrase');
  }
  const salt = randomBytes(32);
  const kek = await scrypt(passphrase, salt, SCRYPT);
  return {
    magic: KEY_MAGIC,
    version: KEY_VERSION,
    repository: repoId,
    kind: 'passphrase',
    kdf: { name: 'scrypt', ...SCRYPT, salt: salt.toString('base64') },
    wrapped: wrap(kek, masterKey, aad('passphrase', repoId)),
    created: new Date().toISOString(),
    host: os.hostname(),
  };
}

export function makeRecoveryKey(masterKey: Buffer, repoId: string, recoveryBytes: Buffer): KeyFile {
  const salt = randomBytes(32);
  return {
    magic: KEY_MAGIC,
    version: KEY_VERSION,
    repository: repoId,
    kind: 'recovery',
    kdf: { name: 'hkdf-sha256', salt: salt.toString('base64') },
    wrapped: wrap(recoveryKek(recoveryBytes, salt), masterKey, aad('recovery', repoId)),
    created: new Date().toISOString(),
    host: os.hostname(),
  };
}

/** Parses and checks a key file; HF_REPO_CORRUPT / HF_UNSUPPORTED_VERSION otherwise. */
export function parseKeyFile(name: string, bytes: Buffer): KeyFile {
  let k: KeyFile;
  try {
    k = JSON.parse(bytes.toString('utf8')) as KeyFile;
  } catch (cause) {
    throw new HoldfastError('HF_REPO_CORRUPT', `key file ${name} is not valid JSON`, { cause });
  }
  if (k?.magic !== KEY_MAGIC) throw new HoldfastError('HF_REPO_CORRUPT', `key file ${name} is not a Holdfast key`);
  if (k.version !== KEY_VERSION) {
    throw new HoldfastError('HF_UNSUPPORTED_VERSION',
      `key file ${name} has format version ${k.version}; this Holdfast reads version ${KEY_VERSION}: upgrade Holdfast`);
  }
  const kdfOk = k.kdf?.name === 'scrypt'
    ? Number.isInteger(k.kdf.N) && k.kdf.N >= 1024 && k.kdf.N <= 1 << 22 && Number.isInteger(k.kdf.r) &&
      k.kdf.r >= 1 && k.kdf.r <= 32 && Number.isInteger(k.kdf.p) && k.kdf.p >= 1 && k.kdf.p <= 16
    : k.kdf?.name === 'hkdf-sha256';
  if (!kdfOk || (k.kind !== 'passphrase' && k.kind !== 'recovery') || typeof k.wrapped !== 'string' ||
      typeof k.kdf.salt !== 'string' || !/^[0-9a-f]{64}$/.test(k.repository)) {
    throw new HoldfastError('HF_REPO_CORRUPT', `key file ${name} has invalid fields`);
  }
  return k;
}

export type Credentials = { password: string } | { recoveryKey: string };

/**
 * Unwraps the master key with a passphrase or the recovery key.
 * HF_WRONG_PASSWORD / HF_BAD_RECOVERY_KEY when nothing opens.
 */
export async function unlockMasterKey(keys: readonly KeyFile[], repoId: string, creds: Credentials): Promise<Buffer> {
  if ('password' in creds) {
    for (const k of keys) {
      if (k.kind !== 'passphrase' || k.kdf.name !== 'scrypt' || k.repository !== repoId) continue;
      const kek = await scrypt(creds.password, Buffer.from(k.kdf.salt, 'base64'), k.kdf);
      const mk = unwrap(kek, k.wrapped, aad('passphrase', repoId));
      if (mk) return mk;
    }
    throw new HoldfastError('HF_WRONG_PASSWORD',
      'wrong passphrase: it opens no key of this repository. Check HOLDFAST_PASSWORD or --password-file; ' +
      'if the passphrase is lost, use the recovery key (HOLDFAST_RECOVERY_KEY or --recovery-key-file).');
  }
  const bytes = parseRecoveryKey(creds.recoveryKey);
  for (const k of keys) {
    if (k.kind !== 'recovery' || k.kdf.name !== 'hkdf-sha256' || k.repository !== repoId) continue;
    const mk = unwrap(recoveryKek(bytes, Buffer.from(k.kdf.salt, 'base64')), k.wrapped, aad('recovery', repoId));
    if (mk) return mk;
  }
  throw new HoldfastError('HF_BAD_RECOVERY_KEY',
    'the recovery key is well-formed but does not open this repository; check that it belongs to this repository');
}
