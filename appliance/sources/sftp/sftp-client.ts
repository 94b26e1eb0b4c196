/**
 * One SSH connection (ssh2) carrying one SFTP v3 session, spoken by this
 * module on the raw subsystem channel: ssh2's own SFTP client turns every
 * name into a UTF-8 string, and a backup needs names as the server's bytes.
 * Requests are pipelined: any number may be outstanding; the ones made
 * before the event loop's next turn go out in one SSH packet. READ replies
 * are copied straight from the channel into the caller's buffer.
 */

import net from 'node:net';

import ssh2 from 'ssh2';
import type { ClientChannel, ConnectConfig } from 'ssh2';

import { HoldfastError } from '../../errors/index.ts';
import type { HostKeyPins } from './host-keys.ts';
import {
  OPEN_READ, PacketType, SFTP_VERSION, type SftpAttrs, type SftpName, SftpStatusError, Status, type StatusReply, WireReader,
  encodeRequest, protocolError,
} from './sftp-wire.ts';

const { Client } = ssh2;
type SshConnection = InstanceType<typeof Client>;

export interface SftpClientOptions {
  host: string;
  port: number;
  user: string;
  /** Private key file contents (PEM or OpenSSH format). */
  privateKey: Buffer;
  passphrase?: string;
  pins: HostKeyPins;
  /** Time for TCP connect, SSH handshake and login. */
  readyTimeoutMs: number;
  /** Keepalive probe interval; three unanswered probes drop the connection. */
  keepaliveMs: number;
}

/** Read length when the server does not announce its limits (the protocol's guaranteed minimum). */
const DEFAULT_READ = 32 << 10;
/** Largest read length asked for, whatever the server allows. */
const MAX_READ = 1 << 20;
/** Longest packet accepted from the server (OpenSSH sends at most 256 KiB). */
const MAX_PACKET = MAX_READ + 1024;

/**
 * Ciphers offered, fastest first: AES-GCM runs in OpenSSL with AES-NI;
 * ssh2's ChaCha20 would be pure JavaScript here (its native binding is not
 * built).
 */
const CIPHERS: NonNullable<NonNullable<ConnectConfig['algorithms']>['cipher']> = [
  'aes128-gcm@openssh.com', 'aes256-gcm@openssh.com', 'aes128-ctr', 'aes192-ctr', 'aes256-ctr',
];

type Reply = { type: number; body: WireReader };

interface PlainRequest {
  kind: 'plain';
  resolve: (r: Reply) => void;
  reject: (err: Error) => void;
}

/** A READ whose DATA lands in `into` at `at`; `done` gets the byte count, or -1 at end of file. */
interface ReadRequest {
  kind: 'read';
  into: Buffer | null;
  at: number;
  len: number;
  done: (err: Error | null, n: number) => void;
}

const Parse = { HEAD: 0, DATA_LEN: 1, DATA: 2, BODY: 3 } as const;
type ParseState = (typeof Parse)[keyof typeof Parse];

const noop = () => {};

/**
 * An SFTP session over its own SSH connection.
 *
 * - connect MUST NOT complete unless the host key is pinned (HostKeyPins);
 *   it rejects with HF_SOURCE_HOST_KEY_UNKNOWN/CHANGED, HF_SOURCE_AUTH_FAILED,
 *   HF_SOURCE_UNREACHABLE, HF_SOURCE_PROTOCOL or HF_SOURCE_DISCONNECTED.
 * - Every request rejects with SftpStatusError for a status other than OK
 *   (and EOF where EOF means "no more"), and with HF_SOURCE_DISCONNECTED
 *   once the connection is gone, or HF_SOURCE_PROTOCOL when it was ended
 *   because the server sent a malformed packet; nothing is retried here.
 * - A read's buffer is written to only until its callback runs or it is
 *   abandoned.
 */
