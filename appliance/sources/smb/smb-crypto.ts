/**
 * SMB2/3 cryptography: the pure functions the SMB client needs to sign,
 * encrypt and derive keys, and the two legacy primitives NTLM still needs
 * (MD4, RC4) that Node's OpenSSL 3 refuses to provide.
 *
 * Owns: MD4, RC4, AES-CMAC, the SP800-108 KDF, SMB 3.x key derivation,
 * message signing/verification (HMAC-SHA256, AES-CMAC, AES-GMAC), the
 * TRANSFORM_HEADER encryption (AES-128/256-CCM/GCM) and the pre-auth
 * integrity hash. Must not: frame messages, track sessions or credits, or
 * do I/O; callers pass whole messages and keys.
 *
 * Every function works on Buffers and never keeps state between calls.
 * Node's `crypto` does the block-cipher work so 1 MiB READ responses are
 * signed and decrypted at OpenSSL speed (no per-block JavaScript loop).
 */

import crypto from 'node:crypto';

import { HoldfastError } from '../../errors/index.ts';

// ---------------------------------------------------------------------------
// MD4 (RFC 1320)

const MD4_INIT = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476] as const;

/**
 * MD4 message digest, RFC 1320. NTLM's NT hash is MD4 of the UTF-16LE
 * password (MS-NLMP §3.3.1 NTOWFv1), and OpenSSL 3 has MD4 only in its
 * legacy provider, which Node does not load.
 */
export function md4(data: Buffer): Buffer {
  const bitLength = BigInt(data.length) * 8n;
  // RFC 1320 §3.1-3.2: pad with 0x80 and zeros to 56 mod 64, then the bit length (64-bit LE)
  const padded = Buffer.alloc((((data.length + 8) >> 6) + 1) << 6);
  data.copy(padded);
  padded[data.length] = 0x80;
  padded.writeBigUInt64LE(bitLength & 0xffffffffffffffffn, padded.length - 8);

  const state = Uint32Array.from(MD4_INIT);
  const x = new Uint32Array(16);
  for (let block = 0; block < padded.length; block += 64) {
    for (let i = 0; i < 16; i++) x[i] = padded.readUInt32LE(block + 4 * i);
    md4Block(state, x);
  }
  const out = Buffer.alloc(16);
  for (let i = 0; i < 4; i++) out.writeUInt32LE(state[i]!, 4 * i);
  return out;
}

const rotl = (v: number, s: number): number => ((v << s) | (v >>> (32 - s))) >>> 0;

/** RFC 1320 §3.4: the three rounds over one 16-word block. */
function md4Block(state: Uint32Array, x: Uint32Array): void {
  let a = state[0]!;
  let b = state[1]!;
  let c = state[2]!;
  let d = state[3]!;
  const F = (p: number, q: number, r: number): number => (p & q) | (~p & r);
  const G = (p: number, q: number, r: number): number => (p & q) | (p & r) | (q & r);
  const H = (p: number, q: number, r: number): number => p ^ q ^ r;
  const w = (i: number): number => x[i]!;

  // Round 1: [abcd k s] a = (a + F(b,c,d) + X[k]) <<< s
  for (const k of [0, 4, 8, 12]) {
    a = rotl((a + F(b, c, d) + w(k)) >>> 0, 3);
    d = rotl((d + F(a, b, c) + w(k + 1)) >>> 0, 7);
    c = rotl((c + F(d, a, b) + w(k + 2)) >>> 0, 11);
    b = rotl((b + F(c, d, a) + w(k + 3)) >>> 0, 19);
  }
  // Round 2: a = (a + G(b,c,d) + X[k] + 5A827999) <<< s
  const r2 = 0x5a827999;
  for (const k of [0, 1, 2, 3]) {
    a = rotl((a + G(b, c, d) + w(k) + r2) >>> 0, 3);
    d = rotl((d + G(a, b, c) + w(k + 4) + r2) >>> 0, 5);
    c = rotl((c + G(d, a, b) + w(k + 8) + r2) >>> 0, 9);
    b = rotl((b + G(c, d, a) + w(k + 12) + r2) >>> 0, 13);
  }
  // Round 3: a = (a + H(b,c,d) + X[k] + 6ED9EBA1) <<< s
  const r3 = 0x6ed9eba1;
  for (const k of [0, 2, 1, 3]) {
    a = rotl((a + H(b, c, d) + w(k) + r3) >>> 0, 3);
    d = rotl((d + H(a, b, c) + w(k + 8) + r3) >>> 0, 9);
    c = rotl((c + H(d, a, b) + w(k + 4) + r3) >>> 0, 11);
    b = rotl((b + H(c, d, a) + w(k + 12) + r3) >>> 0, 15);
  }
  state[0] = (state[0]! + a) >>> 0;
  state[1] = (state[1]! + b) >>> 0;
  state[2] = (state[2]! + c) >>> 0;
  state[3] = (state[3]! + d) >>> 0;
}

