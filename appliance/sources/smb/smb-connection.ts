import net from 'node:net';

import { HoldfastError } from '../../errors/index.ts';
import { decryptMessage, encryptMessage, signMessage, verifyMessage } from './smb-crypto.ts';
import {
  HEADER_SIZE, HeaderFlag, SMB2_MAGIC, Status, TRANSFORM_MAGIC, type Smb2Header, readHeader, statusErrno, statusName, writeHeader,
} from './smb2-wire.ts';

/** A response: its header, the whole message, and the body after the header. */
export interface Smb2Response {
  header: Smb2Header;
  message: Buffer;
  body: Buffer;
}

/** How a request is protected, decided by the session and tree it belongs to. */
export interface Protection {
  sign: { alg: SigningAlg; key: Buffer } | null;
  encrypt: { cipher: number; key: Buffer } | null;
}
export type SigningAlg = 'hmac-sha256' | 'aes-cmac' | 'aes-gmac';

export interface RequestOptions {
  treeId?: number;
  sessionId?: bigint;
  /** Credits this request costs (§3.2.4.1.5: one per 64 KiB of payload). */
  creditCharge?: number;
  protection?: Protection | null;
  /** Statuses that resolve instead of rejecting (SUCCESS always does). */
  accept?: readonly number[];
}

/** A request as sent, for the pre-auth integrity hash. */
export interface SentRequest {
  message: Buffer;
  response: Promise<Smb2Response>;
}

interface Pending {
  resolve(r: Smb2Response): void;
  reject(err: Error): void;
  command: number;
  accept: readonly number[];
  /** Signing the response must carry, when the request was signed. */
  sign: Protection['sign'];
  encrypted: boolean;
  timer: NodeJS.Timeout;
  /** Credits it was charged (its response grants credits back). */
  charge: number;
}

/** Most credits this client asks the server to hold for it. */
const CREDIT_TARGET = 512;
/** Largest frame accepted from a server: a READ of 8 MiB plus headers. */
const MAX_FRAME = (8 << 20) + 4096;

/**
 * One TCP connection to an SMB2/3 server (MS-SMB2 §3.2): Direct TCP framing,
 * message ids and credits (§3.2.4.1.5: many requests in flight, each paying
 * its credit charge), signing and encryption of requests and checking of
 * responses. It knows nothing of sessions, trees or files beyond the ids a
 * caller passes.
 *
 * - request() MUST reject with HF_SOURCE_DISCONNECTED once the connection is
 *   gone (closed, reset, or a response overdue by timeoutMs), and every
 *   pending request rejects then too.
 * - A response that should be signed and is not, or whose signature or
 *   encryption tag is wrong, is a protocol error that closes the connection:
 *   nothing unauthenticated is ever handed to a caller. Every pending
 *   request rejects with that HF_SOURCE_PROTOCOL error (and `closed` is
 *   true): the caller may treat it as a wire fault and retry elsewhere.
 * - A request never waits for credits the server has not granted and will
 *   not grant (none in flight to bring them back): it rejects with
 *   HF_SOURCE_PROTOCOL. Callers size requests by affordableCharge().
 */
export class SmbConnection {
  readonly host: string;
  readonly port: number;
  #socket: net.Socket;
  #pending = new Map<bigint, Pending>();
  #nextMessageId = 0n;
  #credits = 1;
  /** Credits charged to requests not answered yet. */
  #charged = 0;
  #creditWaiters: (() => void)[] = [];
  #chunks: Buffer[] = [];
  #buffered = 0;
  #closed: HoldfastError | null = null;
  #timeoutMs: number;
  /** Decryption keys by session id, for encrypted responses. */
  #decrypt = new Map<bigint, { cipher: number; key: Buffer }>();
  /** Signing the responses of a session must carry once it is set up. */
  #signing = new Map<bigint, Protection['sign']>();

