import { HoldfastError, hasCode } from '../../errors/index.ts';
import { DEFAULT_RECONNECT, Reconnector } from '../reconnector.ts';
import { CHANGED_DURING_READ, type Listing, type Source, type SourceEntry, type SourceStat } from '../source.ts';
import { type SmbClientOptions, SmbClient, type SmbFileInfo } from './smb-client.ts';
import { SmbStatusError } from './smb-connection.ts';
import { Attr, IO_REPARSE_TAG_SYMLINK, filetimeToTimespec, statusIsSessionLoss } from './smb2-wire.ts';
import { bytesToUtf16, utf16ToBytes } from './smb-names.ts';

export interface SmbSourceOptions extends SmbClientOptions {
  /**
   * Read the share as of a previous version (Windows "Previous Versions",
   * Samba shadow_copy2): 'latest', or the newest version at or before a time.
   */
  snapshot?: 'latest' | Date | null;
  /** Reconnect attempts after a dropped connection (default 5; see ReconnectPolicy). */
  retries?: number;
  /** First wait before reconnecting, doubled each time (default 1 s). */
  backoffMs?: number;
  /** READ requests in flight per file (default 8). */
  readsInFlight?: number;
}

/** IO_REPARSE_TAG_MOUNT_POINT: an NTFS junction, recorded like a symlink. */
const TAG_MOUNT_POINT = 0xa0000003;

/**
 * A share on an SMB 2.1/3.x server (Windows, macOS file sharing, Samba,
 * NAS), read through Holdfast's own client (smb-client.ts). Paths are
 * '/'-separated from the share root; names are UTF-8 (WTF-8 for the rare
 * name with an unpaired UTF-16 surrogate, so every name survives).
 *
 * - SMB has no POSIX modes or owners: mode is 0o755 for directories and
 *   0o644 for files, without write bits when the READONLY attribute is set;
 *   uid and gid are 0. The DOS attributes and the creation time are kept
 *   (`attributes`, `btime`); mtime is LastWriteTime, ctime ChangeTime, and
 *   inode the server's file id.
 * - Symlinks and junctions are recorded with their target and never
 *   followed; every open uses FILE_OPEN_REPARSE_POINT.
 * - A dropped connection is re-established with backoff (retries,
 *   backoffMs; Reconnector) and the operation retried; a read resumes at the
 *   offset it reached. A response that fails its signature or decryption
 *   check ends the connection (nothing unauthenticated is used): it is
 *   treated as a transient wire fault, and every request that was in flight
 *   is retried on a new connection the same way; an operation that keeps
 *   meeting one fails with HF_SOURCE_PROTOCOL. When reconnecting gives up:
 *   HF_SOURCE_DISCONNECTED, for that call and every later one, at once.
 */
export class SmbSource implements Source {
  readonly kind = 'smb';
  readonly location: string;
  /** The @GMT token of the previous version read, or null for the live share. */
  readonly snapshotToken: string | null;
  #opts: SmbSourceOptions;
  #conn: Reconnector<SmbClient>;
  #timewarp: bigint | null;