// ---------------------------------------------------------------------------
// RC4

/**
 * RC4 (alleged ARCFOUR) with a fresh key schedule: XORs `data` with the
 * first `data.length` keystream bytes. Used only for NTLM key exchange and
 * the NTLM signature's checksum sealing (MS-NLMP §3.1.5.1.2, §3.4.4.2),
 * where each handle is used once. Never use it for anything else.
 */
export function rc4(key: Buffer, data: Buffer): Buffer {
  if (key.length === 0 || key.length > 256) {
    throw new HoldfastError('HF_INVALID_ARGUMENT', `RC4: a key of ${key.length} bytes is not valid (1 to 256)`);
  }
  const s = new Uint8Array(256);
  for (let i = 0; i < 256; i++) s[i] = i;
  for (let i = 0, j = 0; i < 256; i++) {
    j = (j + s[i]! + key[i % key.length]!) & 0xff;
    const t = s[i]!;
    s[i] = s[j]!;
    s[j] = t;
  }
  const out = Buffer.alloc(data.length);
  for (let n = 0, i = 0, j = 0; n < data.length; n++) {
    i = (i + 1) & 0xff;
    j = (j + s[i]!) & 0xff;
    const t = s[i]!;
    s[i] = s[j]!;
    s[j] = t;
    out[n] = data[n]! ^ s[(s[i]! + s[j]!) & 0xff]!;
  }
  return out;
}

// ---------------------------------------------------------------------------
// AES-CMAC (RFC 4493)

const BLOCK = 16;
const ZERO_BLOCK = Buffer.alloc(BLOCK);

/** RFC 4493 §2.3: doubling in GF(2^128), used for the subkeys K1 and K2. */
function dbl(block: Buffer): Buffer {
  const out = Buffer.alloc(BLOCK);
  for (let i = 0; i < BLOCK; i++) {
    out[i] = ((block[i]! << 1) | (i + 1 < BLOCK ? block[i + 1]! >> 7 : 0)) & 0xff;
  }
  if (block[0]! & 0x80) out[BLOCK - 1]! ^= 0x87; // Rb
  return out;
}

function requireKey(what: string, key: Buffer, lengths: readonly number[]): void {
  if (!lengths.includes(key.length)) {
    throw new HoldfastError('HF_INVALID_ARGUMENT', `${what}: a key of ${key.length} bytes is not valid (needs ${lengths.join(' or ')})`);
  }
}

/**
 * AES-128-CMAC, RFC 4493 §2.4. The SMB 3.x signing MAC (MS-SMB2 §3.1.4.1).
 *
 * All blocks but the last go through one AES-128-CBC pass with a zero IV,
 * whose chaining value is exactly CMAC's X; the last block (XORed with K1
 * or, padded, with K2) is then fed to the same CBC stream, whose output
 * block is the tag. So a 1 MiB message costs one OpenSSL call, not 65536
 * JavaScript iterations.
 */
