/**
 * NTLMv2 authentication (MS-NLMP) inside SPNEGO (RFC 4178), the GSS
 * mechanism an SMB client uses in SESSION_SETUP when it has a user name and
 * password.
 *
 * Owns: the three NTLM messages, the NTLMv2 response and key exchange, the
 * NTLM MIC and message signature (for SPNEGO's mechListMIC), and a minimal
 * DER codec for NegTokenInit / NegTokenResp. Must not: send anything, know
 * about SMB headers or derive SMB keys (smb-crypto.ts does that from
 * `sessionKey`).
 *
 * Everything received is parsed strictly: a malformed or truncated token is
 * an HF_SOURCE_PROTOCOL error naming the field, and no read goes past the
 * end of a buffer.
 */

import crypto from 'node:crypto';

import { HoldfastError } from '../../errors/index.ts';
import { md4, rc4 } from './smb-crypto.ts';

// ---------------------------------------------------------------------------
// Constants (MS-NLMP §2.2)

/** NEGOTIATE flags, MS-NLMP §2.2.2.5. */
export const NegotiateFlag = {
  UNICODE: 0x00000001,
  OEM: 0x00000002,
  REQUEST_TARGET: 0x00000004,
  SIGN: 0x00000010,
  SEAL: 0x00000020,
  NTLM: 0x00000200,
  ALWAYS_SIGN: 0x00008000,
  EXTENDED_SESSIONSECURITY: 0x00080000,
  TARGET_INFO: 0x00800000,
  VERSION: 0x02000000,
  NEGOTIATE_128: 0x20000000,
  KEY_EXCH: 0x40000000,
  NEGOTIATE_56: 0x80000000,
} as const;

/** The flags this client asks for (and, intersected with the server's, sends in AUTHENTICATE). */
export const CLIENT_FLAGS = (NegotiateFlag.UNICODE | NegotiateFlag.REQUEST_TARGET | NegotiateFlag.SIGN | NegotiateFlag.SEAL
  | NegotiateFlag.NTLM | NegotiateFlag.ALWAYS_SIGN | NegotiateFlag.EXTENDED_SESSIONSECURITY | NegotiateFlag.TARGET_INFO
  | NegotiateFlag.VERSION | NegotiateFlag.NEGOTIATE_128 | NegotiateFlag.KEY_EXCH | NegotiateFlag.NEGOTIATE_56) >>> 0;

/** AV_PAIR ids, MS-NLMP §2.2.2.1. */
export const AvId = {
  EOL: 0x0000,
  NB_COMPUTER_NAME: 0x0001,
  NB_DOMAIN_NAME: 0x0002,
  DNS_COMPUTER_NAME: 0x0003,
  DNS_DOMAIN_NAME: 0x0004,
  DNS_TREE_NAME: 0x0005,
  FLAGS: 0x0006,
  TIMESTAMP: 0x0007,
  SINGLE_HOST: 0x0008,
  TARGET_NAME: 0x0009,
  CHANNEL_BINDINGS: 0x000a,
} as const;

/** MsvAvFlags bit: the AUTHENTICATE message carries a MIC (§2.2.2.1). */
const AV_FLAG_MIC_PRESENT = 0x00000002;

const SIGNATURE = Buffer.from('NTLMSSP\0', 'latin1');
const MESSAGE_NEGOTIATE = 1;
const MESSAGE_CHALLENGE = 2;
const MESSAGE_AUTHENTICATE = 3;

/**
 * The VERSION structure this client sends (§2.2.2.10): informational only.
 * Product 10.0, build 0, NTLMSSP revision 15.
 */
export const NTLM_VERSION = Buffer.from([10, 0, 0, 0, 0, 0, 0, 0x0f]);

// ---------------------------------------------------------------------------
// NTLMv2 computations (MS-NLMP §3.3.2, §3.4)

const hmacMd5 = (key: Buffer, ...parts: Buffer[]): Buffer => {
  const h = crypto.createHmac('md5', key);
  for (const p of parts) h.update(p);
  return h.digest();
};

const utf16 = (s: string): Buffer => Buffer.from(s, 'utf16le');

/**
 * Upper-cases one UTF-16 code unit at a time, as Windows' upcase table
 * does: a unit whose JavaScript upper case is longer (ß → SS) stays as it
 * is, and surrogates are left alone.
 */
function upcase(s: string): string {
  let out = '';
  for (let i = 0; i < s.length; i++) {
    const unit = s.charAt(i);
    const up = unit.toUpperCase();
    out += up.length === 1 ? up : unit;
  }
  return out;
}