  private constructor(opts: SmbSourceOptions, client: SmbClient, token: string | null) {
    this.#opts = opts;
    this.snapshotToken = token;
    this.#timewarp = token ? gmtTokenToFiletime(token) : null;
    const user = `${opts.domain ? `${opts.domain};` : ''}${opts.user}`;
    this.location = `smb://${user}@${opts.host}:${opts.port ?? 445}/${opts.share}`;
    this.#conn = new Reconnector(client, {
      location: this.location,
      policy: { attempts: opts.retries ?? DEFAULT_RECONNECT.attempts, firstWaitMs: opts.backoffMs ?? DEFAULT_RECONNECT.firstWaitMs },
      connect: () => SmbClient.connect(opts),
    });
  }

  /** Connects (errors surface here, coded) and picks the previous version asked for. */
  static async connect(opts: SmbSourceOptions): Promise<SmbSource> {
    const client = await SmbClient.connect(opts);
    try {
      let token: string | null = null;
      if (opts.snapshot) token = chooseSnapshot(await client.snapshots(), opts.snapshot, `smb://${opts.host}/${opts.share}`);
      return new SmbSource(opts, client, token);
    } catch (err) {
      await client.disconnect();
      throw err;
    }
  }

  /** Dialect and protection of the current connection, e.g. "SMB 3.1.1, encrypted (AES-128-GCM)". */
  get security(): string {
    return this.#conn.current.security;
  }

  async stat(path: Buffer): Promise<SourceStat> {
    return this.#retry(async (c) => {
      const f = await c.open(toSmbPath(path), { attributesOnly: true, timewarp: this.#timewarp });
      try {
        const fileId = await c.fileId(f.id);
        const info: SmbFileInfo = { ...f.info, fileId };
        let target: Buffer | null = null;
        if (info.attributes & Attr.REPARSE_POINT) {
          const t = await this.#linkTarget(c, f.id);
          if (t) {
            info.reparseTag = IO_REPARSE_TAG_SYMLINK;
            target = t;
          }
        }
        return statOf(info, target);
      } finally {
        await c.close(f.id);
      }
    });
  }

  async list(dir: Buffer): Promise<Listing> {
    const raw = await this.#retry(async (c) => {
      const d = await c.open(toSmbPath(dir), { directory: true, timewarp: this.#timewarp });
      try {
        return await c.list(d.id);
      } finally {
        await c.close(d.id);
      }
    });
    const entries: SourceEntry[] = [];
    const problems: Listing['problems'] = [];
    for (const e of raw) {
      const name = utf16ToBytes(e.name16);
      if (name.includes(0x2f) || name.includes(0)) {
        problems.push({ name, error: Object.assign(new Error('the server sent a name with "/" or NUL in it; skipped'), { code: 'EINVAL' }) });
        continue;
      }
      let target: Buffer | null = null;
      if (e.reparseTag === IO_REPARSE_TAG_SYMLINK || e.reparseTag === TAG_MOUNT_POINT) {
        try {
          target = await this.#retry(async (c) => {
            const f = await c.open(toSmbPath(joinBytes(dir, name)), { attributesOnly: true, timewarp: this.#timewarp });
            try {
              return await this.#linkTarget(c, f.id);
            } finally {
              await c.close(f.id);
            }
          });
        } catch (err) {
          if (hasCode(err, 'HF_SOURCE_DISCONNECTED')) throw err; // the server is gone, not this link
          problems.push({ name, error: err as Error });
          continue;
        }
      }
      entries.push({ name, ...statOf(e, target) });
    }
    entries.sort((a, b) => Buffer.compare(a.name, b.name));
    return { entries, problems };
  }

  /**
   * Reads a file with up to `readsInFlight` READs outstanding, yielding in
   * order. Refuses (ELOOP) a path that is now a symlink or junction. Only
   * END_OF_FILE, or a short READ that reaches the size the file had when it
   * was opened, ends it: a short READ before that is asked again for the
   * rest. READs are as large as the server's MaxReadSize and the credits it
   * grants allow.
   */
  async *read(path: Buffer, sizeHint: number): AsyncIterable<Buffer> {
    const smbPath = toSmbPath(path);
    const window = Math.max(1, this.#opts.readsInFlight ?? 8);
    let client = await this.#conn.live();
    let handle: Buffer | null = null;
    let first: SmbFileInfo | null = null;
    let offset = 0; // bytes yielded so far
    let losses = 0;
    const reopen = async () => {
      const f = await client.open(smbPath, { directory: false, timewarp: this.#timewarp });
      if (f.info.attributes & Attr.REPARSE_POINT) {
        await client.close(f.id);
        throw Object.assign(new Error(`'${path.toString()}' became a symlink or junction while the backup ran`), { code: 'ELOOP' });
      }
      if (first && (f.info.lastWriteTime !== first.lastWriteTime || f.info.endOfFile !== first.endOfFile)) {
        await client.close(f.id);
        throw Object.assign(new Error(`'${path.toString()}' changed while the connection was being re-established`), { code: 'EAGAIN' });
      }
      first ??= f.info;
      handle = f.id;
    };
    try {
      for (;;) {
        try {
          if (!handle) await reopen();
          const size = Number(first!.endOfFile);
          const pieceSize = client.readSize(window);
          const inFlight: { length: number; data: Promise<Buffer> }[] = [];
          let next = offset;
          // Reads up to one byte past the listed size run in parallel; a file
          // that grew is then read on, a window at a time, until its end.
          let limit = Math.max(sizeHint + 1, offset + 1);
          const fill = () => {
            while (inFlight.length < window && next < limit) {
              const data = client.read(handle!, next, pieceSize);
              data.catch(() => undefined); // a failure is seen where it is awaited, or dropped past the end
              inFlight.push({ length: pieceSize, data });
              next += pieceSize;
            }
          };
          fill();
          for (;;) {
            const r = inFlight.shift()!;
            const data = await r.data;
            losses = 0;
            if (data.length > 0) {
              offset += data.length;
              yield data;
            }
            if (data.length < r.length) {
              if (data.length > 0 && offset < size) {
                // Short, but not the end: ask again from here. What is in
                // flight beyond it lies further on; it is dropped.
                inFlight.length = 0;
                next = offset;
                limit = Math.max(limit, offset + 1);
                fill();
                continue;
              }
              // The end; reads still in flight beyond it are dropped. The
              // close reports the file as it is now: a change while it was
              // read makes the bytes suspect, and the caller reads it again.
              const id = handle!;
              handle = null;
              const after = await client.closeAndQuery(id);
              if (after.lastWriteTime !== first!.lastWriteTime || after.changeTime !== first!.changeTime ||
                  after.endOfFile !== first!.endOfFile) {
                throw Object.assign(new Error(`'${path.toString()}' changed while it was read`), { code: CHANGED_DURING_READ });
              }
              return;
            }
            if (next >= limit && inFlight.length === 0) limit = next + window * pieceSize;
            fill();
          }
        } catch (err) {
          if (!retriable(err, client)) throw err;
          if (++losses > this.#conn.policy.attempts) throw this.#conn.exhausted(err, isProtocolError);
          handle = null;
          client = await this.#conn.reconnect(client);
        }
      }
    } finally {
      if (handle && !client.closed) await client.close(handle).catch(() => undefined);
    }
  }

  async close(): Promise<void> {
    await this.#conn.close();
  }

  /** Runs fn on the current client; reconnects and retries while the connection drops (Reconnector.run). */
  #retry<T>(fn: (c: SmbClient) => Promise<T>): Promise<T> {
    return this.#conn.run(fn, retriable, isProtocolError);
  }

  async #linkTarget(c: SmbClient, id: Buffer): Promise<Buffer | null> {
    try {
      return Buffer.from(await c.reparseTarget(id), 'utf8');
    } catch (err) {
      if (err instanceof SmbStatusError) return null; // not a link (another kind of reparse point): read it as it is
      throw err;
    }
  }
}

function isProtocolError(err: unknown): boolean {
  return hasCode(err, 'HF_SOURCE_PROTOCOL');
}

/**
 * Worth a reconnect and another try: the connection dropped, the server
 * ended the session, or the connection was ended because a response failed
 * its integrity check (a transient wire fault: every request in flight on
 * it fails so). A malformed answer about one path on a connection that goes
 * on is not retried.
 */
function retriable(err: unknown, c: SmbClient): boolean {
  if (hasCode(err, 'HF_SOURCE_DISCONNECTED')) return true;
  if (isProtocolError(err) && c.closed) return true;
  return err instanceof SmbStatusError && statusIsSessionLoss(err.status);
}

function statOf(e: SmbFileInfo, target: Buffer | null): SourceStat {
  const isLink = target !== null;
  const isDir = !isLink && (e.attributes & Attr.DIRECTORY) !== 0;
  const ro = (e.attributes & Attr.READONLY) !== 0;
  const mode = isLink ? 0o777 : isDir ? (ro ? 0o555 : 0o755) : (ro ? 0o444 : 0o644);
  return {
    type: isLink ? 'symlink' : isDir ? 'dir' : 'file',
    mode,
    uid: 0,
    gid: 0,
    size: isDir || isLink ? 0 : Number(e.endOfFile),
    mtime: filetimeToTimespec(e.lastWriteTime),
    ctime: filetimeToTimespec(e.changeTime),
    btime: filetimeToTimespec(e.creationTime),
    attributes: e.attributes,
    inode: foldFileId(e.fileId),
    device: 0,
    links: 1,
    rdev: 0,
    target,
  };
}

/** A 64-bit file id folded into 53 bits (it is compared, never used as an address). */
function foldFileId(id: bigint): number {
  return Number(BigInt.asUintN(53, id ^ (id >> 53n)));
}

/** '/a/b' → 'a\b' (share-relative UTF-16 path for CREATE). */
function toSmbPath(path: Buffer): string {
  return bytesToUtf16(path).toString('utf16le').split('/').filter(Boolean).join('\\');
}

function joinBytes(dir: Buffer, name: Buffer): Buffer {
  return dir.length === 1 && dir[0] === 0x2f ? Buffer.concat([dir, name]) : Buffer.concat([dir, Buffer.from('/'), name]);
}

/** '@GMT-2026.11.20-10.00.00' → FILETIME. */
export function gmtTokenToFiletime(token: string): bigint {
  const m = /^@GMT-(\d{4})\.(\d{2})\.(\d{2})-(\d{2})\.(\d{2})\.(\d{2})$/.exec(token);
  if (!m) throw new HoldfastError('HF_INVALID_ARGUMENT', `'${token}' is not a @GMT-YYYY.MM.DD-HH.MM.SS token`);
  const ms = Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!);
  return BigInt(ms) * 10_000n + 116444736000000000n;
}

function tokenTime(token: string): number {
  return Number((gmtTokenToFiletime(token) - 116444736000000000n) / 10_000n);
}

/** The newest version ('latest') or the newest at or before a time; HF_SOURCE_SNAPSHOT_NOT_FOUND otherwise. */
export function chooseSnapshot(tokens: readonly string[], want: 'latest' | Date, where: string): string {
  const sorted = [...tokens].sort((a, b) => tokenTime(b) - tokenTime(a));
  const pick = want === 'latest' ? sorted[0] : sorted.find((t) => tokenTime(t) <= want.getTime());
  if (!pick) {
    if (sorted.length === 0) {
      throw new HoldfastError('HF_SOURCE_SNAPSHOT_NOT_FOUND',
        `${where}: the share has no previous versions (is Volume Shadow Copy, or Samba's shadow_copy2, set up for it?)`);
    }
    const have = `it has ${sorted.slice(0, 5).join(', ')}${sorted.length > 5 ? ', …' : ''}`;
    throw new HoldfastError('HF_SOURCE_SNAPSHOT_NOT_FOUND',
      `${where} has no previous version ${want === 'latest' ? '' : `at or before ${want.toISOString()} `}to read; ${have}`);
  }
  return pick;
}