export function aesCmac(key: Buffer, data: Buffer): Buffer {
  requireKey('AES-CMAC', key, [16]);
  // §2.3 Generate_Subkey
  const ecb = crypto.createCipheriv('aes-128-ecb', key, null).setAutoPadding(false);
  const l = ecb.update(ZERO_BLOCK);
  const k1 = dbl(l);
  // §2.4 steps 2-4: the last block, complete (XOR K1) or padded 10* (XOR K2)
  const blocks = Math.max(1, Math.ceil(data.length / BLOCK));
  const lastStart = (blocks - 1) * BLOCK;
  const complete = data.length > 0 && data.length % BLOCK === 0;
  const last = Buffer.alloc(BLOCK);
  data.copy(last, 0, lastStart);
  if (!complete) last[data.length - lastStart] = 0x80;
  const subkey = complete ? k1 : dbl(k1);
  for (let i = 0; i < BLOCK; i++) last[i]! ^= subkey[i]!;
  // §2.4 steps 5-6: CBC-MAC over M_1..M_{n-1}, then one more block
  const cbc = crypto.createCipheriv('aes-128-cbc', key, ZERO_BLOCK).setAutoPadding(false);
  if (lastStart > 0) cbc.update(data.subarray(0, lastStart));
  return cbc.update(last);
}

// ---------------------------------------------------------------------------
// KDF and SMB 3.x keys (MS-SMB2 §3.1.4.2, §3.2.5.3.1)

/**
 * SP800-108 KDF in counter mode with HMAC-SHA256, r = 32, as MS-SMB2
 * §3.1.4.2 uses it: K(1) = HMAC-SHA256(key, [1]_4 || label || 0x00 ||
 * context || [L]_4), truncated to L bits. `label` and `context` are the
 * exact bytes (the spec's strings include their trailing NUL); the 0x00
 * separator between them is SP800-108's and is added here.
 */
export function kdfSha256(key: Buffer, label: Buffer, context: Buffer, bits: 128 | 256): Buffer {
  const counter = Buffer.alloc(4);
  counter.writeUInt32BE(1);
  const length = Buffer.alloc(4);
  length.writeUInt32BE(bits);
  // One HMAC-SHA256 block yields 256 bits, enough for L = 128 and L = 256.
  return crypto.createHmac('sha256', key)
    .update(counter).update(label).update(ZERO_BYTE).update(context).update(length)
    .digest()
    .subarray(0, bits / 8);
}

const ZERO_BYTE = Buffer.alloc(1);

/** Cipher ids (MS-SMB2 §2.2.3.1.2). 0 means no cipher was negotiated. */
export const CipherId = {
  NONE: 0,
  AES_128_CCM: 1,
  AES_128_GCM: 2,
  AES_256_CCM: 3,
  AES_256_GCM: 4,
} as const;

/** The session's SMB 3.x keys (MS-SMB2 §3.2.1.3). */
export interface Smb3Keys {
  /** Session.SigningKey (16 bytes), for AES-CMAC or AES-GMAC. */
  signingKey: Buffer;
  /** Session.EncryptionKey: client→server (16 bytes, or 32 for AES-256). */
  encryptionKey: Buffer;
  /** Session.DecryptionKey: server→client (16 bytes, or 32 for AES-256). */
  decryptionKey: Buffer;
  /** Session.ApplicationKey (16 bytes). */
  applicationKey: Buffer;
}

const label = (s: string): Buffer => Buffer.from(`${s}\0`, 'latin1');

/**
 * Derives the session keys for an SMB 3.x dialect, MS-SMB2 §3.2.5.3.1 (the
 * client side of §3.3.5.5.3).
 *
 * Session.SessionKey is the first 16 bytes of `sessionKey` (the GSS
 * cryptographic key, e.g. NTLM's ExportedSessionKey), right-padded with
 * zeros when shorter. For 3.1.1 with AES-256-CCM/GCM the encryption and
 * decryption keys are derived from Session.FullSessionKey, the whole GSS
 * key (16 bytes for NTLM, 32 for Kerberos AES-256), with L = 256.
 *
 * - 3.0 / 3.0.2: SigningKey = KDF(SessionKey, "SMB2AESCMAC\0", "SmbSign\0");
 *   EncryptionKey = KDF(SessionKey, "SMB2AESCCM\0", "ServerIn \0");
 *   DecryptionKey = KDF(SessionKey, "SMB2AESCCM\0", "ServerOut\0");
 *   ApplicationKey = KDF(SessionKey, "SMB2APP\0", "SmbRpc\0").
 * - 3.1.1 (context = Session.PreauthIntegrityHashValue): "SMBSigningKey\0",
 *   "SMBC2SCipherKey\0", "SMBS2CCipherKey\0", "SMBAppKey\0".
 *
 * @param preauthHash the session's 64-byte pre-auth integrity hash; MUST be
 *   given for 3.1.1 and is ignored otherwise.
 * @param cipher the negotiated cipher id (0 none, 1-4, see CipherId); for
 *   3.0/3.0.2 encryption is always AES-128-CCM.
 */
