import { createHash } from 'node:crypto';
import type tls from 'node:tls';

import { HoldfastError, errorCode } from '../errors/index.ts';
import { forEachLimit } from '../limits/index.ts';
import {
  FLAG_END, type Frame, FrameDecoder, FramePool, FrameType, HEADER_SIZE, frameHeader, MAX_GET_WINDOW, MAX_LIST, MAX_PAYLOAD, PROTOCOL_VERSION, PUT_WINDOW,
  type ReplicatedType, type Request, type WireError, contentAddressed, encodeFrame, encodeJson, parseHello, parseRequest,
} from '../protocol/index.ts';
import { Hasher } from '../../native/index.ts';
import type { StoreBackend, Upload } from './store-backend.ts';

export interface SessionSettings {
  backend: StoreBackend;
  store: string;
  graceSeconds: number;
  quota: number | null;
  maxStreams: number;
  helloTimeoutMs: number;
  idleTimeoutMs: number;
  now: () => Date;
  log: (event: Record<string, unknown>) => void;
}

interface PutStream {
  kind: 'put';
  upload: Upload | null;
  /** SHA-256 of the file so far, fed in order as bytes arrive (one update at a time); null when the backend checks the digest itself. */
  hasher: Hasher | null;
  hashing: Promise<void>;
  lastWrite: Promise<void>;
  size: number;
  next: number;
  window: number;
  writes: Set<Promise<void>>;
  receiving: boolean;
  failed: boolean;
}

interface GetStream {
  kind: 'get';
  credit: number;
  cancelled: boolean;
  wake: (() => void) | null;
}

interface OpStream {
  kind: 'op';
}

type Stream = PutStream | GetStream | OpStream;

/** Codes the store passes on as they are; anything else is reported as HF_IO. */
const WIRE_CODES = new Set([
  'HF_PROTO_MALFORMED', 'HF_PROTO_FRAME_TOO_LARGE', 'HF_PROTO_VERSION', 'HF_PROTO_FLOW', 'HF_PROTO_STREAM', 'HF_PROTO_UNSUPPORTED',
  'HF_STORE_NOT_FOUND', 'HF_STORE_DIGEST_MISMATCH', 'HF_STORE_EXISTS', 'HF_STORE_BAD_OFFSET', 'HF_STORE_QUOTA_EXCEEDED', 'HF_STORE_BUSY',
  'HF_DISK_FULL', 'HF_IO', 'HF_INVALID_ARGUMENT',
]);
const RETRYABLE = new Set(['HF_DISK_FULL', 'HF_IO', 'HF_STORE_BAD_OFFSET', 'HF_STORE_DIGEST_MISMATCH', 'HF_STORE_BUSY']);

/** Stop reading a connection while this many received bytes wait for the disk. */
const PAUSE_AT = 16 << 20;
const RESUME_AT = 8 << 20;
/**
 * Stop reading a connection while this many answer bytes wait to be sent: a
 * client that sends requests (or PINGs) and never reads the answers must not
 * make the store buffer without bound.
 */
const OUT_PAUSE_AT = 4 << 20;
/** Files of one HAVE looked up at once. */
const HAVE_LOOKUPS = 16;
/** Config and key files are a few KiB; anything far larger is not one. */
const MAX_SMALL_FILE = 1 << 20;

function toWire(err: unknown): WireError {
  const code = errorCode(err);
  if (code && WIRE_CODES.has(code)) {
    return { code: code === 'HF_INVALID_ARGUMENT' ? 'HF_PROTO_MALFORMED' : code, message: (err as Error).message, retryable: RETRYABLE.has(code) };
  }
  return { code: 'HF_IO', message: `the store failed: ${(err as Error)?.message ?? String(err)}`, retryable: true };
}

/**
 * One client connection to the store: frames in, operations on the backend,
 * frames out (docs/PROTOCOL.md). The tenant comes from the certificate and
 * is fixed for the connection; nothing the client sends can name another.
 * Every failure of one stream is an ERROR on that stream; only a frame that
 * breaks the framing or the flow control ends the connection (GOAWAY).
 */
