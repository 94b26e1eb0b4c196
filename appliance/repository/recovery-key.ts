import { createHash, randomBytes } from 'node:crypto';

import { HoldfastError } from '../errors/index.ts';

/**
 * A printable recovery key: 32 random bytes plus a 2-byte checksum, in
 * Crockford base32 (no I, L, O, U), in groups of five: 11 groups, 55 letters.
 * Typing mistakes are caught by the checksum; I/L read as 1 and O as 0.
 */
const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';

export function newRecoveryKey(): { bytes: Buffer; text: string } {
  const bytes = randomBytes(32);
  return { bytes, text: formatRecoveryKey(bytes) };
}

export function formatRecoveryKey(bytes: Buffer): string {
  const all = Buffer.concat([bytes, checksum(bytes)]);
  let bits = 0;
  let value = 0;
  let out = '';
  for (const byte of all) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += ALPHABET[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
    value &= (1 << bits) - 1;
  }
  if (bits > 0) out += ALPHABET[(value << (5 - bits)) & 31];
  return out.match(/.{1,5}/g)!.join('-');
}

export function parseRecoveryKey(text: string): Buffer {
  const clean = text.toUpperCase().replace(/[\s-]/g, '').replace(/[IL]/g, '1').replace(/O/g, '0');
  const bad = (why: string) => new HoldfastError('HF_BAD_RECOVERY_KEY',
    `the recovery key is not valid (${why}); type it exactly as printed at \`holdfast init\` (11 groups of 5)`);
  if (clean.length !== 55) throw bad(`${clean.length} letters instead of 55`);
  const out: number[] = [];
  let bits = 0;
  let value = 0;
  for (const ch of clean) {
    const v = ALPHABET.indexOf(ch);
    if (v < 0) throw bad(`letter ${JSON.stringify(ch)} is not used in recovery keys`);
    value = (value << 5) | v;
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 255);
      bits -= 8;
      value &= (1 << bits) - 1;
    }
  }
  const all = Buffer.from(out.slice(0, 34));
  const bytes = all.subarray(0, 32);
  if (!checksum(bytes).equals(all.subarray(32, 34))) throw bad('checksum mismatch: a letter is wrong');
  return Buffer.from(bytes);
}

function checksum(bytes: Buffer): Buffer {
  return createHash('sha256').update('holdfast recovery key').update(bytes).digest().subarray(0, 2);
}