export function deriveSmb3Keys(sessionKey: Buffer, dialect: number, preauthHash: Buffer | null, cipher: number): Smb3Keys {
  if (sessionKey.length === 0) throw new HoldfastError('HF_INVALID_ARGUMENT', 'SMB3 key derivation: the session key is empty');
  if (!(cipher >= CipherId.NONE && cipher <= CipherId.AES_256_GCM && Number.isInteger(cipher))) {
    throw new HoldfastError('HF_INVALID_ARGUMENT', `SMB3 key derivation: cipher id ${cipher} is not known`);
  }
  const sk = Buffer.alloc(16);
  sessionKey.copy(sk, 0, 0, 16);

  if (dialect === 0x0300 || dialect === 0x0302) {
    return {
      signingKey: kdfSha256(sk, label('SMB2AESCMAC'), label('SmbSign'), 128),
      encryptionKey: kdfSha256(sk, label('SMB2AESCCM'), label('ServerIn '), 128),
      decryptionKey: kdfSha256(sk, label('SMB2AESCCM'), label('ServerOut'), 128),
      applicationKey: kdfSha256(sk, label('SMB2APP'), label('SmbRpc'), 128),
    };
  }
  if (dialect !== 0x0311) {
    throw new HoldfastError('HF_INVALID_ARGUMENT', `SMB3 key derivation: dialect 0x${dialect.toString(16).padStart(4, '0')} has no SMB 3.x keys`);
  }
  if (!preauthHash || preauthHash.length !== 64) {
    throw new HoldfastError('HF_INVALID_ARGUMENT', 'SMB3 key derivation: dialect 3.1.1 needs the 64-byte pre-auth integrity hash');
  }
  const aes256 = cipher === CipherId.AES_256_CCM || cipher === CipherId.AES_256_GCM;
  const cipherKey = aes256 ? sessionKey : sk;
  const bits = aes256 ? 256 : 128;
  return {
    signingKey: kdfSha256(sk, label('SMBSigningKey'), preauthHash, 128),
    encryptionKey: kdfSha256(cipherKey, label('SMBC2SCipherKey'), preauthHash, bits),
    decryptionKey: kdfSha256(cipherKey, label('SMBS2CCipherKey'), preauthHash, bits),
    applicationKey: kdfSha256(sk, label('SMBAppKey'), preauthHash, 128),
  };
}

/**
 * One step of the 3.1.1 pre-auth integrity hash, MS-SMB2 §3.2.5.2 /
 * §3.2.5.3.1: SHA-512(hash || message), starting from 64 zero bytes.
 */
export function preauthHashUpdate(hash: Buffer, message: Buffer): Buffer {
  if (hash.length !== 64) throw new HoldfastError('HF_INVALID_ARGUMENT', `pre-auth integrity hash: ${hash.length} bytes, not 64`);
  return crypto.createHash('sha512').update(hash).update(message).digest();
}

// ---------------------------------------------------------------------------
// Signing (MS-SMB2 §3.1.4.1, §3.1.5.1)

