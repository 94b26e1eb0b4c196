import fs from 'node:fs';

import ssh2 from 'ssh2';

import { HoldfastError, hasCode } from '../../errors/index.ts';
import { displayName } from '../../snapshot/index.ts';
import { DEFAULT_RECONNECT, Reconnector } from '../reconnector.ts';
import {
  CHANGED_DURING_READ, type Listing, type ReadBuffers, type ReadManyResult, type Source, type SourceEntry, type SourceStat, joinPath,
  typeOfMode,
} from '../source.ts';
import { HostKeyPins } from './host-keys.ts';
import { ReadPipeline } from './read-pipeline.ts';
import { SftpClient, type SftpClientOptions } from './sftp-client.ts';
import { type SftpAttrs, type SftpName, SftpStatusError, Status } from './sftp-wire.ts';

/** How to reach and trust one SFTP server. */
export interface SftpOptions {
  host: string;
  /** Default 22. */
  port?: number;
  user: string;
  /** A private key file path, or the key itself (OpenSSH or PEM text). */
  identity: string | Buffer;
  /** For an encrypted private key. */
  passphrase?: string;
  /** A known_hosts file (OpenSSH format) that pins the server's host key. */
  knownHosts?: string;
  /** The pinned host key fingerprint, "SHA256:…" as `ssh-keygen -lf` prints it. */
  hostKey?: string;
  /** Time for TCP connect, SSH handshake and login (default 20 s). */
  readyTimeoutMs?: number;
  /** Reconnect attempts after a dropped connection (default 5; see ReconnectPolicy). */
  retries?: number;
  /** First wait before reconnecting, doubled each time (default 1 s). */
  backoffMs?: number;
  /** Bytes each read() asks for ahead of its consumer (default 8 MiB). */
  readAheadBytes?: number;
}

/** Piece size of read() when the caller lends no buffers. */
const PIECE = 1 << 20;
/** Piece for the READ at a file's listed end (it normally finds the end of file). */
const PROBE_PIECE = 64 << 10;
const READ_AHEAD = 8 << 20;
/** Symlinks of one directory whose targets are asked for at once. */
const READLINKS_IN_FLIGHT = 256;
/** Files of one readMany call read at once. */
const FILES_IN_FLIGHT = 64;
/** Keepalive probes: three unanswered ones (about 45 s) drop a dead connection. */
const KEEPALIVE_MS = 15_000;

const noop = () => {};

/**
 * A directory tree on an SSH server, read over SFTP v3 (OpenSSH's
 * sftp-server or internal-sftp, and others). Paths are absolute paths on the
 * server as raw bytes; names need not be UTF-8.
 *
 * - The host key MUST be pinned (hostKey or knownHosts): an unpinned key is
 *   HF_SOURCE_HOST_KEY_UNKNOWN, a different one HF_SOURCE_HOST_KEY_CHANGED.
 * - SFTP v3 carries whole seconds and no inode, device, link count or ctime:
 *   mtime is [seconds, 0], ctime equals mtime, inode and device are 0, links
 *   1. A file rewritten within the same second at the same size therefore
 *   looks unchanged to an incremental backup.
 * - Per-path failures carry errno codes (ENOENT, EACCES, ELOOP, EINVAL,
 *   EIO…) with the server's message; connection failures are HF_SOURCE_*.
 * - A dropped connection is re-established with backoff (retries, backoffMs;
 *   Reconnector) and the operation repeated; a read resumes at the offset it
 *   reached, so its consumer sees one unbroken byte stream. A file that
 *   changed across the reconnect fails with EAGAIN. A connection ended for
 *   a malformed packet (HF_SOURCE_PROTOCOL) is re-established the same way;
 *   the operation that keeps meeting one fails with it. When reconnecting
 *   gives up: HF_SOURCE_DISCONNECTED, for that call and every later one.
 */
export class SftpSource implements Source {
  readonly kind = 'sftp';
  readonly location: string;
  readonly #readAhead: number;
  readonly #conn: Reconnector<SftpClient>;