  private constructor(socket: net.Socket, host: string, port: number, timeoutMs: number) {
    this.#socket = socket;
    this.host = host;
    this.port = port;
    this.#timeoutMs = timeoutMs;
    socket.on('data', (d: Buffer) => this.#onData(d));
    socket.on('error', (err) => this.#fail(this.#lost(`connection error: ${err.message}`, err)));
    socket.on('close', () => this.#fail(this.#lost('the server closed the connection')));
  }

  /** Opens the TCP connection; HF_SOURCE_UNREACHABLE when it cannot. */
  static connect(host: string, port: number, timeoutMs: number): Promise<SmbConnection> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host, port, noDelay: true });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new HoldfastError('HF_SOURCE_UNREACHABLE',
          `SMB server ${host}:${port} did not answer within ${timeoutMs / 1000} s; check the host name, port and firewall`));
      }, timeoutMs);
      socket.once('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(new HoldfastError('HF_SOURCE_UNREACHABLE',
          `cannot reach SMB server ${host}:${port} (${err.code ?? err.message}); check the host name, port and firewall`,
          { cause: err }));
      });
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        socket.setKeepAlive(true, 10_000);
        resolve(new SmbConnection(socket, host, port, timeoutMs));
      });
    });
  }

  get closed(): boolean {
    return this.#closed !== null;
  }

  /**
   * The credit charge, at most `wanted`, that a request can be sure to get:
   * what is granted now plus what requests in flight will bring back
   * (at least 1).
   */
  affordableCharge(wanted: number): number {
    return Math.max(1, Math.min(wanted, this.#credits + this.#charged));
  }

  /** Responses of this session must be signed with this (null: no longer required). */
  requireSigning(sessionId: bigint, sign: Protection['sign']): void {
    this.#signing.set(sessionId, sign);
  }

  /** Encrypted responses for this session are opened with this key. */
  setDecryption(sessionId: bigint, cipher: number, key: Buffer): void {
    this.#decrypt.set(sessionId, { cipher, key });
  }

  /**
   * Sends one request (body = everything after the 64-byte header) and
   * returns the message as sent and its final response (interim
   * STATUS_PENDING responses are absorbed). A status other than SUCCESS or
   * one in `accept` rejects with an error carrying `status`.
   */
  async send(command: number, body: Buffer, opts: RequestOptions = {}): Promise<SentRequest> {
    const charge = Math.max(1, opts.creditCharge ?? 1);
    await this.#takeCredits(charge);
    if (this.#closed) throw this.#closed;
    const messageId = this.#nextMessageId;
    this.#nextMessageId += BigInt(charge);
    const message = Buffer.allocUnsafe(HEADER_SIZE + body.length);
    const outstanding = this.#credits + this.#pending.size;
    writeHeader(message, {
      command,
      creditCharge: charge,
      creditRequest: charge + (outstanding < CREDIT_TARGET ? 64 : 0),
      messageId,
      treeId: opts.treeId ?? 0,
      sessionId: opts.sessionId ?? 0n,
    });
    body.copy(message, HEADER_SIZE);
    const protection = opts.protection ?? null;
    let frame: Buffer = message;
    if (protection?.encrypt) {
      frame = encryptMessage(protection.encrypt.cipher, protection.encrypt.key, opts.sessionId ?? 0n, message);
    } else if (protection?.sign) {
      message.writeUInt32LE(message.readUInt32LE(16) | HeaderFlag.SIGNED, 16);
      signMessage(protection.sign.alg, protection.sign.key, message);
    }
    const response = new Promise<Smb2Response>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#fail(this.#lost(`no answer to ${commandName(command)} within ${this.#timeoutMs / 1000} s`));
      }, this.#timeoutMs);
      this.#pending.set(messageId, {
        resolve, reject, command, accept: opts.accept ?? [], timer,
        sign: protection?.encrypt ? null : protection?.sign ?? null,
        encrypted: protection?.encrypt != null,
        charge,
      });
      this.#charged += charge;
    });
    const nb = Buffer.allocUnsafe(4);
    nb.writeUInt32BE(frame.length, 0); // Direct TCP: a zero byte, then a 24-bit length (§2.1)
    this.#socket.write(nb);
    this.#socket.write(frame);
    return { message, response };
  }

  /** send() and wait for the response. */
  async request(command: number, body: Buffer, opts: RequestOptions = {}): Promise<Smb2Response> {
    return (await this.send(command, body, opts)).response;
  }

  /** Closes the connection; pending requests reject with HF_SOURCE_DISCONNECTED. Idempotent. */
  close(): void {
    this.#fail(this.#lost('the connection was closed'));
  }

  async #takeCredits(n: number): Promise<void> {
    while (this.#credits < n && !this.#closed) {
      if (this.#credits + this.#charged < n) {
        throw new HoldfastError('HF_SOURCE_PROTOCOL',
          `SMB server ${this.host}:${this.port} granted ${this.#credits + this.#charged} credits in all, and a request needs ${n}`);
      }
      await new Promise<void>((resolve) => this.#creditWaiters.push(resolve));
    }
    this.#credits -= n;
  }

  #grant(n: number): void {
    this.#credits += n;
    const waiters = this.#creditWaiters;
    this.#creditWaiters = [];
    for (const w of waiters) w();
  }

  #onData(d: Buffer): void {
    this.#chunks.push(d);
    this.#buffered += d.length;
    while (this.#buffered >= 4) {
      const head = this.#chunks[0]!.length >= 4 ? this.#chunks[0]! : Buffer.concat(this.#chunks);
      const len = head.readUInt32BE(0);
      if (len > MAX_FRAME) {
        this.#fail(new HoldfastError('HF_SOURCE_PROTOCOL', `SMB server ${this.host} sent a frame of ${len} bytes; closing the connection`));
        return;
      }
      if (this.#buffered < 4 + len) return;
      const frame = this.#takeFrame(len);
      try {
        this.#onFrame(frame);
      } catch (err) {
        this.#fail(err instanceof HoldfastError ? err
          : new HoldfastError('HF_SOURCE_PROTOCOL', `SMB server ${this.host}: ${(err as Error).message}`, { cause: err }));
        return;
      }
    }
  }

  /**
   * Moves the next frame (after its 4-byte length) out of the received
   * chunks into a buffer of its own: the data views a READ yields must not
   * share memory with anything else, because the backup frees a piece's
   * memory as soon as it has sealed it (see Source.read).
   */
  #takeFrame(len: number): Buffer {
    const frame = Buffer.allocUnsafeSlow(len);
    let skip = 4;
    let filled = 0;
    while (filled < len) {
      const c = this.#chunks[0]!;
      const from = Math.min(skip, c.length);
      skip -= from;
      const n = Math.min(c.length - from, len - filled);
      c.copy(frame, filled, from, from + n);
      filled += n;
      if (from + n === c.length) this.#chunks.shift();
      else this.#chunks[0] = c.subarray(from + n);
    }
    this.#buffered -= 4 + len;
    return frame;
  }

  #onFrame(frame: Buffer): void {
    if (frame.length < 4) throw new HoldfastError('HF_SOURCE_PROTOCOL', `SMB server ${this.host} sent a truncated frame`);
    let message = frame;
    let encrypted = false;
    if (frame.readUInt32LE(0) === TRANSFORM_MAGIC) {
      if (frame.length < 52) throw new HoldfastError('HF_SOURCE_PROTOCOL', `SMB server ${this.host} sent a truncated encrypted frame`);
      const sessionId = frame.readBigUInt64LE(44);
      const dec = this.#decrypt.get(sessionId);
      if (!dec) throw new HoldfastError('HF_SOURCE_PROTOCOL', `SMB server ${this.host} sent an encrypted message for an unknown session`);
      message = decryptMessage(dec.cipher, dec.key, frame).message;
      encrypted = true;
    }
    // A decrypted message may hold several responses (NextCommand chains).
    for (let off = 0; off < message.length;) {
      if (message.length - off < HEADER_SIZE || message.readUInt32LE(off) !== SMB2_MAGIC) {
        throw new HoldfastError('HF_SOURCE_PROTOCOL', `SMB server ${this.host} sent a message that is not SMB2`);
      }
      const header = readHeader(message.subarray(off));
      const end = header.nextCommand ? off + header.nextCommand : message.length;
      if (end > message.length || end <= off) throw new HoldfastError('HF_SOURCE_PROTOCOL', `SMB server ${this.host} sent a bad NextCommand`);
      this.#onMessage(message.subarray(off, end), header, encrypted);
      off = end;
    }
  }

  #onMessage(message: Buffer, header: Smb2Header, encrypted: boolean): void {
    if ((header.flags & HeaderFlag.SERVER_TO_REDIR) === 0) {
      throw new HoldfastError('HF_SOURCE_PROTOCOL', `SMB server ${this.host} sent a request, not a response`);
    }
    if (header.messageId === 0xffffffffffffffffn) return; // an oplock break: no oplocks are taken, nothing to do
    const p = this.#pending.get(header.messageId);
    if (!p) throw new HoldfastError('HF_SOURCE_PROTOCOL', `SMB server ${this.host} answered message ${header.messageId}, which was not sent`);
    this.#grant(header.credits);
    const interim = header.status === Status.PENDING && (header.flags & HeaderFlag.ASYNC_COMMAND) !== 0;
    if (interim) {
      // The final response follows (§3.2.5.1.5): the server is working on
      // it, so its time starts again.
      p.timer.refresh();
      return;
    }
    if (p.encrypted && !encrypted) {
      throw new HoldfastError('HF_SOURCE_PROTOCOL', `SMB server ${this.host} answered an encrypted request in clear text; closing the connection`);
    }
    const sign = encrypted ? null : this.#signing.get(header.sessionId) ?? p.sign;
    if (sign) {
      if ((header.flags & HeaderFlag.SIGNED) === 0) {
        throw new HoldfastError('HF_SOURCE_PROTOCOL', `SMB server ${this.host} sent an unsigned ${commandName(header.command)} response although signing is required; closing the connection`);
      }
      if (!verifyMessage(sign.alg, sign.key, message)) {
        throw new HoldfastError('HF_SOURCE_PROTOCOL', `SMB server ${this.host}: the signature of a ${commandName(header.command)} response is wrong (tampered with, or a key mismatch); closing the connection`);
      }
    }
    this.#pending.delete(header.messageId);
    clearTimeout(p.timer);
    this.#charged -= p.charge;
    if (header.command !== p.command) {
      p.reject(new HoldfastError('HF_SOURCE_PROTOCOL', `SMB server ${this.host} answered ${commandName(p.command)} with ${commandName(header.command)}`));
      return;
    }
    if (header.status !== Status.SUCCESS && !p.accept.includes(header.status)) {
      p.reject(new SmbStatusError(header.status, p.command));
      return;
    }
    p.resolve({ header, message, body: message.subarray(HEADER_SIZE) });
  }

  #lost(why: string, cause?: unknown): HoldfastError {
    return new HoldfastError('HF_SOURCE_DISCONNECTED', `SMB server ${this.host}:${this.port}: ${why}`, { cause });
  }

  #fail(err: HoldfastError): void {
    if (this.#closed) return;
    this.#closed = err;
    this.#socket.destroy();
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.#pending.clear();
    this.#charged = 0;
    this.#grant(0);
  }
}

/** A response status other than the ones a request accepts. `code` is errno-like for per-path failures. */
export class SmbStatusError extends Error {
  readonly status: number;
  readonly command: number;
  readonly code: string;

  constructor(status: number, command: number) {
    super(`${commandName(command)} failed: ${statusName(status)}`);
    this.name = 'SmbStatusError';
    this.status = status;
    this.command = command;
    this.code = statusErrno(status);
  }
}

const COMMAND_NAMES = ['NEGOTIATE', 'SESSION_SETUP', 'LOGOFF', 'TREE_CONNECT', 'TREE_DISCONNECT', 'CREATE', 'CLOSE',
  'FLUSH', 'READ', 'WRITE', 'LOCK', 'IOCTL', 'CANCEL', 'ECHO', 'QUERY_DIRECTORY', 'CHANGE_NOTIFY', 'QUERY_INFO'];

export function commandName(command: number): string {
  return COMMAND_NAMES[command] ?? `command 0x${command.toString(16)}`;
}