export class SftpClient {
  /** Largest read length the server allows (limits@openssh.com), at most 1 MiB. */
  maxRead = DEFAULT_READ;
  /** The negotiated cipher (server to client). */
  cipher = '';
  readonly #where: string;
  readonly #conn: SshConnection;
  #channel: ClientChannel | null = null;
  /**
   * Our own socket, so that it has TCP_NODELAY from the start (else Nagle
   * and delayed ACKs add 40 ms to round trips) and can be corked: ssh2
   * writes each SSH packet in three pieces.
   */
  #sock: net.Socket | null = null;
  readonly #pending = new Map<number, PlainRequest | ReadRequest>();
  #lastId = 0;
  #out: Buffer[] = [];
  #flushQueued = false;
  #dead: HoldfastError | null = null;
  #connClosed = false;
  /** Waits for the server's VERSION (only during connect). */
  #version: { resolve: (r: { version: number; ext: Map<string, string> }) => void; reject: (err: Error) => void } | null = null;
  // parser state
  #state: ParseState = Parse.HEAD;
  readonly #head = Buffer.alloc(13);
  #headLen = 0;
  #type = 0;
  #id = 0;
  #rest = 0;
  #body: Buffer | null = null;
  #bodyPos = 0;
  #read: ReadRequest | null = null;
  #dataLeft = 0;
  #dataLen = 0;
  #dataAt = 0;
  #skip = 0;

  private constructor(where: string, conn: SshConnection) {
    this.#where = where;
    this.#conn = conn;
  }