/** SMB 2.0.2 / 2.1: HMAC-SHA256 with the session key, truncated to 16 bytes. */
export const SIGNING_HMAC_SHA256 = 'hmac-sha256';
/** SMB 3.x: AES-128-CMAC (RFC 4493) with Session.SigningKey. */
export const SIGNING_AES_CMAC = 'aes-cmac';
/** SMB 3.1.1 with SMB2_SIGNING_CAPABILITIES id 2: AES-128-GMAC (RFC 4543). */
export const SIGNING_AES_GMAC = 'aes-gmac';
/** The signing algorithm names accepted by signMessage/verifyMessage (the same strings as smb-connection.ts's SigningAlg). */
export type SigningAlgorithmName = typeof SIGNING_HMAC_SHA256 | typeof SIGNING_AES_CMAC | typeof SIGNING_AES_GMAC;

/** SMB2 header offsets (MS-SMB2 §2.2.1). */
const SIG_OFFSET = 48;
const SIG_LENGTH = 16;
const HEADER_LENGTH = 64;
const FLAG_SERVER_TO_REDIR = 0x00000001;
const COMMAND_CANCEL = 0x000c;

/**
 * The 12-byte AES-GMAC nonce, MS-SMB2 §3.1.4.1: MessageId (8 bytes LE),
 * then a 32-bit LE word whose bit 0 is 1 for a server's message
 * (SMB2_FLAGS_SERVER_TO_REDIR) and bit 1 is 1 for a CANCEL request.
 */
function gmacNonce(message: Buffer): Buffer {
  const nonce = Buffer.alloc(12);
  message.copy(nonce, 0, 24, 32);
  const fromServer = (message.readUInt32LE(16) & FLAG_SERVER_TO_REDIR) !== 0;
  const cancel = message.readUInt16LE(12) === COMMAND_CANCEL;
  nonce.writeUInt32LE((fromServer ? 1 : 0) | (cancel ? 2 : 0), 8);
  return nonce;
}

/** The 16-byte MAC of a message whose Signature field is already zero. */
function computeSignature(alg: SigningAlgorithmName, key: Buffer, message: Buffer): Buffer {
  switch (alg) {
    case SIGNING_HMAC_SHA256:
      return crypto.createHmac('sha256', key).update(message).digest().subarray(0, SIG_LENGTH);
    case SIGNING_AES_CMAC:
      return aesCmac(key, message);
    case SIGNING_AES_GMAC: {
      requireKey('AES-GMAC', key, [16]);
      const gcm = crypto.createCipheriv('aes-128-gcm', key, gmacNonce(message), { authTagLength: 16 });
      gcm.setAAD(message);
      gcm.final();
      return gcm.getAuthTag();
    }
    default:
      throw new HoldfastError('HF_INVALID_ARGUMENT', `SMB signing: algorithm '${String(alg)}' is not known`);
  }
}

/**
 * Signs an SMB2 message in place, MS-SMB2 §3.1.4.1: zeroes the 16-byte
 * Signature (offset 48), computes the MAC over the whole message (a
 * compound element with its padding), and writes it there. The caller MUST
 * have set SMB2_FLAGS_SIGNED and every other header field first.
 */
export function signMessage(alg: SigningAlgorithmName, key: Buffer, message: Buffer): void {
  if (message.length < HEADER_LENGTH) {
    throw new HoldfastError('HF_INVALID_ARGUMENT', `SMB signing: a message of ${message.length} bytes has no SMB2 header`);
  }
  message.fill(0, SIG_OFFSET, SIG_OFFSET + SIG_LENGTH);
  computeSignature(alg, key, message).copy(message, SIG_OFFSET);
}

/**
 * Verifies an SMB2 message's signature, MS-SMB2 §3.1.5.1, comparing in
 * constant time. The Signature field is zeroed while the MAC is computed
 * and restored before returning, so the caller's buffer is unchanged.
 * False for anything shorter than an SMB2 header.
 */
export function verifyMessage(alg: SigningAlgorithmName, key: Buffer, message: Buffer): boolean {
  if (message.length < HEADER_LENGTH) return false;
  const received = Buffer.from(message.subarray(SIG_OFFSET, SIG_OFFSET + SIG_LENGTH));
  message.fill(0, SIG_OFFSET, SIG_OFFSET + SIG_LENGTH);
  try {
    return crypto.timingSafeEqual(computeSignature(alg, key, message), received);
  } finally {
    received.copy(message, SIG_OFFSET);
  }
}

