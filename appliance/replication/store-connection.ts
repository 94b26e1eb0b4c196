import { randomBytes } from 'node:crypto';
import { isIP } from 'node:net';
import tls from 'node:tls';

import { ErrorCodes, type ErrorCode, HoldfastError, errorCode } from '../errors/index.ts';
import {
  ALPN, FLAG_END, type Frame, FrameDecoder, FramePool, FrameType, HEADER_SIZE, frameHeader, MAX_GET_WINDOW, MAX_PAYLOAD, PROTOCOL_VERSION, type ReplicatedType,
  type Welcome, encodeFrame, encodeJson, parseJson, parseWireError,
} from '../protocol/index.ts';

export interface Endpoint {
  host: string;
  port: number;
}

export interface ClientTls {
  cert: Buffer;
  key: Buffer;
  ca: Buffer;
  /** The name to check in the store's certificate; default the endpoint's host. */
  servername?: string;
}

/** Something that limits the bytes per second written (appliance/replication/rate-limit.ts). */
export interface Limiter {
  take(n: number, signal?: AbortSignal): Promise<void>;
}

export interface PutFile {
  type: ReplicatedType;
  name: string;
  size: number;
  digest: string;
}

export const CLIENT_NAME = 'holdfast 0.1.0';
const CONNECT_TIMEOUT_MS = 10_000;
const PING_AFTER_MS = 20_000;
const DEAD_AFTER_MS = 30_000;

export function endpointText(e: Endpoint): string {
  return e.host.includes(':') ? `[${e.host}]:${e.port}` : `${e.host}:${e.port}`;
}

/** True for failures of the connection itself (try again, or another endpoint). */
export function isConnectionError(err: unknown): boolean {
  const c = errorCode(err);
  return c === 'HF_TARGET_UNREACHABLE' || c === 'HF_PROTO_TIMEOUT' || (err as { connectionLost?: boolean })?.connectionLost === true;
}

function tlsRefusal(err: unknown): boolean {
  const c = errorCode(err) ?? '';
  return c.startsWith('ERR_SSL_') || c.startsWith('ERR_TLS_') || /CERT|UNABLE_TO_|SELF_SIGNED|DEPTH_ZERO/.test(c);
}

class Inbox {
  readonly #items: Frame[] = [];
  #waiter: { resolve: (f: Frame) => void; reject: (e: Error) => void } | null = null;
  #error: Error | null = null;
  window = 0;
  #windowWaiter: (() => void) | null = null;

  push(f: Frame): void {
    if (this.#waiter) {
      const w = this.#waiter;
      this.#waiter = null;
      w.resolve(f);
    } else {
      this.#items.push(f);
    }
  }