  private constructor(location: string, clientOptions: SftpClientOptions, opts: SftpOptions, client: SftpClient) {
    this.location = location;
    this.#readAhead = opts.readAheadBytes ?? READ_AHEAD;
    this.#conn = new Reconnector(client, {
      location,
      policy: { attempts: opts.retries ?? DEFAULT_RECONNECT.attempts, firstWaitMs: opts.backoffMs ?? DEFAULT_RECONNECT.firstWaitMs },
      connect: () => SftpClient.connect(clientOptions),
    });
  }

  /**
   * Connects and logs in; every failure is coded (HF_SOURCE_HOST_KEY_*,
   * HF_SOURCE_AUTH_FAILED, HF_SOURCE_UNREACHABLE, HF_INVALID_ARGUMENT for a
   * key or pin that cannot be used). The first connection is not retried.
   */
  static async connect(opts: SftpOptions): Promise<SftpSource> {
    const port = opts.port ?? 22;
    const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
    const location = `sftp://${opts.user}@${host}:${port}`;
    const pins = HostKeyPins.load({
      host: opts.host, port,
      ...(opts.hostKey !== undefined ? { hostKey: opts.hostKey } : {}),
      ...(opts.knownHosts !== undefined ? { knownHosts: opts.knownHosts } : {}),
    });
    const clientOptions: SftpClientOptions = {
      host: opts.host, port, user: opts.user,
      privateKey: loadPrivateKey(opts.identity, opts.passphrase, location),
      ...(opts.passphrase !== undefined ? { passphrase: opts.passphrase } : {}),
      pins,
      readyTimeoutMs: opts.readyTimeoutMs ?? 20_000,
      keepaliveMs: KEEPALIVE_MS,
    };
    const client = await SftpClient.connect(clientOptions);
    return new SftpSource(location, clientOptions, opts, client);
  }

  /** The negotiated cipher of the current connection. */
  get cipher(): string {
    return this.#conn.current.cipher;
  }

  /** LSTAT (a final symlink is not followed; its target comes from READLINK). */
  async stat(path: Buffer): Promise<SourceStat> {
    return this.#conn.run(async (c) => {
      const a = await this.#onPath(c.lstat(path), 'lstat', path);
      const mode = this.#modeOf(a, path);
      const target = typeOfMode(mode) === 'symlink' ? await this.#onPath(c.readlink(path), 'read the symlink', path) : null;
      return statOf(a, mode, target);
    }, retriable, isProtocolError);
  }

  /**
   * READDIR with the attributes it returns (its `ls -l` longname is not
   * used) and a READLINK per symlink. Entries come sorted by name bytes,
   * without "." and ".."; an entry that cannot be examined (a link that
   * vanished, a name with "/" in it) goes to `problems`. A dropped
   * connection repeats the whole listing.
   */
  async list(dir: Buffer): Promise<Listing> {
    return this.#conn.run(async (c) => {
      const handle = await this.#onPath(c.opendir(dir), 'open the directory', dir);
      const raw: SftpName[] = [];
      try {
        for (;;) {
          const batch = await this.#onPath(c.readdir(handle), 'read the directory', dir);
          if (!batch) break;
          for (const e of batch) raw.push(e);
        }
      } finally {
        c.close(handle).catch(noop);
      }
      const entries: SourceEntry[] = [];
      const problems: Listing['problems'] = [];
      const links: { e: SftpName; mode: number }[] = [];
      for (const e of raw) {
        const { name, attrs } = e;
        if (isDotOrDotDot(name)) continue;
        if (name.length === 0 || name.includes(0x2f) || name.includes(0)) {
          problems.push({ name, error: errnoError('EINVAL', `${this.location}: the server listed a name with "/" or NUL in '${displayName(dir)}'; skipped`) });
          continue;
        }
        if (attrs.mode === null) {
          problems.push({ name, error: errnoError('EIO', `${this.location}: the server sent no file mode for '${displayName(joinPath(dir, name))}'; skipped`) });
          continue;
        }
        if (typeOfMode(attrs.mode) === 'symlink') links.push({ e, mode: attrs.mode });
        else entries.push({ name, ...statOf(attrs, attrs.mode, null) });
      }
      // Symlink targets: READLINKs in flight together, a window at a time.
      for (let i = 0; i < links.length; i += READLINKS_IN_FLIGHT) {
        await Promise.all(links.slice(i, i + READLINKS_IN_FLIGHT).map(async ({ e, mode }) => {
          const path = joinPath(dir, e.name);
          try {
            entries.push({ name: e.name, ...statOf(e.attrs, mode, await this.#onPath(c.readlink(path), 'read the symlink', path)) });
          } catch (err) {
            if (retriable(err, c)) throw err;
            problems.push({ name: e.name, error: err as Error });
          }
        }));
      }
      entries.sort((a, b) => Buffer.compare(a.name, b.name));
      problems.sort((a, b) => Buffer.compare(a.name, b.name));
      return { entries, problems };
    }, retriable, isProtocolError);
  }

  /**
   * Reads a regular file with READs pipelined (readAheadBytes ahead of the
   * consumer, in requests of the server's maximum read length), yielding
   * pieces in order. The path is lstat'ed before it is opened and again
   * after, and the open handle fstat'ed: a symlink (or another file swapped
   * in) is refused with ELOOP, something that is no longer a regular file
   * with EINVAL. The file's size and mtime at the end are compared with the
   * start: a difference is CHANGED_DURING_READ after the last byte.
   */
  async *read(path: Buffer, sizeHint: number, buffers?: ReadBuffers): AsyncIterable<Buffer> {
    const take = buffers
      ? () => buffers.get()
      : (offset: number) => Buffer.allocUnsafe(
        offset < sizeHint ? Math.min(PIECE, sizeHint - offset + 1) : offset === sizeHint ? PROBE_PIECE : PIECE);
    const give = (buf: Buffer) => buffers?.put(buf);
    let done = 0;
    let first: SftpAttrs | null = null;
    let losses = 0;
    for (;;) {
      const c = await this.#conn.live();
      let handle: Buffer | null = null;
      let pipe: ReadPipeline | null = null;
      try {
        handle = await this.#openFile(c, path);
        // One round trip: FSTAT and LSTAT, the READs, and (when they cover
        // the whole file) the FSTAT that tells whether it changed meanwhile.
        const checked = this.#checkOpened(c, path, handle);
        pipe = new ReadPipeline(c, handle, { start: done, expected: sizeHint, readLen: c.maxRead, readAhead: this.#readAhead, take, give });
        let end: { stat: Promise<SftpAttrs>; after: number } | null = null;
        if (pipe.planned) {
          end = { stat: this.#onPath(c.fstat(handle), 'stat', path), after: pipe.issued };
          end.stat.catch(noop); // seen where it is awaited, or dropped with this attempt
        }
        const now = await checked;
        if (first === null) {
          first = now;
        } else if (!sameFile(first, now)) {
          throw errnoError('EAGAIN', `${this.location}: '${displayName(path)}' changed while the connection was re-established; it is read again at the next backup`);
        }
        for (;;) {
          const piece = await this.#onPath(pipe.next(), 'read', path);
          if (!piece) break;
          losses = 0;
          done += piece.length;
          yield piece;
        }
        // A READ sent after the early FSTAT (a short read asked again, a
        // file that grew) makes it stale.
        const stat = end && end.after === pipe.issued ? end.stat : this.#onPath(c.fstat(handle), 'stat', path);
        const h = handle;
        handle = null;
        c.close(h).catch(noop); // answered in order; nothing waits for it
        const after = await stat;
        if (after.size !== first.size || after.mtime !== first.mtime || after.size !== done) {
          throw errnoError(CHANGED_DURING_READ, `${this.location}: '${displayName(path)}' changed while it was read`);
        }
        return;
      } catch (err) {
        if (!retriable(err, c)) throw err;
        if (++losses > this.#conn.policy.attempts) throw this.#conn.exhausted(err, isProtocolError);
        await this.#conn.reconnect(c);
      } finally {
        pipe?.stop();
        if (handle && !c.closed) c.close(handle).catch(noop);
      }
    }
  }

  /**
   * Reads many small files at once: their round trips overlap, so a batch
   * costs about what one file does. Each file is read into room of its
   * listed size, then the files read are moved together, back to back, as
   * Source.readMany lays them out. Each file is opened and checked as in
   * read(). A file that grew past its listed size fails with EFBIG, and so
   * does one whose size or mtime changed while it was read: the caller reads
   * it again with read(), which reports the change. A dropped connection
   * repeats the whole batch.
   */
  async readMany(paths: readonly Buffer[], sizes: readonly number[], into: Buffer): Promise<ReadManyResult[]> {
    const slots: Buffer[] = [];
    let at = 0;
    for (const size of sizes) {
      slots.push(into.subarray(at, at + size));
      at += size;
    }
    const results = await this.#conn.run(async (c) => {
      const results: PromiseSettledResult<Buffer>[] = [];
      for (let i = 0; i < paths.length; i += FILES_IN_FLIGHT) {
        const window = paths.slice(i, i + FILES_IN_FLIGHT).map((p, k) => this.#readWhole(c, p, slots[i + k]!));
        results.push(...await Promise.allSettled(window));
      }
      const lost = results.find((r) => r.status === 'rejected' && retriable(r.reason, c));
      if (lost) throw (lost as PromiseRejectedResult).reason;
      return results;
    }, retriable, isProtocolError);
    // Back to back by the lengths read. Each file lies at or after the place
    // it moves to, and files are moved in order: copy() is a memmove, and no
    // file is overwritten before it has moved.
    let end = 0;
    return results.map((r) => {
      if (r.status === 'rejected') return { error: r.reason as Error & { code?: string } };
      const data = r.value;
      if (data.byteOffset !== into.byteOffset + end) data.copy(into, end);
      const view = into.subarray(end, end + data.length);
      end += data.length;
      return { data: view };
    });
  }

  /** Ends the connection. Idempotent; operations after it fail with HF_SOURCE_DISCONNECTED. */
  async close(): Promise<void> {
    await this.#conn.close();
  }

  /** One file of readMany: all of it into `slot` (its listed size), or an error. */
  async #readWhole(c: SftpClient, path: Buffer, slot: Buffer): Promise<Buffer> {
    const size = slot.length;
    const handle = await this.#openFile(c, path);
    let pipe: ReadPipeline | null = null;
    try {
      const checked = this.#checkOpened(c, path, handle);
      pipe = new ReadPipeline(c, handle, {
        start: 0, expected: size, readLen: c.maxRead, readAhead: size + 1, followGrowth: false,
        take: (offset) => (offset < size ? slot.subarray(offset) : Buffer.allocUnsafe(1)),
        give: noop,
      });
      const end = this.#onPath(c.fstat(handle), 'stat', path);
      end.catch(noop);
      const issued = pipe.issued;
      const first = await checked;
      let n = 0;
      for (;;) {
        const piece = await this.#onPath(pipe.next(), 'read', path);
        if (pipe.grew) throw errnoError('EFBIG', `${this.location}: '${displayName(path)}' grew past its listed size of ${size} bytes`);
        if (!piece) break;
        n += piece.length;
      }
      const after = await (issued === pipe.issued ? end : this.#onPath(c.fstat(handle), 'stat', path));
      if (after.size !== first.size || after.mtime !== first.mtime || after.size !== n) {
        throw errnoError('EFBIG', `${this.location}: '${displayName(path)}' changed while it was read with others; read it on its own`);
      }
      return slot.subarray(0, n);
    } finally {
      pipe?.stop();
      c.close(handle).catch(noop);
    }
  }

  /** lstat, then open: only a regular file is opened (opening a FIFO would block the server). */
  async #openFile(c: SftpClient, path: Buffer): Promise<Buffer> {
    const a = await this.#onPath(c.lstat(path), 'lstat', path);
    const type = typeOfMode(this.#modeOf(a, path));
    if (type === 'symlink') throw errnoError('ELOOP', `${this.location}: '${displayName(path)}' is now a symlink; it is not followed`);
    if (type !== 'file') throw errnoError('EINVAL', `${this.location}: '${displayName(path)}' is no longer a regular file (now: ${type})`);
    return this.#onPath(c.open(path), 'open', path);
  }

  /** fstat of the open handle against lstat of the path: the file opened is the one at the path. */
  async #checkOpened(c: SftpClient, path: Buffer, handle: Buffer): Promise<SftpAttrs> {
    const [f, l] = await Promise.all([this.#onPath(c.fstat(handle), 'stat', path), this.#onPath(c.lstat(path), 'lstat', path)]);
    const type = typeOfMode(this.#modeOf(l, path));
    if (type === 'symlink') throw errnoError('ELOOP', `${this.location}: '${displayName(path)}' became a symlink while it was opened; it is not followed`);
    if (typeOfMode(this.#modeOf(f, path)) !== 'file') throw errnoError('EINVAL', `${this.location}: '${displayName(path)}' is no longer a regular file`);
    if (f.mode !== l.mode || f.uid !== l.uid || f.gid !== l.gid) {
      throw errnoError('ELOOP', `${this.location}: '${displayName(path)}' was replaced while it was opened (a symlink swapped in?); it is not read`);
    }
    return f;
  }

  #modeOf(a: SftpAttrs, path: Buffer): number {
    if (a.mode === null) throw errnoError('EIO', `${this.location}: the server sent no file mode for '${displayName(path)}'`);
    return a.mode;
  }

  /** Maps an SFTP status to an errno-coded error naming the path; other errors pass. */
  #onPath<T>(p: Promise<T>, op: string, path: Buffer): Promise<T> {
    return p.catch((err: unknown) => {
      if (!(err instanceof SftpStatusError) || isConnectionLoss(err)) throw err;
      const code = STATUS_ERRNO[err.status] ?? 'EIO';
      throw errnoError(code, `${this.location}: cannot ${op} '${displayName(path)}': ${err.serverMessage || err.message}`, err);
    });
  }
}

/** SFTP status → the errno code the backup pipeline understands. */
const STATUS_ERRNO: Record<number, string> = {
  [Status.NO_SUCH_FILE]: 'ENOENT',
  [Status.PERMISSION_DENIED]: 'EACCES',
  [Status.OP_UNSUPPORTED]: 'ENOTSUP',
};

function errnoError(code: string, message: string, cause?: unknown): Error & { code: string } {
  return Object.assign(new Error(message, cause === undefined ? undefined : { cause }), { code });
}

function isConnectionLoss(err: unknown): boolean {
  if (hasCode(err, 'HF_SOURCE_DISCONNECTED')) return true;
  return err instanceof SftpStatusError && (err.status === Status.NO_CONNECTION || err.status === Status.CONNECTION_LOST);
}

function isProtocolError(err: unknown): boolean {
  return hasCode(err, 'HF_SOURCE_PROTOCOL');
}

/**
 * Worth a reconnect and another try: the connection dropped, or was ended
 * by the client for a malformed packet (not a malformed reply about one path
 * on a connection that goes on).
 */
function retriable(err: unknown, c: SftpClient): boolean {
  return isConnectionLoss(err) || (isProtocolError(err) && c.closed);
}

function isDotOrDotDot(name: Buffer): boolean {
  return (name.length === 1 && name[0] === 0x2e) || (name.length === 2 && name[0] === 0x2e && name[1] === 0x2e);
}

function statOf(a: SftpAttrs, mode: number, target: Buffer | null): SourceStat {
  const mtime = [a.mtime ?? 0, 0] as const;
  return {
    type: typeOfMode(mode),
    mode: mode & 0o7777,
    uid: a.uid ?? 0,
    gid: a.gid ?? 0,
    size: a.size ?? 0,
    mtime,
    // SFTP v3 has no ctime: mtime stands in for it, so a change of the
    // contents still shows; a chmod or chown alone does not change it.
    ctime: mtime,
    inode: 0,
    device: 0,
    links: 1,
    rdev: 0,
    target,
  };
}

/** The same file, as far as SFTP v3 can tell, across a reconnect. */
function sameFile(a: SftpAttrs, b: SftpAttrs): boolean {
  return a.size === b.size && a.mtime === b.mtime && a.mode === b.mode && a.uid === b.uid && a.gid === b.gid;
}

/** Reads and checks the private key once, at the boundary. */
function loadPrivateKey(identity: string | Buffer, passphrase: string | undefined, location: string): Buffer {
  let data: Buffer;
  let what = 'the private key';
  if (Buffer.isBuffer(identity)) {
    data = identity;
  } else if (/-----BEGIN [A-Z ]*PRIVATE KEY-----|^PuTTY-User-Key-File-/.test(identity)) {
    data = Buffer.from(identity);
  } else {
    what = `the key file ${identity}`;
    try {
      data = fs.readFileSync(identity);
    } catch (err) {
      throw new HoldfastError('HF_INVALID_ARGUMENT', `${location}: cannot read ${what}: ${(err as Error).message}`, { cause: err });
    }
  }
  const parsed = ssh2.utils.parseKey(data, passphrase);
  const key = Array.isArray(parsed) ? parsed[0] : parsed;
  if (!key || key instanceof Error) {
    const why = key instanceof Error ? key.message : 'no key in it';
    throw new HoldfastError('HF_INVALID_ARGUMENT',
      `${location}: ${what} cannot be used: ${why}${/passphrase|encrypt|decrypt/i.test(why) ? ' (is the passphrase right?)' : ''}`,
      key instanceof Error ? { cause: key } : undefined);
  }
  if (key.getPrivatePEM() === null || key.getPrivatePEM() === '') {
    throw new HoldfastError('HF_INVALID_ARGUMENT', `${location}: ${what} holds a public key; give the private key`);
  }
  return data;
}