// ---------------------------------------------------------------------------
// Encryption (MS-SMB2 §2.2.41, §3.1.4.3, §3.2.5.1.1)

/** Size of the SMB2 TRANSFORM_HEADER (§2.2.41). */
export const TRANSFORM_HEADER_SIZE = 52;
const TRANSFORM_PROTOCOL_ID = Buffer.from([0xfd, 0x53, 0x4d, 0x42]); // 0xFD 'S' 'M' 'B'
const TF_SIGNATURE = 4;
const TF_NONCE = 20;
const TF_ORIGINAL_SIZE = 36;
const TF_FLAGS = 42;
const TF_SESSION_ID = 44;
/** Flags (3.1.1) / EncryptionAlgorithm (3.0.x): both are 0x0001. */
const TF_ENCRYPTED = 0x0001;

interface CipherSpec {
  name: 'aes-128-ccm' | 'aes-128-gcm' | 'aes-256-ccm' | 'aes-256-gcm';
  keyLength: number;
  nonceLength: number;
  ccm: boolean;
}

const CIPHERS: Record<number, CipherSpec> = {
  [CipherId.AES_128_CCM]: { name: 'aes-128-ccm', keyLength: 16, nonceLength: 11, ccm: true },
  [CipherId.AES_128_GCM]: { name: 'aes-128-gcm', keyLength: 16, nonceLength: 12, ccm: false },
  [CipherId.AES_256_CCM]: { name: 'aes-256-ccm', keyLength: 32, nonceLength: 11, ccm: true },
  [CipherId.AES_256_GCM]: { name: 'aes-256-gcm', keyLength: 32, nonceLength: 12, ccm: false },
};

function cipherSpec(cipher: number, key: Buffer): CipherSpec {
  const spec = CIPHERS[cipher];
  if (!spec) throw new HoldfastError('HF_INVALID_ARGUMENT', `SMB encryption: cipher id ${cipher} is not known`);
  requireKey(spec.name, key, [spec.keyLength]);
  return spec;
}

/**
 * Encrypts an SMB2 message (MS-SMB2 §3.1.4.3) and returns the
 * TRANSFORM_HEADER followed by the ciphertext. The AEAD's associated data is
 * the header from Nonce to the end (32 bytes), its tag goes in Signature.
 *
 * @param nonce by default `crypto.randomBytes` of the cipher's nonce size
 *   (11 bytes for CCM, 12 for GCM; the rest of the 16-byte field is zero).
 *   Tests may pass that many bytes, or all 16 bytes of the Nonce field (then
 *   written as given; only the first 11/12 are the AEAD nonce). A nonce MUST
 *   NOT repeat under one key.
 */
export function encryptMessage(cipher: number, key: Buffer, sessionId: bigint, message: Buffer, nonce?: Buffer): Buffer {
  const spec = cipherSpec(cipher, key);
  const nonceField = Buffer.alloc(16);
  if (nonce === undefined) {
    crypto.randomFillSync(nonceField, 0, spec.nonceLength);
  } else if (nonce.length === spec.nonceLength || nonce.length === 16) {
    nonce.copy(nonceField);
  } else {
    throw new HoldfastError('HF_INVALID_ARGUMENT', `${spec.name}: a nonce of ${nonce.length} bytes is not valid (${spec.nonceLength} or 16)`);
  }
  const header = Buffer.alloc(TRANSFORM_HEADER_SIZE);
  TRANSFORM_PROTOCOL_ID.copy(header, 0);
  nonceField.copy(header, TF_NONCE);
  header.writeUInt32LE(message.length, TF_ORIGINAL_SIZE);
  header.writeUInt16LE(TF_ENCRYPTED, TF_FLAGS);
  header.writeBigUInt64LE(BigInt.asUintN(64, sessionId), TF_SESSION_ID);

  const aad = header.subarray(TF_NONCE);
  const iv = nonceField.subarray(0, spec.nonceLength);
  let ciphertext: Buffer;
  let tag: Buffer;
  if (spec.ccm) {
    const c = crypto.createCipheriv(spec.name as 'aes-128-ccm', key, iv, { authTagLength: 16 });
    c.setAAD(aad, { plaintextLength: message.length });
    ciphertext = c.update(message);
    c.final();
    tag = c.getAuthTag();
  } else {
    const c = crypto.createCipheriv(spec.name as 'aes-128-gcm', key, iv, { authTagLength: 16 });
    c.setAAD(aad);
    ciphertext = c.update(message);
    c.final();
    tag = c.getAuthTag();
  }
  tag.copy(header, TF_SIGNATURE);
  return Buffer.concat([header, ciphertext], TRANSFORM_HEADER_SIZE + ciphertext.length);
}