/**
 * NTOWFv2, MS-NLMP §3.3.2: HMAC_MD5(MD4(UTF-16LE(password)),
 * UTF-16LE(UPPER(user) + domain)). The domain is used as given.
 */
export function ntowfv2(password: string, user: string, domain: string): Buffer {
  return hmacMd5(md4(utf16(password)), utf16(upcase(user) + domain));
}

/**
 * The NTLMv2 client challenge structure ("temp", §3.3.2 and §2.2.2.7):
 * RespType 1, HiRespType 1, Z(6), TimeStamp, ChallengeFromClient, Z(4),
 * the AV pairs (ending in MsvAvEOL), Z(4).
 */
export function ntlmv2ClientChallenge(time: Buffer, clientChallenge: Buffer, avPairs: Buffer): Buffer {
  return Buffer.concat([Buffer.from([1, 1, 0, 0, 0, 0, 0, 0]), time, clientChallenge, Buffer.alloc(4), avPairs, Buffer.alloc(4)]);
}

/**
 * NTLMv2 response, §3.3.2: NTProofStr = HMAC_MD5(ResponseKeyNT,
 * ServerChallenge || temp); NtChallengeResponse = NTProofStr || temp;
 * SessionBaseKey = HMAC_MD5(ResponseKeyNT, NTProofStr).
 */
export function ntlmv2Response(responseKeyNT: Buffer, serverChallenge: Buffer, temp: Buffer):
{ ntProofStr: Buffer; ntChallengeResponse: Buffer; sessionBaseKey: Buffer } {
  const ntProofStr = hmacMd5(responseKeyNT, serverChallenge, temp);
  return {
    ntProofStr,
    ntChallengeResponse: Buffer.concat([ntProofStr, temp]),
    sessionBaseKey: hmacMd5(responseKeyNT, ntProofStr),
  };
}

/** LMv2 response, §3.3.2: HMAC_MD5(ResponseKeyLM, ServerChallenge || ClientChallenge) || ClientChallenge. */
export function lmv2Response(responseKeyLM: Buffer, serverChallenge: Buffer, clientChallenge: Buffer): Buffer {
  return Buffer.concat([hmacMd5(responseKeyLM, serverChallenge, clientChallenge), clientChallenge]);
}

/** Session security keys, §3.4.5.2 SIGNKEY and §3.4.5.3 SEALKEY (extended session security). */
export interface NtlmKeys {
  clientSigningKey: Buffer;
  clientSealingKey: Buffer;
  serverSigningKey: Buffer;
  serverSealingKey: Buffer;
}

const magic = (s: string): Buffer => Buffer.from(`session key to ${s} key magic constant\0`, 'latin1');
const CLIENT_SIGN = magic('client-to-server signing');
const CLIENT_SEAL = magic('client-to-server sealing');
const SERVER_SIGN = magic('server-to-client signing');
const SERVER_SEAL = magic('server-to-client sealing');

const md5 = (...parts: Buffer[]): Buffer => {
  const h = crypto.createHash('md5');
  for (const p of parts) h.update(p);
  return h.digest();
};

/**
 * SIGNKEY and SEALKEY (§3.4.5.2, §3.4.5.3) with extended session security:
 * MD5(key || magic); the sealing key uses all 16 bytes of the exported
 * session key with NEGOTIATE_128, 7 with NEGOTIATE_56, else 5.
 */
export function deriveNtlmKeys(exportedSessionKey: Buffer, flags: number): NtlmKeys {
  const sealBase = flags & NegotiateFlag.NEGOTIATE_128 ? exportedSessionKey
    : exportedSessionKey.subarray(0, flags & NegotiateFlag.NEGOTIATE_56 ? 7 : 5);
  return {
    clientSigningKey: md5(exportedSessionKey, CLIENT_SIGN),
    clientSealingKey: md5(sealBase, CLIENT_SEAL),
    serverSigningKey: md5(exportedSessionKey, SERVER_SIGN),
    serverSealingKey: md5(sealBase, SERVER_SEAL),
  };
}

/**
 * NTLMSSP_MESSAGE_SIGNATURE with extended session security, MS-NLMP
 * §3.4.4.2 MAC: Version 1 || checksum || SeqNum, where checksum =
 * HMAC_MD5(SigningKey, SeqNum || Message)[0..7], RC4-sealed with the
 * sealing key when key exchange was negotiated (pass `sealingKey`, or null
 * without key exchange). The RC4 handle is taken fresh, so this is right
 * only for the first message under that sealing key, which is all SPNEGO's
 * mechListMIC needs.
 */