export class StoreSession {
  readonly #socket: tls.TLSSocket;
  readonly #tenant: string;
  readonly #s: SessionSettings;
  readonly #decoder = new FrameDecoder(MAX_PAYLOAD);
  readonly #streams = new Map<number, Stream>();
  #lastStream = 0;
  #welcomed = false;
  #closed = false;
  #queued = 0;
  #paused = false;
  #outPaused = false;
  #maxFrame = MAX_PAYLOAD;
  #pool: FramePool | null = null;
  #gets = 0;
  readonly #helloTimer: NodeJS.Timeout;

  constructor(socket: tls.TLSSocket, tenant: string, settings: SessionSettings) {
    this.#socket = socket;
    this.#tenant = tenant;
    this.#s = settings;
    this.#helloTimer = setTimeout(() => this.#goaway('HF_PROTO_TIMEOUT', 'no HELLO within the time allowed'), settings.helloTimeoutMs);
    socket.setTimeout(settings.idleTimeoutMs, () => {
      this.#s.log({ event: 'idle-timeout', tenant });
      socket.destroy();
    });
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('close', () => this.#onClose());
    socket.on('error', () => undefined);
  }

  #onData(chunk: Buffer): void {
    if (this.#closed) return;
    let frames: Frame[];
    try {
      frames = this.#decoder.push(chunk);
    } catch (err) {
      this.#goaway(errorCode(err) ?? 'HF_PROTO_MALFORMED', (err as Error).message);
      return;
    }
    for (const f of frames) {
      if (this.#closed) return;
      try {
        this.#onFrame(f);
      } catch (err) {
        this.#goaway(errorCode(err) ?? 'HF_PROTO_MALFORMED', (err as Error).message);
      }
    }
  }

  #onClose(): void {
    this.#closed = true;
    clearTimeout(this.#helloTimer);
    for (const [id, st] of this.#streams) this.#dropStream(id, st);
  }

  #dropStream(id: number, st: Stream): void {
    this.#streams.delete(id);
    if (st.kind === 'put') {
      st.receiving = false;
      const upload = st.upload;
      void Promise.allSettled([...st.writes]).then(() => upload?.close());
    } else if (st.kind === 'get') {
      st.cancelled = true;
      st.wake?.();
    }
  }

  #send(parts: Buffer[]): boolean {
    if (this.#closed || this.#socket.destroyed) return false;
    this.#socket.cork();
    let ok = true;
    for (const p of parts) ok = this.#socket.write(p) && ok;
    this.#socket.uncork();
    if (!this.#outPaused && this.#socket.writableLength > OUT_PAUSE_AT) {
      this.#outPaused = true;
      this.#socket.pause();
      this.#socket.once('drain', () => {
        this.#outPaused = false;
        if (!this.#paused) this.#socket.resume();
      });
    }
    return ok;
  }

  #goaway(code: string, message: string): void {
    if (this.#closed) return;
    this.#s.log({ event: 'goaway', tenant: this.#tenant, code, message });
    this.#send(encodeJson(FrameType.GOAWAY, 0, 0, { code, message }));
    this.#closed = true;
    this.#socket.end();
    setTimeout(() => this.#socket.destroy(), 1000).unref();
    for (const [id, st] of this.#streams) this.#dropStream(id, st);
  }

  #error(stream: number, err: unknown): void {
    const st = this.#streams.get(stream);
    if (st) this.#dropStream(stream, st);
    const w = toWire(err);
    if (w.code === 'HF_IO') this.#s.log({ event: 'error', tenant: this.#tenant, code: w.code, message: w.message });
    this.#send(encodeJson(FrameType.ERROR, FLAG_END, stream, w));
  }

  #respond(stream: number, body: unknown, end: boolean): void {
    if (end) this.#streams.delete(stream);
    this.#send(encodeJson(FrameType.RESPONSE, end ? FLAG_END : 0, stream, body));
  }

  #onFrame(f: Frame): void {
    if (!this.#welcomed) {
      if (f.type !== FrameType.HELLO || f.stream !== 0) throw new HoldfastError('HF_PROTO_MALFORMED', 'the first frame must be HELLO on stream 0');
      this.#hello(f);
      return;
    }
    switch (f.type) {
      case FrameType.REQUEST:
        this.#request(f);
        return;
      case FrameType.DATA:
        this.#data(f);
        return;
      case FrameType.WINDOW: {
        if (f.payload.length !== 4) throw new HoldfastError('HF_PROTO_MALFORMED', 'a WINDOW payload is 4 bytes');
        const st = this.#streams.get(f.stream);
        if (st?.kind === 'get') {
          st.credit = Math.min(st.credit + f.payload.readUInt32BE(0), MAX_GET_WINDOW);
          st.wake?.();
        }
        return;
      }
      case FrameType.CANCEL: {
        const st = this.#streams.get(f.stream);
        if (st) this.#dropStream(f.stream, st);
        return;
      }
      case FrameType.PING:
        if (f.stream !== 0 || f.payload.length !== 8) throw new HoldfastError('HF_PROTO_MALFORMED', 'PING carries 8 bytes on stream 0');
        this.#send(encodeFrame(FrameType.PONG, 0, 0, f.payload));
        return;
      case FrameType.HELLO:
        throw new HoldfastError('HF_PROTO_MALFORMED', 'HELLO was sent twice');
      default:
        throw new HoldfastError('HF_PROTO_MALFORMED', `frame type 0x${f.type.toString(16)} is not one a client may send`);
    }
  }