  /** Connects, logs in, starts the SFTP subsystem and learns the server's limits. */
  static connect(o: SftpClientOptions): Promise<SftpClient> {
    const where = `${o.host.includes(':') ? `[${o.host}]` : o.host}:${o.port}`;
    return new Promise((resolve, reject) => {
      const conn = new Client();
      const client = new SftpClient(where, conn);
      let hostKeyError: HoldfastError | null = null;
      let settled = false;
      const fail = (err: Error) => {
        if (settled) return;
        settled = true;
        client.#lost(err);
        reject(err);
      };
      conn.on('error', (err: Error & { level?: string; code?: string }) => {
        if (settled) client.#lost(err);
        else fail(connectError(where, o, err, hostKeyError));
      });
      conn.on('close', () => {
        client.#connClosed = true;
        if (settled) client.#lost(null);
        else fail(new HoldfastError('HF_SOURCE_UNREACHABLE',
          `${where}: the server closed the connection before the SFTP session was ready; check that sshd runs and lets this client in (AllowUsers, MaxStartups, firewall)`));
      });
      conn.on('handshake', (n: { cs: { cipher: string } }) => { client.cipher = n.cs.cipher; });
      conn.on('ready', () => {
        conn.subsys('sftp', (err, channel) => {
          if (err) {
            fail(new HoldfastError('HF_SOURCE_PROTOCOL',
              `${where}: the server refused the SFTP subsystem (${err.message}); enable it in sshd_config ("Subsystem sftp internal-sftp") or check the account's ForceCommand`,
              { cause: err }));
            return;
          }
          client.#attach(channel);
          client.#init().then(() => {
            if (settled) return;
            settled = true;
            resolve(client);
          }, fail);
        });
      });
      try {
        client.#sock = net.connect({ host: o.host, port: o.port, noDelay: true });
        conn.connect({
          sock: client.#sock,
          host: o.host,
          port: o.port,
          username: o.user,
          privateKey: o.privateKey,
          ...(o.passphrase !== undefined ? { passphrase: o.passphrase } : {}),
          readyTimeout: o.readyTimeoutMs,
          keepaliveInterval: o.keepaliveMs,
          keepaliveCountMax: 3,
          hostVerifier: (key: Buffer): boolean => {
            hostKeyError = o.pins.check(key);
            return hostKeyError === null;
          },
          algorithms: { cipher: CIPHERS, serverHostKey: o.pins.algorithms },
        });
      } catch (err) {
        fail(new HoldfastError('HF_INVALID_ARGUMENT', `${where}: cannot start the SSH connection: ${(err as Error).message}`, { cause: err }));
      }
    });
  }

  get closed(): boolean {
    return this.#dead !== null;
  }

  lstat(path: Buffer): Promise<SftpAttrs> {
    return this.#request(PacketType.LSTAT, [path]).then(attrsOf);
  }

  fstat(handle: Buffer): Promise<SftpAttrs> {
    return this.#request(PacketType.FSTAT, [handle]).then(attrsOf);
  }

  /** Opens a file for reading. Like open(2) without O_NOFOLLOW: the caller checks for symlinks. */
  open(path: Buffer): Promise<Buffer> {
    return this.#request(PacketType.OPEN, [path, OPEN_READ, 0]).then(handleOf);
  }

  opendir(path: Buffer): Promise<Buffer> {
    return this.#request(PacketType.OPENDIR, [path]).then(handleOf);
  }

  /** The next entries of an open directory ("." and ".." included), or null at its end. */
  async readdir(handle: Buffer): Promise<SftpName[] | null> {
    const r = await this.#request(PacketType.READDIR, [handle]);
    if (r.type === PacketType.STATUS) {
      const st = statusOf(r);
      if (st.status === Status.EOF) return null;
      throw statusError(st);
    }
    if (r.type !== PacketType.NAME) throw protocolError(`reply type ${r.type} to READDIR`);
    const out: SftpName[] = [];
    for (let n = r.body.u32(); n > 0; n--) {
      const name = r.body.bytes();
      r.body.bytes(); // longname: `ls -l` text, of no use
      out.push({ name, attrs: r.body.attrs() });
    }
    return out;
  }

  async readlink(path: Buffer): Promise<Buffer> {
    const r = await this.#request(PacketType.READLINK, [path]);
    if (r.type !== PacketType.NAME) throw replyError(r, 'READLINK');
    if (r.body.u32() < 1) throw protocolError('empty NAME reply to READLINK');
    return r.body.bytes();
  }

  async close(handle: Buffer): Promise<void> {
    const st = statusOf(await this.#request(PacketType.CLOSE, [handle]));
    if (st.status !== Status.OK) throw statusError(st);
  }

  /**
   * Asks for `len` bytes at `offset` into `into[at…]`. `done` runs once:
   * with the byte count (possibly short), -1 at end of file, or an error.
   * Returns an id for abandon().
   */
  read(handle: Buffer, offset: number, len: number, into: Buffer, at: number, done: (err: Error | null, n: number) => void): number {
    const id = this.#nextId();
    if (this.#dead) {
      const err = this.#dead;
      queueMicrotask(() => done(err, 0));
      return id;
    }
    this.#pending.set(id, { kind: 'read', into, at, len, done });
    this.#send(encodeRequest(PacketType.READ, id, [handle, BigInt(offset), len]));
    return id;
  }

  /** Forgets a read: its callback will not run and its buffer is not written to any more. */
  abandon(id: number): void {
    const r = this.#pending.get(id);
    if (r?.kind === 'read') {
      r.into = null;
      r.done = noop;
    }
  }

  /** Ends the connection; outstanding requests fail with HF_SOURCE_DISCONNECTED. Idempotent. */
  async disconnect(): Promise<void> {
    this.#lost(null, 'closed by Holdfast');
    if (this.#connClosed) return;
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, 2000);
      t.unref();
      this.#conn.once('close', () => {
        clearTimeout(t);
        resolve();
      });
      this.#conn.end();
    });
  }

  #attach(channel: ClientChannel): void {
    this.#channel = channel;
    channel.on('data', (chunk: Buffer) => {
      if (this.#dead) return;
      try {
        this.#parse(chunk);
      } catch (err) {
        this.#lost(err as Error);
      }
    });
    channel.on('close', () => this.#lost(null, 'the SFTP channel closed'));
    channel.on('error', (err: Error) => this.#lost(err));
    channel.stderr.resume();
  }

  async #init(): Promise<void> {
    const reply = new Promise<{ version: number; ext: Map<string, string> }>((resolve, reject) => {
      this.#version = { resolve, reject };
    });
    // INIT carries the version where other requests carry their id.
    this.#send(encodeRequest(PacketType.INIT, SFTP_VERSION, []));
    const { version, ext } = await reply;
    if (version !== SFTP_VERSION) {
      throw new HoldfastError('HF_SOURCE_PROTOCOL', `${this.#where}: the SFTP server speaks version ${version}; Holdfast speaks version 3 (as OpenSSH does)`);
    }
    if (ext.get('limits@openssh.com') === '1') {
      const r = await this.#request(PacketType.EXTENDED, [Buffer.from('limits@openssh.com')]);
      if (r.type === PacketType.EXTENDED_REPLY) {
        r.body.u64(); // max packet length
        const maxRead = r.body.u64();
        if (maxRead > 0) this.maxRead = Math.min(maxRead, MAX_READ);
      }
    }
  }

  #nextId(): number {
    this.#lastId = (this.#lastId + 1) >>> 0;
    return this.#lastId;
  }

  #request(type: number, fields: readonly (Buffer | number | bigint)[]): Promise<Reply> {
    if (this.#dead) return Promise.reject(this.#dead);
    const id = this.#nextId();
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { kind: 'plain', resolve, reject });
      this.#send(encodeRequest(type, id, fields));
    });
  }

  /**
   * Queues a packet. Packets queued until the event loop's next turn leave
   * in one SSH packet and one socket write: the requests made while handling
   * one batch of replies go out together.
   */
  #send(pkt: Buffer): void {
    this.#out.push(pkt);
    if (this.#flushQueued) return;
    this.#flushQueued = true;
    setImmediate(() => {
      this.#flushQueued = false;
      const out = this.#out;
      this.#out = [];
      if (this.#dead || !this.#channel) return;
      this.#sock?.cork();
      this.#channel.write(out.length === 1 ? out[0]! : Buffer.concat(out));
      this.#sock?.uncork();
    });
  }

  /**
   * Marks the connection dead (once) and fails everything outstanding: with
   * HF_SOURCE_PROTOCOL when a malformed packet is why (the connection is
   * ended because of it), else HF_SOURCE_DISCONNECTED.
   */
  #lost(cause: Error | null, why?: string): void {
    if (this.#dead) return;
    const reason = why ?? cause?.message ?? 'the server closed it';
    const dead = cause instanceof HoldfastError && cause.code === 'HF_SOURCE_PROTOCOL'
      ? new HoldfastError('HF_SOURCE_PROTOCOL', `${this.#where}: ${cause.message}; the connection was ended`, { cause })
      : new HoldfastError('HF_SOURCE_DISCONNECTED', `${this.#where}: the SSH connection dropped (${reason})`, cause ? { cause } : undefined);
    this.#dead = dead;
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const r of pending) {
      if (r.kind === 'read') r.done(dead, 0);
      else r.reject(dead);
    }
    // during connect, a coded cause (a malformed VERSION, say) is the better answer
    this.#version?.reject(cause instanceof HoldfastError ? cause : dead);
    this.#version = null;
    this.#conn.end();
  }

  /** Feeds bytes from the channel: packet headers, READ data (copied to its buffer), other bodies. */
  #parse(chunk: Buffer): void {
    let p = 0;
    const n = chunk.length;
    while (p < n) {
      switch (this.#state) {
        case Parse.HEAD: {
          const take = Math.min(9 - this.#headLen, n - p);
          chunk.copy(this.#head, this.#headLen, p, p + take);
          p += take;
          this.#headLen += take;
          if (this.#headLen < 9) return;
          this.#headLen = 0;
          const len = this.#head.readUInt32BE(0);
          if (len < 5 || len > MAX_PACKET) throw protocolError(`packet length ${len}`);
          this.#type = this.#head[4]!;
          this.#id = this.#head.readUInt32BE(5);
          this.#rest = len - 5;
          const req = this.#type === PacketType.DATA ? this.#pending.get(this.#id) : undefined;
          if (req?.kind === 'read') {
            this.#read = req;
            this.#state = Parse.DATA_LEN;
          } else {
            this.#body = Buffer.allocUnsafe(this.#rest);
            this.#bodyPos = 0;
            this.#state = Parse.BODY;
            if (this.#rest === 0) this.#endBody();
          }
          break;
        }
        case Parse.DATA_LEN: {
          const take = Math.min(4 - this.#headLen, n - p);
          chunk.copy(this.#head, 9 + this.#headLen, p, p + take);
          p += take;
          this.#headLen += take;
          if (this.#headLen < 4) return;
          this.#headLen = 0;
          const dataLen = this.#head.readUInt32BE(9);
          this.#rest -= 4;
          if (this.#rest < 0 || dataLen > this.#rest || dataLen > this.#read!.len) throw protocolError(`DATA of ${dataLen} bytes for a READ of ${this.#read!.len}`);
          this.#dataLen = dataLen;
          this.#dataLeft = dataLen;
          this.#dataAt = this.#read!.at;
          this.#skip = this.#rest - dataLen;
          this.#state = Parse.DATA;
          if (dataLen === 0 && this.#skip === 0) this.#endData();
          break;
        }
        case Parse.DATA: {
          if (this.#dataLeft > 0) {
            const take = Math.min(this.#dataLeft, n - p);
            const into = this.#read!.into;
            if (into) chunk.copy(into, this.#dataAt, p, p + take);
            p += take;
            this.#dataAt += take;
            this.#dataLeft -= take;
          }
          if (this.#dataLeft === 0 && this.#skip > 0) {
            const take = Math.min(this.#skip, n - p);
            p += take;
            this.#skip -= take;
          }
          if (this.#dataLeft === 0 && this.#skip === 0) this.#endData();
          break;
        }
        case Parse.BODY: {
          const take = Math.min(this.#rest - this.#bodyPos, n - p);
          chunk.copy(this.#body!, this.#bodyPos, p, p + take);
          p += take;
          this.#bodyPos += take;
          if (this.#bodyPos === this.#rest) this.#endBody();
          break;
        }
      }
    }
  }

  #endData(): void {
    const req = this.#read!;
    this.#read = null;
    this.#state = Parse.HEAD;
    this.#pending.delete(this.#id);
    req.done(null, this.#dataLen);
  }

  #endBody(): void {
    const body = this.#body!;
    this.#body = null;
    this.#state = Parse.HEAD;
    const type = this.#type;
    const id = this.#id;
    if (type === PacketType.VERSION) {
      const r = new WireReader(body);
      const ext = new Map<string, string>();
      while (r.remaining > 0) ext.set(r.string(), r.string());
      const waiter = this.#version;
      this.#version = null;
      if (!waiter) throw protocolError('a VERSION packet after the first');
      waiter.resolve({ version: id, ext });
      return;
    }
    const req = this.#pending.get(id);
    if (!req) return; // a reply to nothing we are waiting for
    this.#pending.delete(id);
    if (req.kind === 'plain') {
      req.resolve({ type, body: new WireReader(body) });
      return;
    }
    if (type !== PacketType.STATUS) throw protocolError(`reply type ${type} to READ`);
    const st = statusOf({ type, body: new WireReader(body) });
    if (st.status === Status.EOF) req.done(null, -1);
    else req.done(statusError(st), 0);
  }
}

function statusOf(r: Reply): StatusReply {
  if (r.type !== PacketType.STATUS) throw protocolError(`unexpected reply type ${r.type}`);
  const status = r.body.u32();
  // Some servers leave out the message and language tag.
  const message = r.body.remaining >= 4 ? r.body.string() : '';
  return { status, message };
}

function statusError(st: StatusReply): SftpStatusError {
  return new SftpStatusError(st.status, st.message);
}

function replyError(r: Reply, what: string): Error {
  if (r.type === PacketType.STATUS) return statusError(statusOf(r));
  return protocolError(`reply type ${r.type} to ${what}`);
}

function attrsOf(r: Reply): SftpAttrs {
  if (r.type !== PacketType.ATTRS) throw replyError(r, 'STAT');
  return r.body.attrs();
}

function handleOf(r: Reply): Buffer {
  if (r.type !== PacketType.HANDLE) throw replyError(r, 'OPEN');
  return r.body.bytes();
}

/** Maps an ssh2 connection error to a coded error that says what to check. */
function connectError(where: string, o: SftpClientOptions, err: Error & { level?: string; code?: string }, hostKeyError: HoldfastError | null): HoldfastError {
  if (hostKeyError) return hostKeyError;
  const cause = { cause: err };
  switch (err.level) {
    case 'client-authentication':
      return new HoldfastError('HF_SOURCE_AUTH_FAILED',
        `${where}: the server refused user '${o.user}' with this key (${err.message}); check that the public key is in that user's authorized_keys and the user may log in`, cause);
    case 'client-timeout':
      return new HoldfastError('HF_SOURCE_UNREACHABLE',
        `${where}: no SSH handshake within ${o.readyTimeoutMs} ms; check the host, the port and the firewall`, cause);
    case 'client-socket':
    case 'client-dns': {
      const code = err.code ?? '';
      const why = code === 'ECONNREFUSED' ? `connection refused: nothing listens on port ${o.port} (is sshd running?)`
        : code === 'ENOTFOUND' || code === 'EAI_AGAIN' || err.level === 'client-dns' ? `the host name does not resolve (${code || err.message}); check the name and DNS`
        : code === 'EHOSTUNREACH' || code === 'ENETUNREACH' || code === 'ETIMEDOUT' ? `the host cannot be reached (${code}); check the address, routing and firewall`
        : `${err.message}; check the host, the port and the network`;
      return new HoldfastError('HF_SOURCE_UNREACHABLE', `${where}: ${why}`, cause);
    }
    default:
      return new HoldfastError('HF_SOURCE_PROTOCOL', `${where}: the SSH handshake failed: ${err.message}`, cause);
  }
}
