import crypto from 'node:crypto';

import { HoldfastError, hasCode } from '../../errors/index.ts';
import { NtlmAuthenticator } from './ntlm-authenticator.ts';
import { type Protection, type SigningAlg, SmbConnection, SmbStatusError, type Smb2Response } from './smb-connection.ts';
import { deriveSmb3Keys, preauthHashUpdate, verifyMessage } from './smb-crypto.ts';
import {
  Access, Attr, CIPHER_PREFERENCE, CREATE_CONTEXT_TIMEWARP, Capability, Cipher, Command, CreateOption, Dialect,
  FILE_OPEN, FSCTL_GET_REPARSE_POINT, FSCTL_SRV_ENUMERATE_SNAPSHOTS, HEADER_SIZE, HeaderFlag, IMPERSONATION,
  INFO_TYPE_FILE, IOCTL_IS_FSCTL, InfoClass, NegotiateContext, SESSION_FLAG_ENCRYPT_DATA, SESSION_FLAG_IS_GUEST,
  SESSION_FLAG_IS_NULL, SHARE_FLAG_ENCRYPT_DATA, SHARE_TYPE_DISK, SIGNING_ENABLED, SIGNING_PREFERENCE, SIGNING_REQUIRED,
  ShareAccess, SigningAlgorithm, Status, statusIsLogonFailure, statusName,
} from './smb2-wire.ts';

export interface SmbClientOptions {
  host: string;
  port?: number;
  user: string;
  password: string;
  domain?: string;
  share: string;
  /** Per request; a server silent this long is treated as gone. */
  timeoutMs?: number;
  /** Encrypt even when the server does not demand it. */
  encrypt?: boolean;
  /** Lowest dialect accepted (default SMB 2.1). */
  minDialect?: number;
  /** Highest dialect offered (default SMB 3.1.1); for servers that mishandle newer ones, and tests. */
  maxDialect?: number;
}

/** What CREATE and QUERY_DIRECTORY tell about a file (MS-FSCC FILETIMEs kept raw). */
export interface SmbFileInfo {
  creationTime: bigint;
  lastWriteTime: bigint;
  changeTime: bigint;
  endOfFile: bigint;
  attributes: number;
  /** The reparse tag when attributes has REPARSE_POINT (directory listings only). */
  reparseTag: number;
  fileId: bigint;
}

export interface SmbDirEntry extends SmbFileInfo {
  /** The name as UTF-16LE bytes, exactly as the server sent it. */
  name16: Buffer;
}

export interface SmbOpenFile {
  /** Persistent + volatile file id, 16 bytes. */
  id: Buffer;
  info: SmbFileInfo;
}

/** Bytes asked per READ (credit charge 16); clamped to the server's MaxReadSize. */
export const READ_SIZE = 1 << 20;
/** Bytes asked per QUERY_DIRECTORY. */
const DIR_BUFFER = 256 << 10;

const ALG_NAME: Record<number, SigningAlg> = {
  [SigningAlgorithm.HMAC_SHA256]: 'hmac-sha256',
  [SigningAlgorithm.AES_CMAC]: 'aes-cmac',
  [SigningAlgorithm.AES_GMAC]: 'aes-gmac',
};

/**
 * An authenticated SMB2/3 session with one tree (share) connected, on its own
 * connection. Negotiates the highest of SMB 2.1, 3.0, 3.0.2 and 3.1.1 the
 * server offers, authenticates with NTLMv2 in SPNEGO, signs every request
 * after authentication (and requires signed responses), and encrypts when the
 * session or share demands it or `encrypt` is set. File operations are
 * read-only: this client never asks for write, delete or ownership access.
 *
 * - Methods reject with SmbStatusError (a per-path failure, `code` errno-like)
 *   or HoldfastError (HF_SOURCE_DISCONNECTED, HF_SOURCE_PROTOCOL).
 * - Paths are share-relative, backslash-separated, without a leading
 *   backslash ('' is the share root).
 */
export class SmbClient {
  readonly dialect: number;
  readonly maxReadSize: number;
  readonly maxTransactSize: number;
  readonly signingAlg: SigningAlg;
  /** Cipher in use, or 0 when messages are signed, not encrypted. */
  readonly cipher: number;
  readonly share: string;
  #conn: SmbConnection;
  #sessionId: bigint;
  #treeId: number;
  #protection: Protection;
  #treeProtection: Protection;

  private constructor(init: {
    conn: SmbConnection; dialect: number; maxReadSize: number; maxTransactSize: number; signingAlg: SigningAlg;
    cipher: number; share: string; sessionId: bigint; treeId: number; protection: Protection; treeProtection: Protection;
  }) {
    this.#conn = init.conn;
    this.dialect = init.dialect;
    this.maxReadSize = init.maxReadSize;
    this.maxTransactSize = init.maxTransactSize;
    this.signingAlg = init.signingAlg;
    this.cipher = init.cipher;
    this.share = init.share;
    this.#sessionId = init.sessionId;
    this.#treeId = init.treeId;
    this.#protection = init.protection;
    this.#treeProtection = init.treeProtection;
  }

  get closed(): boolean {
    return this.#conn.closed;
  }

