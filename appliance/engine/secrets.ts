import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import fsp from 'node:fs/promises';

import { HoldfastError, errorCode } from '../errors/index.ts';

const KEY_LEN = 32;
const MAGIC = Buffer.from('HFSK1');

/**
 * The appliance key: 32 random bytes in a file only the engine reads (mode
 * 0600), made on first start. It seals the secrets the engine keeps in its
 * state database (source passwords and keys, the repository passphrase), so
 * that a copy of the database alone (a backup of it, the config escrow)
 * reveals none of them. It does not protect against someone who has the
 * whole data directory: docs/DESIGN.md, "Threat model".
 */
export class ApplianceKey {
  readonly #key: Buffer;

  private constructor(key: Buffer) {
    this.#key = key;
  }

  /** Reads the key file, or makes it (exclusively) when there is none. */
  static async load(file: string): Promise<ApplianceKey> {
    try {
      const key = await fsp.readFile(file);
      if (key.length !== KEY_LEN) {
        throw new HoldfastError('HF_REPO_CORRUPT', `the appliance key ${file} is ${key.length} bytes, not ${KEY_LEN}; restore it from a backup of the data directory`);
      }
      return new ApplianceKey(key);
    } catch (err) {
      if (errorCode(err) !== 'ENOENT') throw err;
    }
    const key = randomBytes(KEY_LEN);
    const fh = await fsp.open(file, 'wx', 0o600);
    try {
      await fh.writeFile(key);
      await fh.sync();
    } finally {
      await fh.close();
    }
    return new ApplianceKey(key);
  }

  /** AES-256-GCM of the JSON of value, bound to a purpose (AAD), e.g. "source:fs1". */
  seal(purpose: string, value: unknown): Buffer {
    const nonce = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', this.#key, nonce);
    c.setAAD(Buffer.from(purpose));
    const body = Buffer.concat([c.update(JSON.stringify(value)), c.final()]);
    return Buffer.concat([MAGIC, nonce, body, c.getAuthTag()]);
  }

  open<T>(purpose: string, sealed: Buffer): T {
    if (sealed.length < MAGIC.length + 12 + 16 || !sealed.subarray(0, MAGIC.length).equals(MAGIC)) {
      throw new HoldfastError('HF_REPO_CORRUPT', `a sealed secret (${purpose}) is malformed`);
    }
    try {
      const nonce = sealed.subarray(MAGIC.length, MAGIC.length + 12);
      const d = createDecipheriv('aes-256-gcm', this.#key, nonce);
      d.setAAD(Buffer.from(purpose));
      d.setAuthTag(sealed.subarray(sealed.length - 16));
      const plain = Buffer.concat([d.update(sealed.subarray(MAGIC.length + 12, sealed.length - 16)), d.final()]);
      return JSON.parse(plain.toString('utf8')) as T;
    } catch (cause) {
      throw new HoldfastError('HF_REPO_CORRUPT',
        `a sealed secret (${purpose}) does not open with this appliance's key: the state database and appliance.key belong to different installs`, { cause });
    }
  }
}
