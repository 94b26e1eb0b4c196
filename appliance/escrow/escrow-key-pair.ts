import { type KeyObject, createHash, createPrivateKey, createPublicKey, diffieHellman, hkdfSync } from 'node:crypto';

import { HoldfastError } from '../errors/index.ts';
import { parseRecoveryKey } from '../repository/index.ts';

/** HKDF info of the escrow key pair (docs/DESIGN.md, "Configuration escrow"). A fixed string: never edited. */
const KEY_INFO = 'holdfast v1 config escrow';
/** PKCS#8 DER of an X25519 private key, up to the 32 key bytes (RFC 8410). */
const PKCS8_X25519_PREFIX = Buffer.from('302e020100300506032b656e04220420', 'hex');

/**
 * The short id of an escrow public key: the first 8 bytes of
 * SHA-256("holdfast escrow key id" ‖ public key), 16 hex digits. It is in
 * every sealed escrow's header, so that a wrong recovery key is told apart
 * from a damaged escrow.
 */
export function escrowKeyId(publicKey: Buffer): string {
  return createHash('sha256').update('holdfast escrow key id').update(publicKey).digest().subarray(0, 8).toString('hex');
}

/** Reads a raw 32-byte X25519 public key as a KeyObject; HF_INVALID_ARGUMENT when it is not one. */
export function x25519PublicKey(raw: Buffer, what: string): KeyObject {
  if (raw.length !== 32) throw new HoldfastError('HF_INVALID_ARGUMENT', `${what} is ${raw.length} bytes; an X25519 public key is 32`);
  return createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: raw.toString('base64url') }, format: 'jwk' });
}

/**
 * The configuration escrow's key pair, derived from the repository's
 * recovery key and from nothing else: X25519 with the private scalar
 * HKDF-SHA-256(recovery key bytes, salt empty, info "holdfast v1 config
 * escrow", 32 bytes). The same recovery key always gives the same pair, so
 * a box that forgot its recovery key still seals for it (it keeps the
 * public key only), and whoever has the printed recovery key opens what it
 * sealed. The private key MUST NOT be stored: it exists only while an
 * escrow is opened.
 */
export class EscrowKeyPair {
  /** Raw 32-byte X25519 public key (what the box keeps). */
  readonly publicKey: Buffer;
  readonly keyId: string;
  readonly #privateKey: KeyObject;

  private constructor(privateKey: KeyObject) {
    this.#privateKey = privateKey;
    const jwk = createPublicKey(privateKey).export({ format: 'jwk' });
    this.publicKey = Buffer.from(jwk.x!, 'base64url');
    this.keyId = escrowKeyId(this.publicKey);
  }

  /** HF_BAD_RECOVERY_KEY when the text is not a well-formed recovery key. */
  static fromRecoveryKey(recoveryKey: string): EscrowKeyPair {
    const bytes = parseRecoveryKey(recoveryKey);
    const d = Buffer.from(hkdfSync('sha256', bytes, Buffer.alloc(0), KEY_INFO, 32));
    // A JWK import needs the public `x` beside `d`; PKCS#8 carries `d` alone.
    const key = createPrivateKey({ key: Buffer.concat([PKCS8_X25519_PREFIX, d]), format: 'der', type: 'pkcs8' });
    d.fill(0);
    bytes.fill(0);
    return new EscrowKeyPair(key);
  }

  /** The X25519 shared secret with a peer's public key (an escrow's ephemeral key). */
  agree(peer: KeyObject): Buffer {
    return diffieHellman({ privateKey: this.#privateKey, publicKey: peer });
  }
}