  #hello(f: Frame): void {
    const h = parseHello(f.payload);
    clearTimeout(this.#helloTimer);
    if (!h.versions.includes(PROTOCOL_VERSION)) {
      throw new HoldfastError('HF_PROTO_VERSION', `this store speaks protocol version ${PROTOCOL_VERSION}; the client offered ${h.versions.join(', ')}`);
    }
    this.#maxFrame = Math.max(4096, Math.min(MAX_PAYLOAD, h.maxFrame ?? MAX_PAYLOAD));
    this.#welcomed = true;
    this.#s.log({ event: 'hello', tenant: this.#tenant, client: h.client });
    this.#send(encodeJson(FrameType.WELCOME, 0, 0, {
      version: PROTOCOL_VERSION, tenant: this.#tenant, store: this.#s.store, capabilities: [], maxFrame: this.#maxFrame,
      maxStreams: this.#s.maxStreams, window: PUT_WINDOW, graceSeconds: this.#s.graceSeconds, quota: this.#s.quota,
    }));
  }

  #request(f: Frame): void {
    const id = f.stream;
    if (id === 0 || id % 2 === 0 || id <= this.#lastStream) {
      this.#send(encodeJson(FrameType.ERROR, FLAG_END, id, { code: 'HF_PROTO_STREAM', message: `stream id ${id} is not a new odd id`, retryable: false }));
      return;
    }
    this.#lastStream = id;
    if (this.#streams.size >= this.#s.maxStreams) {
      this.#send(encodeJson(FrameType.ERROR, FLAG_END, id, { code: 'HF_PROTO_STREAM', message: `more than ${this.#s.maxStreams} streams open`, retryable: true }));
      return;
    }
    let req: Request;
    try {
      req = parseRequest(f.payload);
    } catch (err) {
      this.#error(id, err);
      return;
    }
    if (req.op === 'PUT') {
      const st: PutStream = { kind: 'put', upload: null, hasher: new Hasher(), hashing: Promise.resolve(), lastWrite: Promise.resolve(), size: req.size, next: 0, window: 0, writes: new Set(), receiving: false, failed: false };
      this.#streams.set(id, st);
      this.#put(id, st, req).catch((err: unknown) => { if (this.#streams.get(id) === st) this.#error(id, err); });
    } else if (req.op === 'GET') {
      const st: GetStream = { kind: 'get', credit: req.window ?? MAX_GET_WINDOW, cancelled: false, wake: null };
      this.#streams.set(id, st);
      this.#get(id, st, req).catch((err: unknown) => { if (this.#streams.get(id) === st) this.#error(id, err); });
    } else {
      const st: OpStream = { kind: 'op' };
      this.#streams.set(id, st);
      this.#simple(req).then(
        (body) => { if (this.#streams.get(id) === st) this.#respond(id, body, true); },
        (err: unknown) => { if (this.#streams.get(id) === st) this.#error(id, err); },
      );
    }
  }

  async #simple(req: Request): Promise<unknown> {
    const b = this.#s.backend;
    const t = this.#tenant;
    switch (req.op) {
      case 'HAVE': {
        // Looked up several at once: on S3 each is a request or two, and a batch is up to a thousand files.
        const files: ({ state: 'complete'; size: number } | { state: 'partial'; offset: number } | { state: 'absent' })[] = new Array(req.files.length);
        const open: { type: ReplicatedType; name: string; digest: string; i: number }[] = [];
        await forEachLimit(req.files.map((ref, i) => ({ ref, i })), HAVE_LOOKUPS, async ({ ref, i }) => {
          const size = await b.stat(t, ref.type, ref.name);
          if (size !== null) { files[i] = { state: 'complete', size }; return; }
          files[i] = { state: 'absent' };
          const digest = ref.digest ?? (contentAddressed(ref.type) ? ref.name : undefined);
          if (digest !== undefined) open.push({ type: ref.type, name: ref.name, digest, i });
        });
        // Of the files not there, which have an upload in progress.
        const offsets = b.partials ? await b.partials(t, open) : [];
        if (!b.partials) await forEachLimit(open.map((_, j) => j), HAVE_LOOKUPS, async (j) => { offsets[j] = await b.partial(t, open[j]!.type, open[j]!.name, open[j]!.digest); });
        open.forEach((f, j) => { const offset = offsets[j]; if (offset !== null && offset !== undefined) files[f.i] = { state: 'partial', offset }; });
        return { files };
      }
      case 'LIST':
        return b.list(t, req.type, req.after, req.limit ?? MAX_LIST);
      case 'DELETE': {
        const at = await b.remove(t, req.type, req.name, this.#s.now());
        this.#s.log({ event: 'delete', tenant: t, type: req.type, name: req.name, found: at !== null });
        return { purgeAfter: at ? new Date(at.getTime() + this.#s.graceSeconds * 1000).toISOString() : null };
      }
      case 'STAT': {
        if (req.type !== undefined && req.name !== undefined) {
          const size = await b.stat(t, req.type, req.name);
          if (size === null) throw new HoldfastError('HF_STORE_NOT_FOUND', `${req.type} ${req.name} is not on the store`);
          return { size };
        }
        const u = await b.usage(t);
        return { tenant: t, ...u, quota: this.#s.quota, graceSeconds: this.#s.graceSeconds };
      }
      default:
        throw new HoldfastError('HF_PROTO_UNSUPPORTED', 'unknown operation');
    }
  }

  async #put(id: number, st: PutStream, req: Extract<Request, { op: 'PUT' }>): Promise<void> {
    const b = this.#s.backend;
    const t = this.#tenant;
    // (a backend that stores such a file with one conditional write finds it there at commit)
    const existing = contentAddressed(req.type) && b.storesOnce?.(req.size) === true ? null : await b.stat(t, req.type, req.name);
    if (existing !== null) {
      let same = existing === req.size;
      if (same && !contentAddressed(req.type)) {
        const bytes = await b.read(t, req.type, req.name, 0, existing);
        same = createHash('sha256').update(bytes).digest('hex') === req.digest;
      }
      if (!same) throw new HoldfastError('HF_STORE_EXISTS', `the store holds a different ${req.type} ${req.name}`);
      this.#respond(id, { offset: req.size, window: 0, size: req.size, digest: req.digest }, true);
      return;
    }
    if (req.offset > req.size) throw new HoldfastError('HF_PROTO_MALFORMED', `PUT: offset ${req.offset} is past the size ${req.size}`);
    if (!contentAddressed(req.type) && req.size > MAX_SMALL_FILE) {
      throw new HoldfastError('HF_PROTO_MALFORMED', `PUT: a ${req.type} file of ${req.size} bytes is larger than any Holdfast writes`);
    }
    const upload = await b.openUpload(t, req.type, req.name, req.digest, req.size);
    if (this.#streams.get(id) !== st) {
      await upload.close();
      return;
    }
    if (upload.stored > req.size) {
      await upload.discard();
      throw new HoldfastError('HF_STORE_BAD_OFFSET', `the store's partial ${req.type} ${req.name.slice(0, 16)} was longer than the file; it was discarded, send it again`);
    }
    const start = Math.min(upload.stored, req.offset);
    if (this.#s.quota !== null) {
      // Charged for what will really arrive (from where the store starts), not for the offset the client claims.
      const u = await b.usage(t);
      const used = u.bytes + u.partialBytes + u.trashBytes - upload.stored;
      if (used + req.size > this.#s.quota) {
        await upload.close();
        throw new HoldfastError('HF_STORE_QUOTA_EXCEEDED',
          `tenant ${t} uses ${used} of its ${this.#s.quota} bytes on store ${this.#s.store}; ${req.type} ${req.name.slice(0, 16)} (${req.size} bytes) does not fit. Ask the store's operator for more quota, or forget and prune old snapshots.`);
      }
    }
    st.upload = upload;
    // The part stored by earlier connections is hashed by the backend; the rest as it arrives
    // (unless the backend checks the digest itself).
    if (start > 0) {
      const resumed = await upload.resumeAt(start);
      st.next = resumed.at;
      st.hasher = resumed.hasher;
    } else {
      st.next = 0;
    }
    if (upload.checksDigest) st.hasher = null;
    if (this.#streams.get(id) !== st) {
      await upload.close();
      return;
    }
    st.window = PUT_WINDOW;
    st.receiving = true;
    this.#respond(id, { offset: st.next, window: PUT_WINDOW }, false);
  }

  #data(f: Frame): void {
    const st = this.#streams.get(f.stream);
    if (!st) {
      if (f.stream > this.#lastStream) throw new HoldfastError('HF_PROTO_STREAM', `DATA on stream ${f.stream}, which was never opened`);
      return; // a stream already closed: the frame was in flight
    }
    if (st.kind !== 'put') throw new HoldfastError('HF_PROTO_STREAM', `DATA on stream ${f.stream}, which is not an upload`);
    if (!st.receiving || st.failed) {
      if (st.upload === null) throw new HoldfastError('HF_PROTO_FLOW', `DATA on stream ${f.stream} before the store accepted the PUT`);
      return;
    }
    const len = f.length;
    if (len > st.window) throw new HoldfastError('HF_PROTO_FLOW', `DATA of ${len} bytes on stream ${f.stream} exceeds the window of ${st.window}`);
    if (st.next + len > st.size) {
      st.failed = true;
      this.#error(f.stream, new HoldfastError('HF_PROTO_MALFORMED', `more bytes than the announced size ${st.size}`));
      return;
    }
    st.window -= len;
    const pos = st.next;
    st.next += len;
    if (len > 0) {
      this.#queued += len;
      if (this.#queued > PAUSE_AT && !this.#paused) {
        this.#paused = true;
        this.#socket.pause();
      }
      const parts = f.parts;
      const hasher = st.hasher;
      if (hasher !== null) {
        st.hashing = st.hashing.then(() => hasher.update(parts));
        st.hashing.catch(() => undefined); // awaited (and reported) in #finish
      }
      const hashed = st.hashing;
      // Writes of one upload go one after another, so the partial file is
      // always a prefix of the file (a killed front-end leaves no hole), and
      // window is given back only for bytes both written and hashed.
      const previous = st.lastWrite;
      const w: Promise<void> = previous.then(() => st.upload!.write(parts, pos, true)).then(() => hashed).then(
        () => {
          st.writes.delete(w);
          this.#written(len);
          if (this.#streams.get(f.stream) === st && st.receiving) {
            st.window += len;
            const inc = Buffer.allocUnsafe(4);
            inc.writeUInt32BE(len, 0);
            this.#send(encodeFrame(FrameType.WINDOW, 0, f.stream, inc));
          }
        },
        (err: unknown) => {
          st.writes.delete(w);
          this.#written(len);
          if (this.#streams.get(f.stream) === st && !st.failed) {
            st.failed = true;
            this.#error(f.stream, err);
          }
        },
      );
      st.lastWrite = w.catch(() => undefined);
      st.writes.add(w);
    }
    if (f.flags & FLAG_END) {
      st.receiving = false;
      void this.#finish(f.stream, st);
    }
  }

  #written(len: number): void {
    this.#queued -= len;
    if (this.#paused && this.#queued < RESUME_AT) {
      this.#paused = false;
      if (!this.#outPaused) this.#socket.resume();
    }
  }

  async #finish(id: number, st: PutStream): Promise<void> {
    await Promise.allSettled([...st.writes]);
    if (this.#streams.get(id) !== st || st.failed) return;
    try {
      await st.hashing;
      if (st.next !== st.size) {
        throw new HoldfastError('HF_STORE_BAD_OFFSET', `the upload ended at byte ${st.next} of ${st.size}`);
      }
      await st.upload!.commit(st.size, st.hasher?.digest().toString('hex'));
      await st.upload!.close();
      if (this.#streams.get(id) === st) this.#respond(id, { size: st.size }, true);
    } catch (err) {
      await st.upload!.close();
      if (this.#streams.get(id) === st) this.#error(id, err);
    }
  }

  async #get(id: number, st: GetStream, req: Extract<Request, { op: 'GET' }>): Promise<void> {
    const b = this.#s.backend;
    const size = await b.stat(this.#tenant, req.type, req.name);
    if (size === null) throw new HoldfastError('HF_STORE_NOT_FOUND', `${req.type} ${req.name} is not on the store`);
    const offset = req.offset ?? 0;
    const length = req.length ?? Math.max(0, size - offset);
    if (offset + length > size) throw new HoldfastError('HF_PROTO_MALFORMED', `GET: bytes ${offset}+${length} are past the end (${size})`);
    this.#respond(id, { size, offset, length }, false);
    this.#pool ??= new FramePool(this.#maxFrame, 4);
    const pool = this.#pool;
    this.#gets++;
    try {
      await this.#sendRange(id, st, req, offset, length, pool);
    } finally {
      // An idle connection holds no frame buffers.
      if (--this.#gets === 0) this.#pool = null;
    }
  }

  async #sendRange(id: number, st: GetStream, req: Extract<Request, { op: 'GET' }>, offset: number, length: number, pool: FramePool): Promise<void> {
    const b = this.#s.backend;
    let sent = 0;
    do {
      while (st.credit === 0 && !st.cancelled) await new Promise<void>((resolve) => { st.wake = resolve; });
      st.wake = null;
      if (st.cancelled || this.#closed) return;
      const n = Math.min(this.#maxFrame, st.credit, length - sent);
      const frame = await pool.acquire();
      try {
        if (n > 0) await b.read(this.#tenant, req.type, req.name, offset + sent, n, frame.subarray(HEADER_SIZE, HEADER_SIZE + n));
      } catch (err) {
        pool.release(frame);
        throw err;
      }
      if (st.cancelled || this.#streams.get(id) !== st || this.#closed || this.#socket.destroyed) {
        pool.release(frame);
        return;
      }
      sent += n;
      st.credit -= n;
      const last = sent === length;
      if (last) this.#streams.delete(id);
      frameHeader(FrameType.DATA, last ? FLAG_END : 0, id, n).copy(frame, 0);
      const ok = this.#socket.write(frame.subarray(0, HEADER_SIZE + n), () => pool.release(frame));
      if (!ok && !last) {
        await new Promise<void>((resolve) => {
          const done = () => { this.#socket.off('drain', done); this.#socket.off('close', done); resolve(); };
          this.#socket.on('drain', done);
          this.#socket.on('close', done);
        });
      }
    } while (sent < length);
  }
}