export function ntlmSign(signingKey: Buffer, sealingKey: Buffer | null, seqNum: number, message: Buffer): Buffer {
  const seq = Buffer.alloc(4);
  seq.writeUInt32LE(seqNum);
  let checksum: Buffer = hmacMd5(signingKey, seq, message).subarray(0, 8);
  if (sealingKey) checksum = rc4(sealingKey, checksum);
  return Buffer.concat([Buffer.from([1, 0, 0, 0]), checksum, seq]);
}

/**
 * The AUTHENTICATE message's MIC, §3.1.5.1.2: HMAC_MD5(ExportedSessionKey,
 * NEGOTIATE || CHALLENGE || AUTHENTICATE) with the MIC field zero.
 */
export function ntlmMic(exportedSessionKey: Buffer, negotiate: Buffer, challenge: Buffer, authenticate: Buffer): Buffer {
  return hmacMd5(exportedSessionKey, negotiate, challenge, authenticate);
}

// ---------------------------------------------------------------------------
// CHALLENGE_MESSAGE parsing (§2.2.1.2)

/** One AV_PAIR (§2.2.2.1). */
export interface AvPair {
  id: number;
  value: Buffer;
}

/** What the client needs from a CHALLENGE_MESSAGE. */
export interface NtlmChallenge {
  flags: number;
  serverChallenge: Buffer;
  /** The TargetInfo AV pairs, without the terminating MsvAvEOL. */
  avPairs: AvPair[];
  /** MsvAvTimestamp's 8-byte FILETIME, or null when the server sent none. */
  timestamp: Buffer | null;
}

function protocolError(what: string): HoldfastError {
  return new HoldfastError('HF_SOURCE_PROTOCOL', what);
}

/** Reads a (Len, MaxLen, BufferOffset) field at `at` and returns the bytes it points to, bounds-checked. */
function payloadField(msg: Buffer, at: number, name: string, what: string): Buffer {
  const length = msg.readUInt16LE(at);
  const offset = msg.readUInt32LE(at + 4);
  if (length === 0) return Buffer.alloc(0);
  if (offset > msg.length || length > msg.length - offset) {
    throw protocolError(`${what}: ${name} (offset ${offset}, length ${length}) runs past the end of the ${msg.length}-byte message`);
  }
  return msg.subarray(offset, offset + length);
}

/** Parses AV_PAIRs up to MsvAvEOL (§2.2.2.1), strictly. */
export function parseAvPairs(buf: Buffer, what = 'NTLM TargetInfo'): AvPair[] {
  const pairs: AvPair[] = [];
  let at = 0;
  for (;;) {
    if (buf.length - at < 4) throw protocolError(`${what}: AV_PAIR at offset ${at} is truncated (no MsvAvEOL)`);
    const id = buf.readUInt16LE(at);
    const length = buf.readUInt16LE(at + 2);
    if (length > buf.length - at - 4) {
      throw protocolError(`${what}: AV_PAIR ${id} at offset ${at} claims ${length} bytes, only ${buf.length - at - 4} remain`);
    }
    if (id === AvId.EOL) {
      if (length !== 0) throw protocolError(`${what}: MsvAvEOL has length ${length}, not 0`);
      return pairs;
    }
    const value = buf.subarray(at + 4, at + 4 + length);
    if (id === AvId.TIMESTAMP && length !== 8) throw protocolError(`${what}: MsvAvTimestamp is ${length} bytes, not 8`);
    if (id === AvId.FLAGS && length !== 4) throw protocolError(`${what}: MsvAvFlags is ${length} bytes, not 4`);
    pairs.push({ id, value });
    at += 4 + length;
  }
}

/** Serializes AV_PAIRs and the terminating MsvAvEOL. */
export function encodeAvPairs(pairs: readonly AvPair[]): Buffer {
  const parts: Buffer[] = [];
  for (const { id, value } of [...pairs, { id: AvId.EOL, value: Buffer.alloc(0) }]) {
    const head = Buffer.alloc(4);
    head.writeUInt16LE(id, 0);
    head.writeUInt16LE(value.length, 2);
    parts.push(head, value);
  }
  return Buffer.concat(parts);
}

/**
 * Parses a CHALLENGE_MESSAGE (§2.2.1.2). Throws HF_SOURCE_PROTOCOL naming
 * the problem for a truncated message, a wrong signature or type, a field
 * pointing outside the message, or malformed TargetInfo.
 */