  /** A readable description: dialect and protection, for logs and snapshot notes. */
  get security(): string {
    const d = dialectName(this.dialect);
    return this.#treeProtection.encrypt ? `${d}, encrypted (${cipherName(this.cipher)})` : `${d}, signed (${this.signingAlg})`;
  }

  /**
   * Connects, negotiates, authenticates and connects the share. Rejects with
   * HF_SOURCE_UNREACHABLE, HF_SOURCE_AUTH_FAILED, HF_SOURCE_SHARE_NOT_FOUND,
   * HF_SMB_SIGNING_REQUIRED or HF_SOURCE_PROTOCOL, each naming the server.
   */
  static async connect(opts: SmbClientOptions): Promise<SmbClient> {
    const port = opts.port ?? 445;
    const timeoutMs = opts.timeoutMs ?? 30_000;
    const conn = await SmbConnection.connect(opts.host, port, timeoutMs);
    try {
      return await SmbClient.#setup(conn, opts);
    } catch (err) {
      conn.close();
      throw err;
    }
  }

  static async #setup(conn: SmbConnection, opts: SmbClientOptions): Promise<SmbClient> {
    const where = `SMB server ${opts.host}:${conn.port}`;
    // NEGOTIATE (§3.2.4.2.2.2)
    const salt = crypto.randomBytes(32);
    const negReq = negotiateRequest(salt, opts.minDialect ?? Dialect.SMB2_1, opts.maxDialect ?? Dialect.SMB3_1_1);
    let neg: Smb2Response;
    let negSent: Buffer;
    try {
      const sent = await conn.send(Command.NEGOTIATE, negReq);
      negSent = sent.message;
      neg = await sent.response;
    } catch (err) {
      const hint = (opts.maxDialect ?? Dialect.SMB3_1_1) < Dialect.SMB3_1_1
        ? 'it may require a newer dialect than the maximum configured, or speak only SMB 1, which Holdfast does not speak'
        : 'it may speak only SMB 1, which Holdfast does not speak (enable SMB 2 or 3 on the server)';
      if (err instanceof SmbStatusError) {
        throw new HoldfastError('HF_SOURCE_PROTOCOL',
          `${where} refused every SMB dialect offered (${dialectRange(opts)}): ${statusName(err.status)}; ${hint}`, { cause: err });
      }
      if (hasCode(err, 'HF_SOURCE_DISCONNECTED')) {
        throw new HoldfastError('HF_SOURCE_PROTOCOL',
          `${where} ended the connection, or did not answer, when offered SMB ${dialectRange(opts)} (${(err as Error).message}); ${hint}`, { cause: err });
      }
      throw err;
    }
    const n = parseNegotiate(neg, where);
    if (n.dialect < (opts.minDialect ?? Dialect.SMB2_1)) {
      throw new HoldfastError('HF_SOURCE_PROTOCOL',
        `${where} chose SMB dialect ${dialectName(n.dialect)}, below the minimum configured (${dialectName(opts.minDialect ?? Dialect.SMB2_1)})`);
    }
    let preauth: Buffer = Buffer.alloc(64);
    if (n.dialect === Dialect.SMB3_1_1) {
      preauth = preauthHashUpdate(preauthHashUpdate(preauth, negSent), neg.message);
    }
    const signingAlg: SigningAlg = n.dialect === Dialect.SMB2_1 ? 'hmac-sha256' : ALG_NAME[n.signingAlgorithm]!;
    if (opts.encrypt && !n.cipher) {
      throw new HoldfastError('HF_SMB_SIGNING_REQUIRED', `${where} does not offer SMB3 encryption, which this source requires (dialect 0x${n.dialect.toString(16)})`);
    }

    // SESSION_SETUP rounds (§3.2.4.2.3), NTLMv2 in SPNEGO
    const auth = new NtlmAuthenticator({ user: opts.user, password: opts.password, domain: opts.domain ?? '' });
    let token = auth.initialToken();
    let sessionId = 0n;
    let final: Smb2Response | null = null;
    for (let round = 0; round < 4 && !final; round++) {
      const body = sessionSetupRequest(token);
      let sent;
      let resp: Smb2Response;
      try {
        sent = await conn.send(Command.SESSION_SETUP, body, { sessionId, accept: [Status.MORE_PROCESSING_REQUIRED] });
        if (n.dialect === Dialect.SMB3_1_1) preauth = preauthHashUpdate(preauth, sent.message);
        resp = await sent.response;
      } catch (err) {
        if (err instanceof SmbStatusError && statusIsLogonFailure(err.status)) {
          throw new HoldfastError('HF_SOURCE_AUTH_FAILED',
            `${where} refused user '${opts.domain ? `${opts.domain}\\` : ''}${opts.user}' (${statusName(err.status)}); check the user name, domain and password`,
            { cause: err });
        }
        if (err instanceof SmbStatusError) {
          throw new HoldfastError('HF_SOURCE_AUTH_FAILED', `${where}: logon failed with ${statusName(err.status)}`, { cause: err });
        }
        throw err;
      }
      sessionId = resp.header.sessionId;
      const secBuf = bufferAt(resp, resp.body.readUInt16LE(4), resp.body.readUInt16LE(6), where);
      if (resp.header.status === Status.MORE_PROCESSING_REQUIRED) {
        if (n.dialect === Dialect.SMB3_1_1) preauth = preauthHashUpdate(preauth, resp.message);
        token = auth.respond(secBuf);
      } else {
        auth.complete(secBuf.length > 0 ? secBuf : null);
        final = resp;
      }
    }
    if (!final) throw new HoldfastError('HF_SOURCE_PROTOCOL', `${where}: logon did not finish after 4 rounds`);
    const sessionFlags = final.body.readUInt16LE(2);
    if (sessionFlags & (SESSION_FLAG_IS_GUEST | SESSION_FLAG_IS_NULL)) {
      throw new HoldfastError('HF_SOURCE_AUTH_FAILED',
        `${where} logged '${opts.user}' in as a guest (unknown user or wrong password mapped to guest); check the user name and password`);
    }