  fail(err: Error): void {
    if (this.#error) return;
    this.#error = err;
    this.#waiter?.reject(err);
    this.#waiter = null;
    this.#windowWaiter?.();
  }

  next(): Promise<Frame> {
    const f = this.#items.shift();
    if (f) return Promise.resolve(f);
    if (this.#error) return Promise.reject(this.#error);
    return new Promise((resolve, reject) => { this.#waiter = { resolve, reject }; });
  }

  grant(n: number): void {
    this.window += n;
    this.#windowWaiter?.();
  }

  async waitWindow(n: number): Promise<void> {
    while (this.window < n) {
      if (this.#error) throw this.#error;
      await new Promise<void>((resolve) => { this.#windowWaiter = resolve; });
      this.#windowWaiter = null;
    }
    if (this.#error) throw this.#error;
  }
}

/**
 * One TLS connection to one store endpoint (docs/PROTOCOL.md), with many
 * requests in flight on their own streams. Every failure of the connection
 * rejects every pending request with an error for which isConnectionError is
 * true; the caller (TargetClient) moves to the next endpoint.
 */
export class StoreConnection {
  readonly endpoint: Endpoint;
  readonly welcome: Welcome;
  readonly #socket: tls.TLSSocket;
  readonly #decoder: FrameDecoder;
  readonly #inboxes: Map<number, Inbox>;
  #nextStream = 1;
  #lastFrame = Date.now();
  #dead: Error | null = null;
  readonly #timer: NodeJS.Timeout;
  readonly #pings = new Map<string, () => void>();
  /** Payload bytes of DATA frames written. */
  dataSent = 0;
  #pool: FramePool | null = null;

  private constructor(endpoint: Endpoint, socket: tls.TLSSocket, decoder: FrameDecoder, welcome: Welcome, leftover: Frame[]) {
    this.endpoint = endpoint;
    this.#socket = socket;
    this.#decoder = decoder;
    this.welcome = welcome;
    this.#inboxes = new Map();
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('close', () => this.#kill(this.#lost('the store closed the connection')));
    socket.on('error', (err) => this.#kill(this.#lost(err.message, err)));
    for (const f of leftover) this.#onFrame(f);
    this.#timer = setInterval(() => this.#keepalive(), 5000);
    this.#timer.unref();
  }

  /** Connects, checks the store's certificate and protocol, and exchanges HELLO/WELCOME. */
  static async connect(endpoint: Endpoint, t: ClientTls, signal?: AbortSignal): Promise<StoreConnection> {
    const where = endpointText(endpoint);
    const socket = tls.connect({
      host: endpoint.host, port: endpoint.port, cert: t.cert, key: t.key, ca: t.ca, minVersion: 'TLSv1.3', ALPNProtocols: [ALPN],
      // SNI carries names only; for an IP address the certificate's IP entries are checked.
      ...(t.servername !== undefined ? { servername: t.servername } : isIP(endpoint.host) ? {} : { servername: endpoint.host }),
    });
    socket.setNoDelay(true); // small requests must not wait for Nagle's algorithm
    const decoder = new FrameDecoder(MAX_PAYLOAD);
    try {
      return await new Promise<StoreConnection>((resolve, reject) => {
        const timer = setTimeout(() => fail(new HoldfastError('HF_TARGET_UNREACHABLE', `${where}: no answer within ${CONNECT_TIMEOUT_MS / 1000} s`)), CONNECT_TIMEOUT_MS);
        const onAbort = () => fail(new HoldfastError('HF_INTERRUPTED', 'interrupted'));
        signal?.addEventListener('abort', onAbort, { once: true });
        let buffered: Frame[] = [];
        const cleanup = () => {
          clearTimeout(timer);
          signal?.removeEventListener('abort', onAbort);
          socket.off('data', onData);
          socket.off('error', onError);
          socket.off('close', onClose);
        };
        function fail(err: Error) {
          cleanup();
          socket.destroy();
          reject(err);
        }
        const onError = (err: Error) => {
          if (tlsRefusal(err)) {
            fail(new HoldfastError('HF_TLS_REFUSED',
              `${where}: the TLS handshake failed (${err.message}). Check that --ca is the vendor CA that issued the store's certificate, and that this appliance's certificate is valid, not revoked, and issued by the CA the store trusts.`,
              { cause: err }));
          } else {
            fail(new HoldfastError('HF_TARGET_UNREACHABLE', `${where}: ${err.message}`, { cause: err }));
          }
        };
        const onClose = () => fail(new HoldfastError('HF_TLS_REFUSED',
          `${where}: the store closed the connection before accepting this appliance; is the certificate an appliance certificate from the CA the store trusts, and not revoked?`));
        const onData = (chunk: Buffer) => {
          let frames: Frame[];
          try {
            frames = decoder.push(chunk);
          } catch (err) {
            fail(new HoldfastError('HF_PROTO_MALFORMED', `${where}: ${(err as Error).message}`));
            return;
          }
          buffered = buffered.concat(frames);
          const first = buffered.shift();
          if (!first) return;
          if (first.type === FrameType.GOAWAY) {
            const w = parseWireError(first.payload);
            fail(new HoldfastError(knownCode(w.code), `${where}: the store refused: ${w.message}`));
            return;
          }
          if (first.type !== FrameType.WELCOME) {
            fail(new HoldfastError('HF_PROTO_MALFORMED', `${where}: the store's first frame was not WELCOME`));
            return;
          }
          let welcome: Welcome;
          try {
            welcome = parseWelcome(first.payload);
          } catch (err) {
            fail(err as Error);
            return;
          }
          cleanup();
          resolve(new StoreConnection(endpoint, socket, decoder, welcome, buffered));
        };
        socket.on('error', onError);
        socket.on('close', onClose);
        socket.once('secureConnect', () => {
          if (socket.alpnProtocol !== ALPN) {
            fail(new HoldfastError('HF_PROTO_VERSION', `${where}: the server does not speak ${ALPN} (is this a Holdfast store?)`));
            return;
          }
          socket.on('data', onData);
          socket.write(Buffer.concat(encodeJson(FrameType.HELLO, 0, 0, {
            versions: [PROTOCOL_VERSION], client: CLIENT_NAME, capabilities: [], maxFrame: MAX_PAYLOAD,
          })));
        });
      });
    } catch (err) {
      socket.destroy();
      throw err;
    }
  }

  get closed(): boolean {
    return this.#dead !== null;
  }

  #lost(message: string, cause?: unknown): HoldfastError {
    const e = new HoldfastError('HF_TARGET_UNREACHABLE', `${endpointText(this.endpoint)}: connection lost: ${message}`, { cause });
    (e as HoldfastError & { connectionLost: boolean }).connectionLost = true;
    return e;
  }

  #kill(err: Error): void {
    if (this.#dead) return;
    this.#dead = err;
    clearInterval(this.#timer);
    for (const inbox of this.#inboxes.values()) inbox.fail(err);
    this.#inboxes.clear();
    for (const p of this.#pings.values()) p();
    this.#socket.destroy();
  }

  close(): void {
    this.#kill(this.#lost('closed by the client'));
  }

  #keepalive(): void {
    const idle = Date.now() - this.#lastFrame;
    if (idle > DEAD_AFTER_MS && this.#inboxes.size > 0) {
      this.#kill(new HoldfastError('HF_PROTO_TIMEOUT', `${endpointText(this.endpoint)}: no answer for ${Math.round(idle / 1000)} s`));
      return;
    }
    if (idle > PING_AFTER_MS) this.#send(encodeFrame(FrameType.PING, 0, 0, randomBytes(8)));
  }

  #onData(chunk: Buffer): void {
    this.#lastFrame = Date.now();
    let frames: Frame[];
    try {
      frames = this.#decoder.push(chunk);
    } catch (err) {
      this.#kill(new HoldfastError('HF_PROTO_MALFORMED', `${endpointText(this.endpoint)}: ${(err as Error).message}`));
      return;
    }
    for (const f of frames) this.#onFrame(f);
  }

  #onFrame(f: Frame): void {
    switch (f.type) {
      case FrameType.PONG: {
        const key = f.payload.toString('hex');
        this.#pings.get(key)?.();
        this.#pings.delete(key);
        return;
      }
      case FrameType.GOAWAY: {
        const w = parseWireError(f.payload);
        const e = new HoldfastError(knownCode(w.code), `${endpointText(this.endpoint)}: the store closed the connection: ${w.message}`);
        (e as HoldfastError & { connectionLost: boolean }).connectionLost = true;
        this.#kill(e);
        return;
      }
      case FrameType.WINDOW: {
        if (f.payload.length === 4) this.#inboxes.get(f.stream)?.grant(f.payload.readUInt32BE(0));
        return;
      }
      case FrameType.ERROR: {
        const inbox = this.#inboxes.get(f.stream);
        if (!inbox) return;
        this.#inboxes.delete(f.stream);
        const w = parseWireError(f.payload);
        const e = new HoldfastError(knownCode(w.code), w.message);
        (e as HoldfastError & { retryable: boolean }).retryable = w.retryable;
        inbox.fail(e);
        return;
      }
      case FrameType.RESPONSE:
      case FrameType.DATA: {
        const inbox = this.#inboxes.get(f.stream);
        if (!inbox) return;
        if (f.flags & FLAG_END) this.#inboxes.delete(f.stream);
        inbox.push(f);
        return;
      }
      default:
        return; // unknown frame types from a newer store are ignored
    }
  }

  #send(parts: Buffer[]): boolean {
    if (this.#dead) return false;
    this.#socket.cork();
    let ok = true;
    for (const p of parts) ok = this.#socket.write(p) && ok;
    this.#socket.uncork();
    return ok;
  }

  async #drain(): Promise<void> {
    if (!this.#socket.writableNeedDrain) return;
    await new Promise<void>((resolve) => {
      const done = () => { this.#socket.off('drain', done); this.#socket.off('close', done); resolve(); };
      this.#socket.on('drain', done);
      this.#socket.on('close', done);
    });
  }

  #open(body: Record<string, unknown>): { id: number; inbox: Inbox } {
    if (this.#dead) throw this.#dead;
    const id = this.#nextStream;
    this.#nextStream += 2;
    const inbox = new Inbox();
    this.#inboxes.set(id, inbox);
    this.#send(encodeJson(FrameType.REQUEST, 0, id, body));
    return { id, inbox };
  }

  async #response(inbox: Inbox): Promise<{ frame: Frame; body: Record<string, unknown> }> {
    const frame = await inbox.next();
    if (frame.type !== FrameType.RESPONSE) throw new HoldfastError('HF_PROTO_MALFORMED', `${endpointText(this.endpoint)}: expected RESPONSE`);
    return { frame, body: parseJson(frame.payload, 'RESPONSE') };
  }

  /** A request answered by one RESPONSE (HAVE, LIST, DELETE, STAT). */
  async request(body: Record<string, unknown>): Promise<Record<string, unknown>> {
    const { inbox } = this.#open(body);
    return (await this.#response(inbox)).body;
  }

  /** Round trip of a PING, in milliseconds. */
  async ping(): Promise<number> {
    const started = performance.now();
    const payload = randomBytes(8);
    if (this.#dead) throw this.#dead;
    const key = payload.toString('hex');
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.#pings.delete(key);
        this.#kill(new HoldfastError('HF_PROTO_TIMEOUT', `${endpointText(this.endpoint)}: no answer to PING for ${DEAD_AFTER_MS / 1000} s`));
        resolve();
      }, DEAD_AFTER_MS);
      this.#pings.set(key, () => { clearTimeout(timer); resolve(); });
      this.#send(encodeFrame(FrameType.PING, 0, 0, payload));
    });
    if (this.#dead) throw this.#dead;
    return performance.now() - started;
  }

  /**
   * Uploads a file from `offset` (or wherever the store's partial file ends,
   * if earlier). read(position, length) supplies the bytes. Resolves when
   * the store has acknowledged the file as durable, with the offset the
   * upload started at and the payload bytes sent (existed: the store already
   * held the file, and nothing was sent).
   */
  async put(file: PutFile, offset: number, read: (position: number, into: Buffer) => Promise<void>,
    limiter?: Limiter, signal?: AbortSignal, frameCap?: number): Promise<{ start: number; sent: number; existed: boolean }> {
    const { id, inbox } = this.#open({ op: 'PUT', type: file.type, name: file.name, size: file.size, digest: file.digest, offset });
    const first = await this.#response(inbox);
    if (first.frame.flags & FLAG_END) return { start: 0, sent: 0, existed: true };
    const start = first.body.offset;
    const window = first.body.window;
    if (typeof start !== 'number' || !Number.isSafeInteger(start) || start < 0 || start > file.size || typeof window !== 'number' || window < 1) {
      throw new HoldfastError('HF_PROTO_MALFORMED', `${endpointText(this.endpoint)}: a malformed PUT answer`);
    }
    inbox.grant(window);
    const frameSize = Math.max(4096, Math.min(this.welcome.maxFrame, MAX_PAYLOAD, frameCap ?? Infinity));
    // Frames are read from the file straight after their header, in a few reused buffers:
    // one allocation per upload, not per MiB, and one write per frame.
    this.#pool ??= new FramePool(MAX_PAYLOAD, 12);
    const pool = this.#pool;
    const fill = async (at: number): Promise<{ frame: Buffer; n: number }> => {
      const n = Math.min(frameSize, file.size - at);
      const frame = await pool.acquire();
      try {
        if (n > 0) await read(at, frame.subarray(HEADER_SIZE, HEADER_SIZE + n));
      } catch (err) {
        pool.release(frame);
        throw err;
      }
      return { frame, n };
    };
    let pos = start;
    let sent = 0;
    let next: Promise<{ frame: Buffer; n: number }> | null = fill(pos);
    try {
      do {
        signal?.throwIfAborted();
        const { frame, n } = await next!;
        next = null;
        try {
          await inbox.waitWindow(n);
          if (limiter) await limiter.take(n, signal);
        } catch (err) {
          pool.release(frame);
          throw err;
        }
        const after = pos + n;
        const last = after === file.size;
        if (!last) next = fill(after);
        inbox.window -= n;
        frameHeader(FrameType.DATA, last ? FLAG_END : 0, id, n).copy(frame, 0);
        if (this.#dead) {
          pool.release(frame);
          throw this.#dead;
        }
        this.#socket.write(frame.subarray(0, HEADER_SIZE + n), () => pool.release(frame));
        this.dataSent += n;
        sent += n;
        pos = after;
        await this.#drain();
      } while (pos < file.size);
    } catch (err) {
      void next?.then((x) => pool.release(x.frame), () => undefined);
      if (!this.#dead && this.#inboxes.has(id)) {
        this.#inboxes.delete(id);
        this.#send(encodeFrame(FrameType.CANCEL, 0, id));
      }
      throw err;
    }
    const done = await this.#response(inbox);
    if (!(done.frame.flags & FLAG_END)) throw new HoldfastError('HF_PROTO_MALFORMED', `${endpointText(this.endpoint)}: PUT not ended`);
    return { start, sent, existed: false };
  }

  /** Reads a file (or a range): yields each DATA frame's pieces (as received, not joined), granting window as they are consumed. */
  async *get(type: ReplicatedType, name: string, offset?: number, length?: number): AsyncGenerator<Buffer[]> {
    const body: Record<string, unknown> = { op: 'GET', type, name, window: MAX_GET_WINDOW };
    if (offset !== undefined) body.offset = offset;
    if (length !== undefined) body.length = length;
    const { id, inbox } = this.#open(body);
    let finished = false;
    try {
      const head = await this.#response(inbox);
      const want = head.body.length;
      if (typeof want !== 'number') throw new HoldfastError('HF_PROTO_MALFORMED', 'a malformed GET answer');
      let got = 0;
      for (;;) {
        const f = await inbox.next();
        if (f.type !== FrameType.DATA) throw new HoldfastError('HF_PROTO_MALFORMED', 'expected DATA');
        got += f.length;
        if (got > want) throw new HoldfastError('HF_PROTO_MALFORMED', `the store sent more than the ${want} bytes asked for`);
        const end = (f.flags & FLAG_END) !== 0;
        if (end && got !== want) throw new HoldfastError('HF_PROTO_MALFORMED', `the store sent ${got} of ${want} bytes`);
        if (f.length > 0) yield f.parts;
        if (end) {
          finished = true;
          return;
        }
        const inc = Buffer.allocUnsafe(4);
        inc.writeUInt32BE(f.length, 0);
        this.#send(encodeFrame(FrameType.WINDOW, 0, id, inc));
      }
    } finally {
      if (!finished && !this.#dead && this.#inboxes.has(id)) {
        this.#inboxes.delete(id);
        this.#send(encodeFrame(FrameType.CANCEL, 0, id));
      }
    }
  }

  /**
   * A whole file or range in one buffer of its own: a copy, never a view of
   * the socket's read buffers (Node reuses those for later reads), so the
   * caller may keep it or free it.
   */
  async getBuffer(type: ReplicatedType, name: string, offset?: number, length?: number): Promise<Buffer> {
    const parts: Buffer[] = [];
    for await (const p of this.get(type, name, offset, length)) parts.push(...p);
    return Buffer.concat(parts);
  }
}

function knownCode(code: string): ErrorCode {
  return code in ErrorCodes ? (code as ErrorCode) : 'HF_IO';
}

function parseWelcome(payload: Buffer): Welcome {
  const o = parseJson(payload, 'WELCOME');
  const num = (k: string) => {
    const v = o[k];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new HoldfastError('HF_PROTO_MALFORMED', `WELCOME: ${k} is missing`);
    return v;
  };
  if (o.version !== PROTOCOL_VERSION) throw new HoldfastError('HF_PROTO_VERSION', `the store chose protocol version ${String(o.version)}`);
  if (typeof o.tenant !== 'string' || typeof o.store !== 'string') throw new HoldfastError('HF_PROTO_MALFORMED', 'WELCOME: tenant and store are missing');
  return {
    version: PROTOCOL_VERSION, tenant: o.tenant, store: o.store, capabilities: Array.isArray(o.capabilities) ? o.capabilities.filter((c): c is string => typeof c === 'string') : [],
    maxFrame: Math.max(4096, Math.min(MAX_PAYLOAD, num('maxFrame'))), maxStreams: num('maxStreams'), window: num('window'), graceSeconds: num('graceSeconds'),
    quota: typeof o.quota === 'number' ? o.quota : null,
  };
}
