import { createCipheriv, createPublicKey, diffieHellman, generateKeyPairSync, hkdfSync, randomBytes } from 'node:crypto';

import { HoldfastError } from '../errors/index.ts';
import { type EscrowConfig, canonicalJson } from './escrow-config.ts';
import { escrowKeyId, x25519PublicKey } from './escrow-key-pair.ts';

/**
 * The sealed escrow's layout (docs/DESIGN.md, "Configuration escrow"):
 *
 *   magic "HFESCR\0\x01" (8) ‖ ephemeral X25519 public key (32) ‖ key id (8) ‖ nonce (12)
 *   ‖ AES-256-GCM(key, nonce, AAD = those 60 bytes, plaintext) ‖ tag (16)
 *
 *   key       = HKDF-SHA-256(X25519(ephemeral, recipient), salt = ephemeral ‖ recipient public key,
 *               info "holdfast v1 config escrow seal", 32 bytes)
 *   plaintext = canonical JSON of the EscrowConfig, padded with spaces to a multiple of 1 KiB
 */
export const ESCROW_MAGIC = Buffer.from('HFESCR\0\x01', 'latin1');
export const ESCROW_MAGIC_PREFIX = ESCROW_MAGIC.subarray(0, 7);
export const ESCROW_HEADER_LEN = 8 + 32 + 8 + 12;
export const ESCROW_TAG_LEN = 16;
export const ESCROW_SEAL_INFO = 'holdfast v1 config escrow seal';
/** The plaintext is padded to a multiple of this, so the blob's size says little about the configuration. */
export const ESCROW_PAD = 1024;

export function escrowSealKey(shared: Buffer, ephemeral: Buffer, recipient: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', shared, Buffer.concat([ephemeral, recipient]), ESCROW_SEAL_INFO, 32));
}

/**
 * Seals a configuration for the holder of the recovery key whose escrow
 * public key (32 raw bytes, EscrowKeyPair.publicKey) is given: ECIES with
 * a fresh ephemeral X25519 key per call, so two seals of one configuration
 * differ. Needs no secret: a box seals after it forgot the recovery key.
 * HF_INVALID_ARGUMENT when the public key is not a usable X25519 key.
 */
export function sealEscrow(publicKeyRaw: Buffer, config: EscrowConfig): Buffer {
  const recipient = x25519PublicKey(publicKeyRaw, 'the escrow public key');
  const ephemeral = generateKeyPairSync('x25519');
  const ephemeralRaw = Buffer.from(createPublicKey(ephemeral.privateKey).export({ format: 'jwk' }).x!, 'base64url');
  let shared: Buffer;
  try {
    shared = diffieHellman({ privateKey: ephemeral.privateKey, publicKey: recipient });
  } catch (cause) {
    throw new HoldfastError('HF_INVALID_ARGUMENT', 'the escrow public key is not a usable X25519 key (a low-order point)', { cause });
  }
  const key = escrowSealKey(shared, ephemeralRaw, publicKeyRaw);
  shared.fill(0);
  const nonce = randomBytes(12);
  const header = Buffer.concat([ESCROW_MAGIC, ephemeralRaw, Buffer.from(escrowKeyId(publicKeyRaw), 'hex'), nonce]);
  const json = Buffer.from(canonicalJson(config), 'utf8');
  const padded = Buffer.alloc(Math.max(1, Math.ceil(json.length / ESCROW_PAD)) * ESCROW_PAD, 0x20);
  json.copy(padded);
  const c = createCipheriv('aes-256-gcm', key, nonce);
  c.setAAD(header);
  const body = Buffer.concat([c.update(padded), c.final()]);
  key.fill(0);
  padded.fill(0);
  json.fill(0);
  return Buffer.concat([header, body, c.getAuthTag()]);
}