/**
 * Decrypts a TRANSFORM_HEADER frame (MS-SMB2 §3.2.5.1.1) and returns the
 * SessionId it names and the SMB2 message it carries.
 *
 * Throws HF_SOURCE_PROTOCOL when the frame is not longer than the header,
 * the ProtocolId or Flags are wrong, OriginalMessageSize does not match the
 * ciphertext, or the tag does not verify (corrupted or forged data, or the
 * wrong key). Nothing is returned from a frame that fails.
 */
export function decryptMessage(cipher: number, key: Buffer, frame: Buffer): { sessionId: bigint; message: Buffer } {
  const spec = cipherSpec(cipher, key);
  if (frame.length <= TRANSFORM_HEADER_SIZE) {
    throw new HoldfastError('HF_SOURCE_PROTOCOL', `encrypted SMB frame of ${frame.length} bytes is not longer than its ${TRANSFORM_HEADER_SIZE}-byte TRANSFORM_HEADER`);
  }
  if (!frame.subarray(0, 4).equals(TRANSFORM_PROTOCOL_ID)) {
    throw new HoldfastError('HF_SOURCE_PROTOCOL', `encrypted SMB frame: ProtocolId ${frame.subarray(0, 4).toString('hex')} is not fd534d42`);
  }
  const flags = frame.readUInt16LE(TF_FLAGS);
  if (flags !== TF_ENCRYPTED) {
    throw new HoldfastError('HF_SOURCE_PROTOCOL', `encrypted SMB frame: Flags/EncryptionAlgorithm is 0x${flags.toString(16)}, not 0x0001`);
  }
  const size = frame.readUInt32LE(TF_ORIGINAL_SIZE);
  const ciphertext = frame.subarray(TRANSFORM_HEADER_SIZE);
  if (size !== ciphertext.length) {
    throw new HoldfastError('HF_SOURCE_PROTOCOL', `encrypted SMB frame: OriginalMessageSize ${size} but ${ciphertext.length} bytes follow the header`);
  }
  const sessionId = frame.readBigUInt64LE(TF_SESSION_ID);
  const aad = frame.subarray(TF_NONCE, TRANSFORM_HEADER_SIZE);
  const iv = frame.subarray(TF_NONCE, TF_NONCE + spec.nonceLength);
  const tag = frame.subarray(TF_SIGNATURE, TF_SIGNATURE + 16);
  try {
    let message: Buffer;
    if (spec.ccm) {
      const d = crypto.createDecipheriv(spec.name as 'aes-128-ccm', key, iv, { authTagLength: 16 });
      d.setAuthTag(tag);
      d.setAAD(aad, { plaintextLength: ciphertext.length });
      message = d.update(ciphertext);
      d.final();
    } else {
      const d = crypto.createDecipheriv(spec.name as 'aes-128-gcm', key, iv, { authTagLength: 16 });
      d.setAuthTag(tag);
      d.setAAD(aad);
      message = d.update(ciphertext);
      d.final();
    }
    return { sessionId, message };
  } catch (err) {
    throw new HoldfastError('HF_SOURCE_PROTOCOL',
      `encrypted SMB message for session 0x${sessionId.toString(16)} failed ${spec.name} authentication: it was corrupted or forged, or the key is wrong`,
      { cause: err });
  }
}