    // Keys (§3.2.5.3.1)
    const sessionKey = auth.sessionKey;
    let signKey: Buffer;
    let encKey: Buffer | null = null;
    let decKey: Buffer | null = null;
    if (n.dialect === Dialect.SMB2_1) {
      signKey = sessionKey;
    } else {
      const keys = deriveSmb3Keys(sessionKey, n.dialect, n.dialect === Dialect.SMB3_1_1 ? preauth : null, n.cipher);
      signKey = keys.signingKey;
      if (n.cipher) {
        encKey = keys.encryptionKey;
        decKey = keys.decryptionKey;
      }
    }
    const sign = { alg: signingAlg, key: signKey };
    // The final SESSION_SETUP response is signed with the new key (§3.2.5.3.1); check it.
    if ((final.header.flags & HeaderFlag.SIGNED) !== 0) {
      if (!verifyMessage(signingAlg, signKey, final.message)) {
        throw new HoldfastError('HF_SOURCE_AUTH_FAILED',
          `${where}: the signature of the logon response is wrong; the password is probably wrong (or the connection was tampered with)`);
      }
    } else if (!(sessionFlags & SESSION_FLAG_ENCRYPT_DATA)) {
      throw new HoldfastError('HF_SOURCE_PROTOCOL', `${where} did not sign the logon response; refusing an unauthenticated session`);
    }
    if (decKey && n.cipher) conn.setDecryption(sessionId, n.cipher, decKey);
    const encryptSession = (sessionFlags & SESSION_FLAG_ENCRYPT_DATA) !== 0 || opts.encrypt === true;
    if (encryptSession && !encKey) {
      throw new HoldfastError('HF_SMB_SIGNING_REQUIRED', `${where} requires encryption but agreed on no cipher`);
    }
    const protection: Protection = encryptSession ? { sign: null, encrypt: { cipher: n.cipher, key: encKey! } } : { sign, encrypt: null };
    conn.requireSigning(sessionId, sign);

