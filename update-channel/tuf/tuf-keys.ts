import { type KeyObject, createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign } from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';

import { Key, Signature } from '@tufjs/models';

import { HoldfastError, errorCode, ioError } from '../../appliance/errors/index.ts';
import { moveFile, writeFileAtomic } from './write-file-atomic.ts';

/** The four top-level TUF roles. */
export type TufRole = 'root' | 'targets' | 'snapshot' | 'timestamp';

export const TUF_ROLES: readonly TufRole[] = ['root', 'targets', 'snapshot', 'timestamp'];

/** A TUF signing key: the private half (from a key file) and the public half as root.json lists it. */
export interface TufKey {
  readonly role: TufRole;
  /** TUF keyid: sha256 (hex) of the canonical JSON of the public key. */
  readonly keyId: string;
  /** For root.json: keytype and scheme 'ed25519', keyval.public the raw 32-byte key in hex. */
  readonly publicKey: Key;
  readonly privateKey: KeyObject;
}

/** Key files: `<role>-<first 16 hex digits of the keyid>.pem`, PKCS#8 PEM, mode 0600. */
const KEY_FILE = /^(root|targets|snapshot|timestamp)-([0-9a-f]{16})\.pem$/;

/** Where retired keys go, inside the key directory. */
export const RETIRED_DIR = 'retired';

export function keyFileName(key: TufKey): string {
  return `${key.role}-${key.keyId.slice(0, 16)}.pem`;
}

/** A new Ed25519 key for a role. */
export function generateTufKey(role: TufRole): TufKey {
  const { privateKey } = generateKeyPairSync('ed25519');
  return tufKeyOf(role, privateKey);
}

/**
 * The TUF view of an Ed25519 private key. @tufjs/models verifies an ed25519
 * key given as hex by wrapping the raw 32 bytes in an SPKI header
 * (utils/key.js), so keyval.public is exactly the raw public key in hex.
 */
export function tufKeyOf(role: TufRole, privateKey: KeyObject): TufKey {
  if (privateKey.asymmetricKeyType !== 'ed25519') {
    throw new HoldfastError('HF_INVALID_ARGUMENT', `a ${role} key must be Ed25519, not ${privateKey.asymmetricKeyType ?? privateKey.type}`);
  }
  const jwk = createPublicKey(privateKey).export({ format: 'jwk' });
  const raw = Buffer.from(String(jwk.x), 'base64url');
  if (raw.length !== 32) throw new HoldfastError('HF_INVALID_ARGUMENT', `a ${role} key's public half is ${raw.length} bytes, not 32`);
  const hex = raw.toString('hex');
  // The canonical JSON (sorted keys, no blanks) of {keytype, scheme, keyval}.
  const canonical = `{"keytype":"ed25519","keyval":{"public":"${hex}"},"scheme":"ed25519"}`;
  const keyId = createHash('sha256').update(canonical).digest('hex');
  const publicKey = new Key({ keyID: keyId, keyType: 'ed25519', scheme: 'ed25519', keyVal: { public: hex } });
  return { role, keyId, publicKey, privateKey };
}

/** The signer Metadata.sign() wants: Ed25519 over the canonical bytes it passes in. */
export function signerOf(key: TufKey): (data: Buffer) => Signature {
  return (data) => new Signature({ keyID: key.keyId, sig: sign(null, data, key.privateKey).toString('hex') });
}

/** Writes a key into dir (created 0700) as PKCS#8 PEM, mode 0600, atomically; never overwrites. Returns the file. */
export async function writeTufKey(dir: string, key: TufKey): Promise<string> {
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 }).catch((err: unknown) => { throw ioError(`cannot create key directory ${dir}`, err); });
  const file = path.join(dir, keyFileName(key));
  const pem = key.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  await writeFileAtomic(file, pem, { mode: 0o600, exclusive: true });
  return file;
}

/**
 * Every key file in dir (not in `retired/`), by keyid. A missing directory
 * holds no keys. A key file that does not parse, or whose name does not match
 * its key, is HF_INVALID_ARGUMENT naming the file.
 */
export async function readTufKeys(dir: string): Promise<Map<string, TufKey>> {
  let names: string[];
  try {
    names = await fsp.readdir(dir);
  } catch (err) {
    if (errorCode(err) === 'ENOENT') return new Map();
    throw ioError(`cannot list key directory ${dir}`, err);
  }
  const keys = new Map<string, TufKey>();
  for (const name of names.sort()) {
    const m = KEY_FILE.exec(name);
    if (!m) continue;
    const file = path.join(dir, name);
    let pem: string;
    try {
      pem = await fsp.readFile(file, 'utf8');
    } catch (err) {
      throw ioError(`cannot read key ${file}`, err);
    }
    let key: TufKey;
    try {
      key = tufKeyOf(m[1] as TufRole, createPrivateKey(pem));
    } catch (err) {
      throw new HoldfastError('HF_INVALID_ARGUMENT', `key file ${file} is not an Ed25519 PKCS#8 private key`, { cause: err });
    }
    if (!key.keyId.startsWith(m[2] ?? '')) {
      throw new HoldfastError('HF_INVALID_ARGUMENT', `key file ${file} holds key ${key.keyId.slice(0, 16)}, not the one its name says`);
    }
    keys.set(key.keyId, key);
  }
  return keys;
}

/** Moves a key file to `<dir>/retired/` (kept, not deleted: an old root may have to be re-signed or audited). */
export async function retireTufKey(dir: string, key: TufKey): Promise<string> {
  const to = path.join(dir, RETIRED_DIR, keyFileName(key));
  await moveFile(path.join(dir, keyFileName(key)), to);
  return to;
}