export function parseChallengeMessage(msg: Buffer): NtlmChallenge {
  const what = 'NTLM CHALLENGE_MESSAGE';
  if (msg.length < 32) throw protocolError(`${what} of ${msg.length} bytes is truncated (the fixed part is at least 32)`);
  if (!msg.subarray(0, 8).equals(SIGNATURE)) throw protocolError(`${what} does not start with "NTLMSSP\\0"`);
  const type = msg.readUInt32LE(8);
  if (type !== MESSAGE_CHALLENGE) throw protocolError(`${what}: MessageType is ${type}, not 2`);
  payloadField(msg, 12, 'TargetName', what); // validated, not used
  const flags = msg.readUInt32LE(20);
  const serverChallenge = Buffer.from(msg.subarray(24, 32));
  let avPairs: AvPair[] = [];
  if (flags & NegotiateFlag.TARGET_INFO) {
    if (msg.length < 48) throw protocolError(`${what} of ${msg.length} bytes is truncated: NEGOTIATE_TARGET_INFO is set but TargetInfoFields (bytes 40-47) are missing`);
    const targetInfo = payloadField(msg, 40, 'TargetInfo', what);
    if (targetInfo.length > 0) avPairs = parseAvPairs(targetInfo, `${what} TargetInfo`);
  }
  const ts = avPairs.find((p) => p.id === AvId.TIMESTAMP);
  return { flags, serverChallenge, avPairs, timestamp: ts ? Buffer.from(ts.value) : null };
}

// ---------------------------------------------------------------------------
// SPNEGO and a minimal DER (RFC 4178 §4.2, X.690)

/** DER of the SPNEGO OID 1.3.6.1.5.5.2. */
const SPNEGO_OID = Buffer.from('06062b0601050502', 'hex');
/** Contents of the NTLMSSP mechanism OID 1.3.6.1.4.1.311.2.2.10 (without tag and length). */
export const NTLMSSP_OID = Buffer.from('2b06010401823702020a', 'hex');

/** NegTokenResp negState (RFC 4178 §4.2.2). */
export const NegState = {
  ACCEPT_COMPLETED: 0,
  ACCEPT_INCOMPLETE: 1,
  REJECT: 2,
  REQUEST_MIC: 3,
} as const;

