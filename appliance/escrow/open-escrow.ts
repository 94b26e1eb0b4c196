import { createDecipheriv } from 'node:crypto';

import { HoldfastError } from '../errors/index.ts';
import { type EscrowConfig, parseEscrowConfig } from './escrow-config.ts';
import { EscrowKeyPair, x25519PublicKey } from './escrow-key-pair.ts';
import { ESCROW_HEADER_LEN, ESCROW_MAGIC, ESCROW_MAGIC_PREFIX, ESCROW_TAG_LEN, escrowSealKey } from './seal-escrow.ts';

/** Larger than any configuration; a bigger "escrow" is refused before it is decrypted. */
const MAX_ESCROW = 64 << 20;

/**
 * What a sealed escrow says without a key: its format version and the id of
 * the escrow key it was sealed for (EscrowKeyPair.keyId). HF_REPO_CORRUPT
 * when it is not an escrow, HF_UNSUPPORTED_VERSION for a newer format.
 */
export function readEscrowHeader(blob: Buffer): { version: number; keyId: string } {
  if (blob.length < ESCROW_HEADER_LEN + ESCROW_TAG_LEN) {
    throw new HoldfastError('HF_REPO_CORRUPT', `the configuration escrow is ${blob.length} bytes: too short to be one (truncated, or not an escrow)`);
  }
  if (blob.length > MAX_ESCROW) throw new HoldfastError('HF_REPO_CORRUPT', `the configuration escrow is ${blob.length} bytes: larger than any escrow (${MAX_ESCROW})`);
  if (!blob.subarray(0, 7).equals(ESCROW_MAGIC_PREFIX)) {
    throw new HoldfastError('HF_REPO_CORRUPT', 'this is not a Holdfast configuration escrow (its magic is not HFESCR)');
  }
  const version = blob[7]!;
  if (version !== ESCROW_MAGIC[7]) {
    throw new HoldfastError('HF_UNSUPPORTED_VERSION', `the configuration escrow has format version ${version}; this Holdfast reads version ${ESCROW_MAGIC[7]}: upgrade Holdfast`);
  }
  return { version, keyId: blob.subarray(40, 48).toString('hex') };
}

/**
 * Opens a sealed escrow with the recovery key (the text printed at setup).
 * HF_BAD_RECOVERY_KEY when the text is not a well-formed recovery key;
 * HF_ESCROW_LOCKED when the escrow was sealed for another recovery key;
 * HF_REPO_CORRUPT when it is damaged (or not an escrow);
 * HF_UNSUPPORTED_VERSION when it is newer than this program.
 */
export function openEscrow(blob: Buffer, recoveryKey: string): EscrowConfig {
  const { keyId } = readEscrowHeader(blob);
  const pair = EscrowKeyPair.fromRecoveryKey(recoveryKey);
  if (keyId !== pair.keyId) {
    throw new HoldfastError('HF_ESCROW_LOCKED',
      `the configuration escrow was sealed for another recovery key (key id ${keyId}; this recovery key's is ${pair.keyId}): ` +
      'use the recovery key shown at setup of the box the escrow came from', { details: { keyId, recoveryKeyId: pair.keyId } });
  }
  const header = blob.subarray(0, ESCROW_HEADER_LEN);
  const ephemeralRaw = blob.subarray(8, 40);
  let plain: Buffer;
  try {
    const shared = pair.agree(x25519PublicKey(Buffer.from(ephemeralRaw), 'the escrow\'s ephemeral key'));
    const key = escrowSealKey(shared, ephemeralRaw, pair.publicKey);
    shared.fill(0);
    const d = createDecipheriv('aes-256-gcm', key, blob.subarray(48, ESCROW_HEADER_LEN));
    d.setAAD(header);
    d.setAuthTag(blob.subarray(blob.length - ESCROW_TAG_LEN));
    plain = Buffer.concat([d.update(blob.subarray(ESCROW_HEADER_LEN, blob.length - ESCROW_TAG_LEN)), d.final()]);
    key.fill(0);
  } catch (cause) {
    throw new HoldfastError('HF_REPO_CORRUPT',
      'the configuration escrow is damaged: it is sealed for this recovery key, but its contents fail authentication (altered or truncated); fetch it again', { cause });
  }
  let value: unknown;
  try {
    value = JSON.parse(plain.toString('utf8'));
  } catch (cause) {
    throw new HoldfastError('HF_REPO_CORRUPT', 'the configuration escrow opened, but its contents are not JSON', { cause });
  } finally {
    plain.fill(0);
  }
  return parseEscrowConfig(value);
}