    // TREE_CONNECT (§3.2.4.2.4)
    const unc = Buffer.from(`\\\\${opts.host}\\${opts.share}`, 'utf16le');
    const tcBody = Buffer.alloc(8 + unc.length);
    tcBody.writeUInt16LE(9, 0);
    tcBody.writeUInt16LE(HEADER_SIZE + 8, 4);
    tcBody.writeUInt16LE(unc.length, 6);
    unc.copy(tcBody, 8);
    let tc: Smb2Response;
    try {
      tc = await conn.request(Command.TREE_CONNECT, tcBody, { sessionId, protection });
    } catch (err) {
      if (err instanceof SmbStatusError && err.status === Status.BAD_NETWORK_NAME) {
        throw new HoldfastError('HF_SOURCE_SHARE_NOT_FOUND',
          `${where} has no share '${opts.share}'; check the share name (\`smbclient -L ${opts.host}\` lists them)`, { cause: err });
      }
      if (err instanceof SmbStatusError && err.status === Status.ACCESS_DENIED) {
        throw new HoldfastError('HF_SOURCE_AUTH_FAILED',
          `${where} denies user '${opts.user}' access to share '${opts.share}'; grant the user read access to the share`, { cause: err });
      }
      throw err;
    }
    if (tc.body.length < 16) throw new HoldfastError('HF_SOURCE_PROTOCOL', `${where}: short TREE_CONNECT response`);
    if (tc.body.readUInt8(2) !== SHARE_TYPE_DISK) {
      throw new HoldfastError('HF_SOURCE_SHARE_NOT_FOUND', `${where}: '${opts.share}' is not a disk share (a printer or IPC share cannot be backed up)`);
    }
    const shareFlags = tc.body.readUInt32LE(4);
    let treeProtection = protection;
    if ((shareFlags & SHARE_FLAG_ENCRYPT_DATA) && !protection.encrypt) {
      if (!encKey) throw new HoldfastError('HF_SMB_SIGNING_REQUIRED', `${where}: share '${opts.share}' requires encryption, which dialect 0x${n.dialect.toString(16)} cannot do`);
      treeProtection = { sign: null, encrypt: { cipher: n.cipher, key: encKey } };
    }
    return new SmbClient({
      conn, dialect: n.dialect, maxReadSize: n.maxReadSize, maxTransactSize: n.maxTransactSize, signingAlg,
      cipher: treeProtection.encrypt ? n.cipher : 0, share: opts.share, sessionId, treeId: tc.header.treeId,
      protection, treeProtection,
    });
  }

  #request(command: number, body: Buffer, creditCharge = 1, accept: readonly number[] = []): Promise<Smb2Response> {
    return this.#conn.request(command, body, {
      sessionId: this.#sessionId, treeId: this.#treeId, protection: this.#treeProtection, creditCharge, accept,
    });
  }

  /**
   * Opens a file or directory for reading attributes and data, sharing
   * read, write and delete with everyone else (a backup must not lock users
   * out), without following a final symlink or reparse point. `timewarp`
   * (FILETIME) opens it as of that previous version (§2.2.13.2.7).
   */
  async open(path: string, opts: {
    directory?: boolean; timewarp?: bigint | null; attributesOnly?: boolean;
    /** Sharing granted to others (default read, write and delete: a backup never locks users out). */
    shareAccess?: number;
  } = {}): Promise<SmbOpenFile> {
    const name = Buffer.from(path, 'utf16le');
    const nameOff = HEADER_SIZE + 56;
    const ctxOff = opts.timewarp ? align8(nameOff + Math.max(name.length, 1)) : 0;
    const body = Buffer.alloc(ctxOff ? ctxOff - HEADER_SIZE + 32 : 56 + Math.max(name.length, 1));
    body.writeUInt16LE(57, 0);
    body.writeUInt32LE(IMPERSONATION, 4);
    const access = Access.FILE_READ_ATTRIBUTES | Access.SYNCHRONIZE | (opts.attributesOnly ? 0 : Access.FILE_READ_DATA);
    body.writeUInt32LE(access, 24);
    body.writeUInt32LE(opts.shareAccess ?? (ShareAccess.READ | ShareAccess.WRITE | ShareAccess.DELETE), 32);
    body.writeUInt32LE(FILE_OPEN, 36);
    let options = CreateOption.OPEN_REPARSE_POINT;
    if (opts.directory === true) options |= CreateOption.DIRECTORY_FILE;
    if (opts.directory === false) options |= CreateOption.NON_DIRECTORY_FILE | CreateOption.SEQUENTIAL_ONLY;
    body.writeUInt32LE(options, 40);
    body.writeUInt16LE(nameOff, 44);
    body.writeUInt16LE(name.length, 46);
    name.copy(body, 56);
    if (ctxOff) {
      const c = ctxOff - HEADER_SIZE;
      body.writeUInt32LE(ctxOff, 48);
      body.writeUInt32LE(32, 52);
      body.writeUInt32LE(0, c); // Next
      body.writeUInt16LE(16, c + 4); // NameOffset
      body.writeUInt16LE(4, c + 6); // NameLength
      body.writeUInt16LE(24, c + 10); // DataOffset
      body.writeUInt32LE(8, c + 12); // DataLength
      CREATE_CONTEXT_TIMEWARP.copy(body, c + 16);
      body.writeBigUInt64LE(opts.timewarp!, c + 24);
    }
    const r = await this.#request(Command.CREATE, body);
    const b = r.body;
    if (b.length < 88) throw new HoldfastError('HF_SOURCE_PROTOCOL', `SMB server ${this.#conn.host}: short CREATE response`);
    return {
      id: Buffer.from(b.subarray(64, 80)),
      info: {
        creationTime: b.readBigUInt64LE(8),
        lastWriteTime: b.readBigUInt64LE(24),
        changeTime: b.readBigUInt64LE(32),
        endOfFile: b.readBigUInt64LE(48),
        attributes: b.readUInt32LE(56),
        reparseTag: 0,
        fileId: 0n,
      },
    };
  }

  /** Closes a handle; errors are ignored when the connection is gone. */
  async close(id: Buffer): Promise<void> {
    if (this.#conn.closed) return;
    const body = Buffer.alloc(24);
    body.writeUInt16LE(24, 0);
    id.copy(body, 8);
    await this.#request(Command.CLOSE, body).catch((err: unknown) => {
      if (!(err instanceof SmbStatusError) && !this.#conn.closed) throw err;
    });
  }

  /**
   * Closes a handle and returns the file's times, size and attributes as of
   * the close (SMB2_CLOSE_FLAG_POSTQUERY_ATTRIB, §2.2.15): what changed while
   * it was open shows here, without another round trip.
   */
  async closeAndQuery(id: Buffer): Promise<SmbFileInfo> {
    const body = Buffer.alloc(24);
    body.writeUInt16LE(24, 0);
    body.writeUInt16LE(0x0001, 2);
    id.copy(body, 8);
    const b = (await this.#request(Command.CLOSE, body)).body;
    if (b.length < 60) throw new HoldfastError('HF_SOURCE_PROTOCOL', `SMB server ${this.#conn.host}: short CLOSE response`);
    return {
      creationTime: b.readBigUInt64LE(8),
      lastWriteTime: b.readBigUInt64LE(24),
      changeTime: b.readBigUInt64LE(32),
      endOfFile: b.readBigUInt64LE(48),
      attributes: b.readUInt32LE(56),
      reparseTag: 0,
      fileId: 0n,
    };
  }

  /** The server's file id of an open handle (FileInternalInformation). */
  async fileId(id: Buffer): Promise<bigint> {
    const out = await this.queryInfo(id, InfoClass.FileInternalInformation, 8);
    if (out.length < 8) throw new HoldfastError('HF_SOURCE_PROTOCOL', `SMB server ${this.#conn.host}: short FileInternalInformation`);
    return out.readBigUInt64LE(0);
  }

  async queryInfo(id: Buffer, infoClass: number, outputLength: number): Promise<Buffer> {
    const body = Buffer.alloc(41);
    body.writeUInt16LE(41, 0);
    body.writeUInt8(INFO_TYPE_FILE, 2);
    body.writeUInt8(infoClass, 3);
    body.writeUInt32LE(outputLength, 4);
    id.copy(body, 24);
    const r = await this.#request(Command.QUERY_INFO, body);
    return bufferAt(r, r.body.readUInt16LE(2), r.body.readUInt32LE(4), `SMB server ${this.#conn.host}`);
  }

  /**
   * Lists an open directory: every entry but . and .., in server order.
   * Names stay UTF-16LE bytes; the caller decides how to represent them. An
   * empty directory may answer the first query with NO_SUCH_FILE (Windows
   * does, where Samba gives "." and ".."): that is an empty listing.
   */
  async list(id: Buffer): Promise<SmbDirEntry[]> {
    const out: SmbDirEntry[] = [];
    const pattern = Buffer.from('*', 'utf16le');
    for (let first = true; ; first = false) {
      const charge = this.#conn.affordableCharge(Math.ceil(Math.min(DIR_BUFFER, this.maxTransactSize) / 65536));
      const len = Math.min(DIR_BUFFER, this.maxTransactSize, charge * 65536);
      const body = Buffer.alloc(32 + pattern.length);
      body.writeUInt16LE(33, 0);
      body.writeUInt8(InfoClass.FileIdFullDirectoryInformation, 2);
      body.writeUInt8(first ? 0x01 : 0, 3); // RESTART_SCANS on the first call
      id.copy(body, 8);
      body.writeUInt16LE(HEADER_SIZE + 32, 24);
      body.writeUInt16LE(pattern.length, 26);
      body.writeUInt32LE(len, 28);
      pattern.copy(body, 32);
      const r = await this.#request(Command.QUERY_DIRECTORY, body, charge, first ? [Status.NO_MORE_FILES, Status.NO_SUCH_FILE] : [Status.NO_MORE_FILES]);
      if (r.header.status === Status.NO_MORE_FILES || r.header.status === Status.NO_SUCH_FILE) return out;
      const buf = bufferAt(r, r.body.readUInt16LE(2), r.body.readUInt32LE(4), `SMB server ${this.#conn.host}`);
      parseDirectory(buf, out, this.#conn.host);
    }
  }

  /**
   * Bytes per READ for a reader with `inFlight` READs outstanding: at most
   * READ_SIZE and the server's MaxReadSize (64 KiB without LARGE_MTU), and
   * small enough that that many READs fit in the credits the server grants.
   */
  readSize(inFlight: number): number {
    const credits = Math.max(1, Math.floor(this.#conn.affordableCharge(Number.MAX_SAFE_INTEGER) / Math.max(1, inFlight)));
    return Math.max(1, Math.min(READ_SIZE, this.maxReadSize, credits * 65536));
  }

  /**
   * Reads up to `length` bytes at `offset`; an empty buffer at the end of the
   * file. The result is a view of the response message. Asks for less (a
   * short read) when the server has not granted the credits `length` costs.
   */
  async read(id: Buffer, offset: number, length: number): Promise<Buffer> {
    const charge = this.#conn.affordableCharge(Math.ceil(length / 65536));
    length = Math.min(length, charge * 65536);
    const body = Buffer.alloc(49);
    body.writeUInt16LE(49, 0);
    body.writeUInt8(0x50, 2); // Padding: where the data should start in the response
    body.writeUInt32LE(length, 4);
    body.writeBigUInt64LE(BigInt(offset), 8);
    id.copy(body, 16);
    const r = await this.#request(Command.READ, body, charge, [Status.END_OF_FILE]);
    if (r.header.status === Status.END_OF_FILE) return Buffer.alloc(0);
    const data = bufferAt(r, r.body.readUInt8(2), r.body.readUInt32LE(4), `SMB server ${this.#conn.host}`);
    if (data.length > length) throw new HoldfastError('HF_SOURCE_PROTOCOL', `SMB server ${this.#conn.host} returned more bytes than asked`);
    return data;
  }

  /** FSCTL on an open handle (§2.2.31); returns the output buffer. */
  async fsctl(id: Buffer, ctl: number, input: Buffer, maxOutput: number, accept: readonly number[] = []): Promise<{ status: number; output: Buffer }> {
    const body = Buffer.alloc(56 + input.length);
    body.writeUInt16LE(57, 0);
    body.writeUInt32LE(ctl, 4);
    id.copy(body, 8);
    body.writeUInt32LE(input.length ? HEADER_SIZE + 56 : 0, 24);
    body.writeUInt32LE(input.length, 28);
    body.writeUInt32LE(maxOutput, 44);
    body.writeUInt32LE(IOCTL_IS_FSCTL, 48);
    input.copy(body, 56);
    const r = await this.#request(Command.IOCTL, body, Math.max(1, Math.ceil(Math.max(input.length, maxOutput) / 65536)),
      [Status.BUFFER_OVERFLOW, ...accept]);
    if (r.body.length < 48) return { status: r.header.status, output: Buffer.alloc(0) };
    return { status: r.header.status, output: bufferAt(r, r.body.readUInt32LE(32), r.body.readUInt32LE(36), `SMB server ${this.#conn.host}`) };
  }

  /**
   * The share's previous versions as @GMT tokens (FSCTL_SRV_ENUMERATE_SNAPSHOTS,
   * MS-SMB2 §2.2.32.2), newest first as the server sorts them. A server
   * that refuses the request (Samba without shadow_copy2 answers
   * INVALID_DEVICE_REQUEST; others NOT_SUPPORTED) has none to offer:
   * HF_SOURCE_SNAPSHOT_NOT_FOUND.
   */
  async snapshots(): Promise<string[]> {
    const root = await this.open('', { directory: true });
    try {
      const enumerate = async (maxOutput: number) => {
        try {
          return (await this.fsctl(root.id, FSCTL_SRV_ENUMERATE_SNAPSHOTS, Buffer.alloc(0), maxOutput)).output;
        } catch (err) {
          if (!(err instanceof SmbStatusError)) throw err;
          throw new HoldfastError('HF_SOURCE_SNAPSHOT_NOT_FOUND',
            `SMB server ${this.#conn.host}: share '${this.share}' has no previous versions (the server answered ${statusName(err.status)} when asked for them: ` +
            'Samba needs vfs_shadow_copy2 on the share, Windows shadow copies of the volume)', { cause: err });
        }
      };
      let output = await enumerate(16);
      if (output.length < 12) return [];
      const arraySize = output.readUInt32LE(8);
      if (output.readUInt32LE(0) > output.readUInt32LE(4)) output = await enumerate(12 + arraySize);
      if (output.length < 12) return [];
      const text = output.subarray(12, 12 + output.readUInt32LE(8)).toString('utf16le');
      return text.split('\0').filter((s) => /^@GMT-\d{4}\.\d{2}\.\d{2}-\d{2}\.\d{2}\.\d{2}$/.test(s));
    } finally {
      await this.close(root.id);
    }
  }

  /** A symlink or junction's target (FSCTL_GET_REPARSE_POINT), as the server's substitute name. */
  async reparseTarget(id: Buffer): Promise<string> {
    const { output } = await this.fsctl(id, FSCTL_GET_REPARSE_POINT, Buffer.alloc(0), 16384);
    return parseReparseTarget(output, this.#conn.host);
  }

  /** Logs off and closes the connection. Idempotent; never throws. */
  async disconnect(): Promise<void> {
    if (!this.#conn.closed) {
      const body = Buffer.alloc(4);
      body.writeUInt16LE(4, 0);
      await this.#conn.request(Command.LOGOFF, body, { sessionId: this.#sessionId, protection: this.#protection })
        .catch(() => undefined);
    }
    this.#conn.close();
  }
}

function dialectName(d: number): string {
  return `SMB ${({ 0x0210: '2.1', 0x0300: '3.0', 0x0302: '3.0.2', 0x0311: '3.1.1' } as Record<number, string>)[d] ?? `0x${d.toString(16)}`}`;
}

function dialectRange(opts: SmbClientOptions): string {
  return `${dialectName(opts.minDialect ?? Dialect.SMB2_1).slice(4)} to ${dialectName(opts.maxDialect ?? Dialect.SMB3_1_1).slice(4)}`;
}

function align8(n: number): number {
  return (n + 7) & ~7;
}

function cipherName(c: number): string {
  return ({ [Cipher.AES_128_CCM]: 'AES-128-CCM', [Cipher.AES_128_GCM]: 'AES-128-GCM', [Cipher.AES_256_CCM]: 'AES-256-CCM', [Cipher.AES_256_GCM]: 'AES-256-GCM' } as Record<number, string>)[c] ?? 'none';
}

/** A field given by an offset from the start of the header and a length; bounds-checked. */
function bufferAt(r: Smb2Response, offset: number, length: number, where: string): Buffer {
  if (length === 0) return Buffer.alloc(0);
  if (offset < HEADER_SIZE || offset + length > r.message.length) {
    throw new HoldfastError('HF_SOURCE_PROTOCOL', `${where} sent a response whose buffer lies outside the message`);
  }
  return r.message.subarray(offset, offset + length);
}

/** NEGOTIATE request body with the dialects in [min, max] and, when 3.1.1 is among them, its contexts (§2.2.3). */
function negotiateRequest(salt: Buffer, minDialect: number, maxDialect: number): Buffer {
  const dialects = [Dialect.SMB2_1, Dialect.SMB3_0, Dialect.SMB3_0_2, Dialect.SMB3_1_1].filter((d) => d >= minDialect && d <= maxDialect);
  if (dialects.length === 0) throw new HoldfastError('HF_INVALID_ARGUMENT', 'no SMB dialect between the minimum and maximum configured');
  const contexts: Buffer[] = [];
  if (dialects.includes(Dialect.SMB3_1_1)) contexts.push(...negotiateContexts(salt));
  const fixed = 36 + 2 * dialects.length;
  const ctxStart = contexts.length ? align8(HEADER_SIZE + fixed) - HEADER_SIZE : fixed;
  let total = ctxStart;
  for (let i = 0; i < contexts.length; i++) total = (i > 0 ? align8(total + HEADER_SIZE) - HEADER_SIZE : total) + contexts[i]!.length;
  const body = Buffer.alloc(total);
  body.writeUInt16LE(36, 0);
  body.writeUInt16LE(dialects.length, 2);
  body.writeUInt16LE(SIGNING_ENABLED, 4);
  body.writeUInt32LE(Capability.LARGE_MTU | Capability.ENCRYPTION, 8);
  crypto.randomBytes(16).copy(body, 12); // ClientGuid
  if (contexts.length) {
    body.writeUInt32LE(HEADER_SIZE + ctxStart, 28);
    body.writeUInt16LE(contexts.length, 32);
  }
  dialects.forEach((d, i) => body.writeUInt16LE(d, 36 + 2 * i));
  let off = ctxStart;
  for (let i = 0; i < contexts.length; i++) {
    if (i > 0) off = align8(off + HEADER_SIZE) - HEADER_SIZE;
    contexts[i]!.copy(body, off);
    off += contexts[i]!.length;
  }
  return body;
}

/** The 3.1.1 negotiate contexts: pre-auth integrity (SHA-512), ciphers, signing algorithms. */
function negotiateContexts(salt: Buffer): Buffer[] {
  const contexts: Buffer[] = [];
  const preauth = Buffer.alloc(6 + salt.length);
  preauth.writeUInt16LE(1, 0); // HashAlgorithmCount
  preauth.writeUInt16LE(salt.length, 2);
  preauth.writeUInt16LE(0x0001, 4); // SHA-512
  salt.copy(preauth, 6);
  contexts.push(negContext(NegotiateContext.PREAUTH_INTEGRITY, preauth));
  const ciphers = Buffer.alloc(2 + 2 * CIPHER_PREFERENCE.length);
  ciphers.writeUInt16LE(CIPHER_PREFERENCE.length, 0);
  CIPHER_PREFERENCE.forEach((c, i) => ciphers.writeUInt16LE(c, 2 + 2 * i));
  contexts.push(negContext(NegotiateContext.ENCRYPTION, ciphers));
  const signing = Buffer.alloc(2 + 2 * SIGNING_PREFERENCE.length);
  signing.writeUInt16LE(SIGNING_PREFERENCE.length, 0);
  SIGNING_PREFERENCE.forEach((a, i) => signing.writeUInt16LE(a, 2 + 2 * i));
  contexts.push(negContext(NegotiateContext.SIGNING, signing));
  return contexts;
}

function negContext(type: number, data: Buffer): Buffer {
  const b = Buffer.alloc(8 + data.length);
  b.writeUInt16LE(type, 0);
  b.writeUInt16LE(data.length, 2);
  data.copy(b, 8);
  return b;
}

export interface Negotiated {
  dialect: number;
  maxReadSize: number;
  maxTransactSize: number;
  cipher: number;
  signingAlgorithm: number;
}

/** Parses the NEGOTIATE response (§2.2.4) and its contexts; strict about what it relies on. Exported for tests. */
export function parseNegotiate(r: Smb2Response, where: string): Negotiated {
  const b = r.body;
  if (b.length < 64) throw new HoldfastError('HF_SOURCE_PROTOCOL', `${where}: short NEGOTIATE response`);
  const dialect = b.readUInt16LE(4);
  if (![Dialect.SMB2_1, Dialect.SMB3_0, Dialect.SMB3_0_2, Dialect.SMB3_1_1].includes(dialect as 0x0210)) {
    throw new HoldfastError('HF_SOURCE_PROTOCOL', `${where} chose dialect 0x${dialect.toString(16)}, which was not offered`);
  }
  const capabilities = b.readUInt32LE(24);
  // Without LARGE_MTU, no request or response may carry more than 64 KiB (§3.2.4.1.5).
  const largeMtu = (capabilities & Capability.LARGE_MTU) !== 0;
  const out: Negotiated = {
    dialect,
    maxTransactSize: largeMtu ? b.readUInt32LE(28) : Math.min(b.readUInt32LE(28), 65536),
    maxReadSize: largeMtu ? b.readUInt32LE(32) : Math.min(b.readUInt32LE(32), 65536),
    cipher: dialect >= Dialect.SMB3_0 && dialect < Dialect.SMB3_1_1 && (capabilities & Capability.ENCRYPTION) ? Cipher.AES_128_CCM : 0,
    signingAlgorithm: dialect === Dialect.SMB2_1 ? SigningAlgorithm.HMAC_SHA256 : SigningAlgorithm.AES_CMAC,
  };
  if (dialect === Dialect.SMB3_1_1) {
    const count = b.readUInt16LE(6);
    let off = b.readUInt32LE(60);
    let sawPreauth = false;
    for (let i = 0; i < count; i++) {
      off = align8(off);
      if (off + 8 > r.message.length) throw new HoldfastError('HF_SOURCE_PROTOCOL', `${where}: negotiate context outside the message`);
      const type = r.message.readUInt16LE(off);
      const len = r.message.readUInt16LE(off + 2);
      const data = r.message.subarray(off + 8, off + 8 + len);
      if (data.length !== len) throw new HoldfastError('HF_SOURCE_PROTOCOL', `${where}: truncated negotiate context`);
      if (type === NegotiateContext.PREAUTH_INTEGRITY) {
        if (len < 6 || data.readUInt16LE(0) !== 1 || data.readUInt16LE(4) !== 0x0001) {
          throw new HoldfastError('HF_SOURCE_PROTOCOL', `${where}: pre-auth integrity must be SHA-512`);
        }
        sawPreauth = true;
      } else if (type === NegotiateContext.ENCRYPTION) {
        if (len < 4 || data.readUInt16LE(0) !== 1) throw new HoldfastError('HF_SOURCE_PROTOCOL', `${where}: bad encryption context`);
        const c = data.readUInt16LE(2);
        if (c !== 0 && !CIPHER_PREFERENCE.includes(c as 1)) throw new HoldfastError('HF_SOURCE_PROTOCOL', `${where} chose cipher ${c}, which was not offered`);
        out.cipher = c;
      } else if (type === NegotiateContext.SIGNING) {
        if (len < 4 || data.readUInt16LE(0) !== 1) throw new HoldfastError('HF_SOURCE_PROTOCOL', `${where}: bad signing context`);
        const a = data.readUInt16LE(2);
        if (!ALG_NAME[a] || a === SigningAlgorithm.HMAC_SHA256) throw new HoldfastError('HF_SOURCE_PROTOCOL', `${where} chose signing algorithm ${a}, which was not offered`);
        out.signingAlgorithm = a;
      }
      off += 8 + len;
    }
    if (!sawPreauth) throw new HoldfastError('HF_SOURCE_PROTOCOL', `${where}: SMB 3.1.1 without pre-auth integrity`);
  }
  return out;
}

function sessionSetupRequest(token: Buffer): Buffer {
  const body = Buffer.alloc(24 + token.length);
  body.writeUInt16LE(25, 0);
  body.writeUInt8(0, 2); // Flags
  body.writeUInt8(SIGNING_ENABLED | SIGNING_REQUIRED, 3); // this client wants every response signed
  body.writeUInt32LE(0, 4); // Capabilities (DFS not used)
  body.writeUInt16LE(HEADER_SIZE + 24, 12);
  body.writeUInt16LE(token.length, 14);
  token.copy(body, 24);
  return body;
}

/** FileIdFullDirectoryInformation entries (MS-FSCC §2.4.18), bounds-checked. */
function parseDirectory(buf: Buffer, out: SmbDirEntry[], host: string): void {
  for (let off = 0; ;) {
    if (off + 80 > buf.length) throw new HoldfastError('HF_SOURCE_PROTOCOL', `SMB server ${host}: truncated directory entry`);
    const next = buf.readUInt32LE(off);
    const nameLen = buf.readUInt32LE(off + 60);
    if (off + 80 + nameLen > buf.length || nameLen % 2 !== 0) {
      throw new HoldfastError('HF_SOURCE_PROTOCOL', `SMB server ${host}: directory entry name outside the buffer`);
    }
    const name16 = Buffer.from(buf.subarray(off + 80, off + 80 + nameLen));
    const isDot = (nameLen === 2 && name16[0] === 0x2e && name16[1] === 0) ||
      (nameLen === 4 && name16.readUInt32LE(0) === 0x002e002e);
    const attributes = buf.readUInt32LE(off + 56);
    if (!isDot) {
      out.push({
        name16,
        creationTime: buf.readBigUInt64LE(off + 8),
        lastWriteTime: buf.readBigUInt64LE(off + 24),
        changeTime: buf.readBigUInt64LE(off + 32),
        endOfFile: buf.readBigUInt64LE(off + 40),
        attributes,
        reparseTag: attributes & Attr.REPARSE_POINT ? buf.readUInt32LE(off + 64) : 0,
        fileId: buf.readBigUInt64LE(off + 72),
      });
    }
    if (next === 0) return;
    if (next < 80 || next % 8 !== 0) throw new HoldfastError('HF_SOURCE_PROTOCOL', `SMB server ${host}: bad NextEntryOffset`);
    off += next;
  }
}

/** REPARSE_DATA_BUFFER (MS-FSCC §2.1.2.2 symlink, §2.1.2.5 mount point): the print name, else the substitute name. */
function parseReparseTarget(b: Buffer, host: string): string {
  const bad = () => new HoldfastError('HF_SOURCE_PROTOCOL', `SMB server ${host}: malformed reparse data`);
  if (b.length < 16) throw bad();
  const tag = b.readUInt32LE(0);
  const pathBase = tag === 0xa000000c ? 20 : 16; // symlinks carry a Flags field
  const subOff = b.readUInt16LE(8);
  const subLen = b.readUInt16LE(10);
  const printOff = b.readUInt16LE(12);
  const printLen = b.readUInt16LE(14);
  const pick = printLen > 0 ? [printOff, printLen] : [subOff, subLen];
  const start = pathBase + pick[0]!;
  if (start + pick[1]! > b.length) throw bad();
  return b.subarray(start, start + pick[1]!).toString('utf16le');
}