function derLength(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

/** One DER TLV with a single-byte tag. */
function tlv(tag: number, ...content: Buffer[]): Buffer {
  const value = Buffer.concat(content);
  return Buffer.concat([Buffer.from([tag]), derLength(value.length), value]);
}

interface Tlv {
  tag: number;
  value: Buffer;
  /** Offset just past this TLV in the buffer it was read from. */
  end: number;
}

/** Reads one definite-length TLV at `at`, never past the end of `buf`. */
function readTlv(buf: Buffer, at: number, what: string): Tlv {
  if (buf.length - at < 2) throw protocolError(`${what}: truncated DER at offset ${at}`);
  const tag = buf[at]!;
  if ((tag & 0x1f) === 0x1f) throw protocolError(`${what}: multi-byte DER tag at offset ${at} is not supported`);
  let length = buf[at + 1]!;
  let start = at + 2;
  if (length === 0x80) throw protocolError(`${what}: indefinite DER length at offset ${at}`);
  if (length > 0x80) {
    const count = length & 0x7f;
    if (count > 4) throw protocolError(`${what}: a DER length of ${count} bytes at offset ${at} is too long`);
    if (buf.length - start < count) throw protocolError(`${what}: truncated DER length at offset ${at}`);
    length = 0;
    for (let i = 0; i < count; i++) length = length * 256 + buf[start + i]!;
    start += count;
  }
  if (length > buf.length - start) {
    throw protocolError(`${what}: DER element at offset ${at} claims ${length} bytes, only ${buf.length - start} remain`);
  }
  return { tag, value: buf.subarray(start, start + length), end: start + length };
}

/** Reads a TLV that must fill `buf` exactly and carry `tag`. */
function readOnly(buf: Buffer, tag: number, what: string): Buffer {
  const t = readTlv(buf, 0, what);
  if (t.tag !== tag) throw protocolError(`${what}: DER tag 0x${t.tag.toString(16)}, expected 0x${tag.toString(16)}`);
  if (t.end !== buf.length) throw protocolError(`${what}: ${buf.length - t.end} stray bytes after the DER element`);
  return t.value;
}

/** DER of MechTypeList with NTLMSSP only: the bytes SPNEGO's mechListMIC covers (RFC 4178 §5). */
export const MECH_TYPE_LIST = tlv(0x30, tlv(0x06, NTLMSSP_OID));

/**
 * The initial SPNEGO token (RFC 4178 §4.2.1, wrapped as a GSS-API
 * InitialContextToken, RFC 2743 §3.1): NegTokenInit with mechTypes
 * [NTLMSSP] and `mechToken`.
 */
export function encodeNegTokenInit(mechToken: Buffer): Buffer {
  const negTokenInit = tlv(0x30, tlv(0xa0, MECH_TYPE_LIST), tlv(0xa2, tlv(0x04, mechToken)));
  return tlv(0x60, SPNEGO_OID, tlv(0xa0, negTokenInit));
}

/** The fields of a NegTokenResp (RFC 4178 §4.2.2); absent fields are undefined. */
export interface NegTokenResp {
  negState?: number;
  /** Contents of the OID (without tag and length). */
  supportedMech?: Buffer;
  responseToken?: Buffer;
  mechListMIC?: Buffer;
}

/** Encodes a NegTokenResp ([1] SEQUENCE { [0] negState, [1] supportedMech, [2] responseToken, [3] mechListMIC }). */
export function encodeNegTokenResp(resp: NegTokenResp): Buffer {
  const fields: Buffer[] = [];
  if (resp.negState !== undefined) fields.push(tlv(0xa0, tlv(0x0a, Buffer.from([resp.negState]))));
  if (resp.supportedMech !== undefined) fields.push(tlv(0xa1, tlv(0x06, resp.supportedMech)));
  if (resp.responseToken !== undefined) fields.push(tlv(0xa2, tlv(0x04, resp.responseToken)));
  if (resp.mechListMIC !== undefined) fields.push(tlv(0xa3, tlv(0x04, resp.mechListMIC)));
  return tlv(0xa1, tlv(0x30, ...fields));
}

/**
 * Decodes a NegTokenResp strictly: the token is exactly one [1] element
 * holding one SEQUENCE whose fields appear at most once, in order, each
 * with the right inner type. Throws HF_SOURCE_PROTOCOL otherwise.
 */
export function decodeNegTokenResp(token: Buffer): NegTokenResp {
  const what = 'SPNEGO NegTokenResp';
  const seq = readOnly(readOnly(token, 0xa1, what), 0x30, what);
  const resp: NegTokenResp = {};
  let lastField = -1;
  for (let at = 0; at < seq.length;) {
    const field = readTlv(seq, at, what);
    at = field.end;
    const n = field.tag - 0xa0;
    if (n < 0 || n > 3) throw protocolError(`${what}: unknown field with DER tag 0x${field.tag.toString(16)}`);
    if (n <= lastField) throw protocolError(`${what}: field [${n}] is repeated or out of order`);
    lastField = n;
    switch (n) {
      case 0: {
        const v = readOnly(field.value, 0x0a, `${what} negState`);
        if (v.length !== 1 || v[0]! > NegState.REQUEST_MIC) throw protocolError(`${what}: negState ${v.toString('hex')} is not 0-3`);
        resp.negState = v[0]!;
        break;
      }
      case 1: resp.supportedMech = readOnly(field.value, 0x06, `${what} supportedMech`); break;
      case 2: resp.responseToken = readOnly(field.value, 0x04, `${what} responseToken`); break;
      default: resp.mechListMIC = readOnly(field.value, 0x04, `${what} mechListMIC`); break;
    }
  }
  return resp;
}

const isRawNtlmssp = (token: Buffer): boolean => token.length >= 8 && token.subarray(0, 8).equals(SIGNATURE);

// ---------------------------------------------------------------------------
// The authenticator

export interface NtlmAuthenticatorOptions {
  user: string;
  password: string;
  /** The user's domain, sent and hashed as given (default ''). */
  domain?: string;
  /** This machine's name for the server's logs (default ''). */
  workstation?: string;
  /** Random bytes for the client challenge and session key (default crypto.randomBytes). */
  random?: (n: number) => Buffer;
  /** The current time as a FILETIME (100 ns ticks since 1601), used when the server sends no timestamp. */
  now?: () => bigint;
}

const FILETIME_UNIX_EPOCH_MS = 11644473600000n;
const defaultNow = (): bigint => (BigInt(Date.now()) + FILETIME_UNIX_EPOCH_MS) * 10000n;

/**
 * One NTLMv2 logon in SPNEGO, client side (MS-NLMP §3.1.5.1, MS-SPNG,
 * RFC 4178). Use it once: `initialToken()`, then `respond()` with the
 * server's challenge token, then `complete()` with the server's final token.
 *
 * A server that answers in raw NTLMSSP instead of SPNEGO gets raw NTLMSSP
 * back (no mechListMIC, which only exists in SPNEGO).
 */
export class NtlmAuthenticator {
  readonly #user: string;
  readonly #password: string;
  readonly #domain: string;
  readonly #workstation: string;
  readonly #random: (n: number) => Buffer;
  readonly #now: () => bigint;
  #state: 'new' | 'negotiated' | 'authenticated' | 'complete' = 'new';
  #negotiate: Buffer | null = null;
  #exportedSessionKey: Buffer | null = null;
  #keys: NtlmKeys | null = null;
  #keyExchange = false;

  constructor(opts: NtlmAuthenticatorOptions) {
    this.#user = opts.user;
    this.#password = opts.password;
    this.#domain = opts.domain ?? '';
    this.#workstation = opts.workstation ?? '';
    this.#random = opts.random ?? ((n) => crypto.randomBytes(n));
    this.#now = opts.now ?? defaultNow;
  }

  /**
   * The ExportedSessionKey (16 bytes), MS-NLMP §3.1.5.1.2: the GSS session
   * key SMB derives its keys from. Valid after `respond()`.
   */
  get sessionKey(): Buffer {
    if (!this.#exportedSessionKey) {
      throw new HoldfastError('HF_SOURCE_PROTOCOL', 'NTLM: there is no session key yet; the logon ended before the server sent its challenge');
    }
    return this.#exportedSessionKey;
  }

  /** The first token: SPNEGO NegTokenInit carrying the NEGOTIATE_MESSAGE (§2.2.1.1). */
  initialToken(): Buffer {
    if (this.#state !== 'new') throw new HoldfastError('HF_INVALID_ARGUMENT', 'NTLM: initialToken() was already called; use a new NtlmAuthenticator per logon');
    const msg = Buffer.alloc(40);
    SIGNATURE.copy(msg, 0);
    msg.writeUInt32LE(MESSAGE_NEGOTIATE, 8);
    msg.writeUInt32LE(CLIENT_FLAGS, 12);
    // DomainNameFields and WorkstationFields (16-31) stay empty: no OEM_*_SUPPLIED flags
    NTLM_VERSION.copy(msg, 32);
    this.#negotiate = msg;
    this.#state = 'negotiated';
    return encodeNegTokenInit(msg);
  }

  /**
   * Takes the server's token carrying the CHALLENGE_MESSAGE (a NegTokenResp,
   * or raw NTLMSSP) and returns the token carrying the AUTHENTICATE_MESSAGE:
   * a NegTokenResp with mechListMIC when the NTLM MIC was sent, or raw
   * NTLMSSP to a raw server.
   *
   * Throws HF_SOURCE_AUTH_FAILED when the server rejects (negState reject),
   * HF_SOURCE_PROTOCOL when the token or challenge is malformed or the
   * server will not do Unicode or extended session security.
   */
  respond(serverToken: Buffer): Buffer {
    if (this.#state !== 'negotiated' || !this.#negotiate) {
      throw new HoldfastError('HF_SOURCE_PROTOCOL', `NTLM: a challenge arrived in state '${this.#state}'; expected exactly one, after the first token`);
    }
    const spnego = !isRawNtlmssp(serverToken);
    const challengeMsg = spnego ? this.#challengeFromSpnego(serverToken) : serverToken;
    const challenge = parseChallengeMessage(challengeMsg);
    if (!(challenge.flags & NegotiateFlag.UNICODE)) {
      throw protocolError('NTLM CHALLENGE_MESSAGE: the server does not offer Unicode (NTLMSSP_NEGOTIATE_UNICODE); OEM strings are not supported');
    }
    if (!(challenge.flags & NegotiateFlag.EXTENDED_SESSIONSECURITY)) {
      throw protocolError('NTLM CHALLENGE_MESSAGE: the server did not agree to extended session security (NTLMSSP_NEGOTIATE_EXTENDED_SESSIONSECURITY)');
    }
    const { message, micSent } = this.#authenticate(challenge, challengeMsg);
    this.#state = 'authenticated';
    if (!spnego) return message;
    return encodeNegTokenResp({
      negState: NegState.ACCEPT_INCOMPLETE,
      responseToken: message,
      ...(micSent ? { mechListMIC: this.#mechListMic('client') } : {}),
    });
  }

  /**
   * Takes the server's final token (null or empty when it sent none).
   * Verifies the server's mechListMIC (NTLM signature, sequence 0, server
   * keys) when present; a final token without one is accepted, as RFC 4178
   * §5 allows when only one mechanism was offered.
   *
   * Throws HF_SOURCE_AUTH_FAILED when negState is reject or the server's
   * mechListMIC does not verify (it does not hold the session key),
   * HF_SOURCE_PROTOCOL for a malformed token or one asking for more rounds.
   */
  complete(serverToken: Buffer | null): void {
    if (this.#state !== 'authenticated') {
      throw new HoldfastError('HF_SOURCE_PROTOCOL', `NTLM: the logon completed in state '${this.#state}', before the AUTHENTICATE_MESSAGE was sent`);
    }
    this.#state = 'complete';
    if (!serverToken || serverToken.length === 0) return;
    const resp = decodeNegTokenResp(serverToken);
    if (resp.negState === NegState.REJECT) {
      throw new HoldfastError('HF_SOURCE_AUTH_FAILED', 'the server rejected the NTLM logon (SPNEGO negState reject); check the user name, domain and password');
    }
    if (resp.negState !== undefined && resp.negState !== NegState.ACCEPT_COMPLETED) {
      throw protocolError(`SPNEGO: the server's final token has negState ${resp.negState}, not accept-completed`);
    }
    if (resp.mechListMIC) {
      const expected = this.#mechListMic('server');
      if (resp.mechListMIC.length !== expected.length || !crypto.timingSafeEqual(resp.mechListMIC, expected)) {
        throw new HoldfastError('HF_SOURCE_AUTH_FAILED',
          'the server\'s SPNEGO mechListMIC does not verify: it does not hold this logon\'s session key (a different server, or the connection was tampered with)');
      }
    }
  }

  #challengeFromSpnego(serverToken: Buffer): Buffer {
    const resp = decodeNegTokenResp(serverToken);
    if (resp.negState === NegState.REJECT) {
      throw new HoldfastError('HF_SOURCE_AUTH_FAILED', 'the server rejected the NTLM logon before the challenge (SPNEGO negState reject)');
    }
    if (resp.negState === NegState.ACCEPT_COMPLETED) {
      throw protocolError('SPNEGO: the server reported accept-completed where an NTLM challenge was expected');
    }
    if (resp.supportedMech && !resp.supportedMech.equals(NTLMSSP_OID)) {
      throw protocolError(`SPNEGO: the server chose mechanism ${resp.supportedMech.toString('hex')}, not NTLMSSP`);
    }
    if (!resp.responseToken || resp.responseToken.length === 0) {
      throw protocolError('SPNEGO: the server\'s NegTokenResp carries no responseToken (no NTLM challenge)');
    }
    return resp.responseToken;
  }

  /** Builds the AUTHENTICATE_MESSAGE (§2.2.1.3, §3.1.5.1.2) and sets the session key. */
  #authenticate(challenge: NtlmChallenge, challengeMsg: Buffer): { message: Buffer; micSent: boolean } {
    const flags = (CLIENT_FLAGS & (challenge.flags | NegotiateFlag.REQUEST_TARGET)) >>> 0;
    const clientChallenge = this.#randomBytes(8);
    const withMic = challenge.timestamp !== null;
    const time = challenge.timestamp ?? filetime(this.#now());

    // With a server timestamp the client sends a MIC and says so in MsvAvFlags (§3.1.5.1.2).
    const pairs: AvPair[] = challenge.avPairs.map((p) => ({ id: p.id, value: Buffer.from(p.value) }));
    if (withMic) {
      const flagsPair = pairs.find((p) => p.id === AvId.FLAGS);
      if (flagsPair) flagsPair.value.writeUInt32LE((flagsPair.value.readUInt32LE(0) | AV_FLAG_MIC_PRESENT) >>> 0, 0);
      else pairs.push({ id: AvId.FLAGS, value: u32(AV_FLAG_MIC_PRESENT) });
    }

    const responseKey = ntowfv2(this.#password, this.#user, this.#domain);
    const temp = ntlmv2ClientChallenge(time, clientChallenge, encodeAvPairs(pairs));
    const { ntChallengeResponse, sessionBaseKey } = ntlmv2Response(responseKey, challenge.serverChallenge, temp);
    // §3.1.5.1.2: with MsvAvTimestamp the LmChallengeResponse is Z(24)
    const lmChallengeResponse = withMic ? Buffer.alloc(24) : lmv2Response(responseKey, challenge.serverChallenge, clientChallenge);

    // §3.4.5.1 KXKEY for NTLMv2 is the SessionBaseKey; §3.1.5.1.2 key exchange
    const keyExchangeKey = sessionBaseKey;
    this.#keyExchange = (flags & NegotiateFlag.KEY_EXCH) !== 0;
    let exportedSessionKey: Buffer = keyExchangeKey;
    let encryptedRandomSessionKey: Buffer = Buffer.alloc(0);
    if (this.#keyExchange) {
      exportedSessionKey = this.#randomBytes(16);
      encryptedRandomSessionKey = rc4(keyExchangeKey, exportedSessionKey);
    }

    const message = buildAuthenticate({
      flags,
      lmChallengeResponse,
      ntChallengeResponse,
      domain: utf16(this.#domain),
      user: utf16(this.#user),
      workstation: utf16(this.#workstation),
      encryptedRandomSessionKey,
      withMic,
    });
    if (withMic) ntlmMic(exportedSessionKey, this.#negotiate!, challengeMsg, message).copy(message, AUTH_MIC_OFFSET);

    this.#exportedSessionKey = exportedSessionKey;
    this.#keys = deriveNtlmKeys(exportedSessionKey, flags);
    return { message, micSent: withMic };
  }

  /** SPNEGO mechListMIC: the NTLM signature (seq 0) over MechTypeList, in one direction's keys. */
  #mechListMic(direction: 'client' | 'server'): Buffer {
    const keys = this.#keys!;
    const signing = direction === 'client' ? keys.clientSigningKey : keys.serverSigningKey;
    const sealing = direction === 'client' ? keys.clientSealingKey : keys.serverSealingKey;
    return ntlmSign(signing, this.#keyExchange ? sealing : null, 0, MECH_TYPE_LIST);
  }

  #randomBytes(n: number): Buffer {
    const b = this.#random(n);
    if (b.length !== n) throw new HoldfastError('HF_INVALID_ARGUMENT', `NTLM: the random source returned ${b.length} bytes, not ${n}`);
    return b;
  }
}

const u32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
};

const filetime = (t: bigint): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt.asUintN(64, t));
  return b;
};

/** Offset of the MIC in an AUTHENTICATE_MESSAGE that carries one (§2.2.1.3). */
const AUTH_MIC_OFFSET = 72;

interface AuthenticateFields {
  flags: number;
  lmChallengeResponse: Buffer;
  ntChallengeResponse: Buffer;
  domain: Buffer;
  user: Buffer;
  workstation: Buffer;
  encryptedRandomSessionKey: Buffer;
  withMic: boolean;
}

/**
 * Lays out an AUTHENTICATE_MESSAGE (§2.2.1.3): the fixed part with Version
 * (zero unless NEGOTIATE_VERSION) and, when `withMic`, a zero MIC for the
 * caller to fill in; the payload in the order of MS-NLMP's example (§4.2.4.3):
 * domain, user, workstation, LM and NT responses, session key.
 */
function buildAuthenticate(f: AuthenticateFields): Buffer {
  const fixed = f.withMic ? AUTH_MIC_OFFSET + 16 : AUTH_MIC_OFFSET;
  const fields: [number, Buffer][] = [
    [28, f.domain], [36, f.user], [44, f.workstation],
    [12, f.lmChallengeResponse], [20, f.ntChallengeResponse], [52, f.encryptedRandomSessionKey],
  ];
  const total = fields.reduce((n, [, b]) => n + b.length, fixed);
  const msg = Buffer.alloc(total);
  SIGNATURE.copy(msg, 0);
  msg.writeUInt32LE(MESSAGE_AUTHENTICATE, 8);
  let offset = fixed;
  for (const [at, bytes] of fields) {
    if (bytes.length > 0xffff) throw new HoldfastError('HF_INVALID_ARGUMENT', 'NTLM: a field of the AUTHENTICATE_MESSAGE is longer than 65535 bytes');
    msg.writeUInt16LE(bytes.length, at);
    msg.writeUInt16LE(bytes.length, at + 2);
    msg.writeUInt32LE(offset, at + 4);
    bytes.copy(msg, offset);
    offset += bytes.length;
  }
  msg.writeUInt32LE(f.flags, 60);
  if (f.flags & NegotiateFlag.VERSION) NTLM_VERSION.copy(msg, 64);
  return msg;
}
