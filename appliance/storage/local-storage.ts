import { randomBytes } from 'node:crypto';
import fsp, { type FileHandle } from 'node:fs/promises';
import path from 'node:path';

import { HoldfastError, errorCode, ioError } from '../errors/index.ts';
import { type FileInfo, type FileType, type FileWriter, type SaveOptions, type Storage, validName } from './storage.ts';

const DIRS: Record<FileType, string> = {
  config: '.',
  key: 'keys',
  pack: 'data',
  index: 'index',
  snapshot: 'snapshots',
  lock: 'locks',
};

/** Open read handles kept for pack reads during restore and check. */
const MAX_OPEN_HANDLES = 64;

/**
 * Storage in a local directory (or NFS mount):
 *   config, keys/<name>, data/<2 hex>/<name>, index/<name>, snapshots/<name>,
 *   locks/<name>, tmp/ (files being written).
 * Writes go to tmp/, are fsynced, renamed into place, and the directory is
 * fsynced (docs/DESIGN.md, "Write order").
 */
export class LocalStorage implements Storage {
  readonly location: string;
  readonly #handles = new Map<string, CachedHandle>();
  readonly #madeDirs = new Set<string>();

  constructor(location: string) {
    this.location = path.resolve(location);
  }

  /** Creates the directory layout; the location must be missing or empty. */
  async initialize(): Promise<void> {
    try {
      await fsp.mkdir(this.location, { recursive: true });
      const existing = await fsp.readdir(this.location);
      if (existing.length > 0) {
        throw new HoldfastError('HF_REPO_EXISTS',
          `${this.location} is not empty; choose a new or empty directory for the repository`);
      }
      for (const d of ['keys', 'data', 'index', 'snapshots', 'locks', 'tmp']) {
        await fsp.mkdir(path.join(this.location, d));
      }
      await syncDir(this.location);
    } catch (err) {
      throw ioError(`cannot create repository at ${this.location}`, err);
    }
  }

  /** Throws HF_REPO_NOT_FOUND unless the layout is there. */
  async assertExists(): Promise<void> {
    try {
      await fsp.stat(path.join(this.location, 'config'));
    } catch (err) {
      if (errorCode(err) === 'ENOENT' || errorCode(err) === 'ENOTDIR') {
        throw new HoldfastError('HF_REPO_NOT_FOUND',
          `no Holdfast repository at ${this.location} (no config file); check --repo, or create one with \`holdfast init\``,
          { cause: err });
      }
      throw ioError(`cannot open repository at ${this.location}`, err);
    }
  }

  #path(type: FileType, name: string): string {
    return filePath(this.location, type, name);
  }

  async save(type: FileType, name: string, parts: readonly Uint8Array[], options: SaveOptions = {}): Promise<void> {
    this.#path(type, name);
    const w = await this.#open(type);
    try {
      await w.write(parts);
      await w.commit(name, options.exclusive ?? false);
    } catch (err) {
      await w.abort();
      throw err;
    }
  }

  async create(type: FileType): Promise<FileWriter> {
    const w = await this.#open(type);
    return {
      write: (parts) => w.write(parts),
      commit: (name) => w.commit(name, false),
      abort: () => w.abort(),
    };
  }

  /**
   * A temp file in tmp/: written, fsynced, then renamed (or linked, for an
   * exclusive create) into place, and the directory fsynced.
   */
  async #open(type: FileType): Promise<{ write(parts: readonly Uint8Array[]): Promise<void>; commit(name: string, exclusive: boolean): Promise<void>; abort(): Promise<void> }> {
    const tmp = path.join(this.location, 'tmp', `${type}-${randomBytes(8).toString('hex')}`);
    let fh: FileHandle | undefined;
    try {
      fh = await fsp.open(tmp, 'wx', 0o600);
    } catch (err) {
      throw ioError(`cannot create a ${type} file in ${this.location}`, err);
    }
    let done = false;
    const abort = async () => {
      if (done) return;
      done = true;
      await fh?.close().catch(() => undefined);
      await fsp.unlink(tmp).catch(() => undefined);
    };
    return {
      write: async (parts) => {
        try {
          await writeAll(fh!, parts);
        } catch (err) {
          await abort();
          throw ioError(`cannot write a ${type} file in ${this.location}`, err);
        }
      },
      commit: async (name, exclusive) => {
        const final = this.#path(type, name);
        const dir = path.dirname(final);
        try {
          await fh!.sync();
          await fh!.close();
          fh = undefined;
          if (!this.#madeDirs.has(dir)) {
            await fsp.mkdir(dir, { recursive: true });
            this.#madeDirs.add(dir);
          }
          if (exclusive) {
            // link() fails if the name exists: an atomic create of a complete file.
            try {
              await fsp.link(tmp, final);
            } catch (err) {
              if (errorCode(err) === 'EEXIST') {
                throw new HoldfastError('HF_STORAGE_EXISTS', `${type} ${name} already exists`, { cause: err });
              }
              throw err;
            }
            await fsp.unlink(tmp);
          } else {
            await fsp.rename(tmp, final);
          }
          done = true;
          await syncDir(dir);
        } catch (err) {
          await abort();
          throw ioError(`cannot write ${type} ${name} in ${this.location}`, err);
        }
      },
      abort,
    };
  }

  async load(type: FileType, name: string, offset?: number, length?: number, into?: Buffer): Promise<Buffer> {
    const p = this.#path(type, name);
    try {
      if (offset === undefined) return await fsp.readFile(p);
      const lease = this.#lease(p);
      try {
        const fh = await lease.fh;
        const len = length ?? (await fh.stat()).size - offset;
        if (into && into.length !== len) throw new HoldfastError('HF_INVALID_ARGUMENT', `destination holds ${into.length} bytes, not ${len}`);
        const buf = into ?? Buffer.allocUnsafe(len);
        let done = 0;
        while (done < len) {
          const { bytesRead } = await fh.read(buf, done, len - done, offset + done);
          if (bytesRead === 0) {
            throw new HoldfastError('HF_IO',
              `${type} ${name}: wanted ${len} bytes at offset ${offset}, the file ends after ${offset + done}`);
          }
          done += bytesRead;
        }
        return buf;
      } finally {
        this.#unlease(lease);
      }
    } catch (err) {
      throw this.#readError(type, name, err);
    }
  }

  /** A cached read handle, counted while in use; evicted handles close when idle. */
  #lease(p: string): CachedHandle {
    let h = this.#handles.get(p);
    if (h) {
      this.#handles.delete(p); // move to the LRU tail
    } else {
      const created: CachedHandle = { path: p, fh: fsp.open(p, 'r'), users: 0, evicted: false };
      // a handle that failed to open is not kept
      created.fh.catch(() => { if (this.#handles.get(p) === created) this.#handles.delete(p); });
      h = created;
    }
    this.#handles.set(p, h);
    h.users++;
    while (this.#handles.size > MAX_OPEN_HANDLES) {
      const oldest = this.#handles.values().next().value as CachedHandle;
      this.#evict(oldest);
    }
    return h;
  }

  #unlease(h: CachedHandle): void {
    h.users--;
    if (h.evicted && h.users === 0) h.fh.then((fh) => fh.close()).catch(() => undefined);
  }

  #evict(h: CachedHandle): void {
    if (this.#handles.get(h.path) === h) this.#handles.delete(h.path);
    h.evicted = true;
    if (h.users === 0) h.fh.then((fh) => fh.close()).catch(() => undefined);
  }

  #readError(type: FileType, name: string, err: unknown): HoldfastError {
    if (errorCode(err) === 'ENOENT') {
      return new HoldfastError('HF_STORAGE_NOT_FOUND', `${type} ${name} is missing from ${this.location}`, { cause: err });
    }
    return ioError(`cannot read ${type} ${name} in ${this.location}`, err);
  }

  async stat(type: FileType, name: string): Promise<FileInfo> {
    try {
      const st = await fsp.stat(this.#path(type, name));
      return { name, size: st.size };
    } catch (err) {
      throw this.#readError(type, name, err);
    }
  }

  async list(type: FileType): Promise<FileInfo[]> {
    try {
      if (type === 'config') {
        const st = await fsp.stat(path.join(this.location, 'config')).catch(() => null);
        return st ? [{ name: 'config', size: st.size }] : [];
      }
      const base = path.join(this.location, DIRS[type]);
      const dirs = type === 'pack'
        ? (await fsp.readdir(base)).filter((d) => /^[0-9a-f]{2}$/.test(d)).map((d) => path.join(base, d))
        : [base];
      const out: FileInfo[] = [];
      for (const d of dirs) {
        const names = await fsp.readdir(d).catch((err: unknown) => {
          if (errorCode(err) === 'ENOENT') return [] as string[];
          throw err;
        });
        const infos = await Promise.all(names.filter((n) => validName(type, n)).map(async (n) => {
          const st = await fsp.stat(path.join(d, n)).catch(() => null);
          return st ? { name: n, size: st.size } : null;
        }));
        for (const i of infos) if (i) out.push(i);
      }
      return out;
    } catch (err) {
      throw ioError(`cannot list ${type} files in ${this.location}`, err);
    }
  }

  async remove(type: FileType, name: string): Promise<void> {
    const p = this.#path(type, name);
    const cached = this.#handles.get(p);
    if (cached) this.#evict(cached);
    try {
      await fsp.unlink(p);
      await syncDir(path.dirname(p));
    } catch (err) {
      if (errorCode(err) === 'ENOENT') return;
      throw ioError(`cannot remove ${type} ${name} in ${this.location}`, err);
    }
  }

  /** Files left in tmp/ by an interrupted writer (not part of the repository). */
  async listTemporary(): Promise<FileInfo[]> {
    const dir = path.join(this.location, 'tmp');
    const names = await fsp.readdir(dir).catch(() => [] as string[]);
    const out: FileInfo[] = [];
    for (const n of names) {
      const st = await fsp.stat(path.join(dir, n)).catch(() => null);
      if (st) out.push({ name: n, size: st.size });
    }
    return out;
  }

  /** Removes leftovers in tmp/ (only while holding an exclusive lock). */
  async clearTemporary(): Promise<number> {
    const files = await this.listTemporary();
    for (const f of files) await fsp.unlink(path.join(this.location, 'tmp', f.name)).catch(() => undefined);
    return files.length;
  }

  async close(): Promise<void> {
    for (const h of [...this.#handles.values()]) this.#evict(h);
  }
}

interface CachedHandle {
  path: string;
  fh: Promise<FileHandle>;
  users: number;
  evicted: boolean;
}

async function writeAll(fh: FileHandle, parts: readonly Uint8Array[]): Promise<void> {
  // writev takes at most IOV_MAX (1024) buffers per call and may write short.
  let pending = parts.filter((p) => p.length > 0);
  while (pending.length > 0) {
    const batch = pending.slice(0, 1024);
    const { bytesWritten } = await fh.writev(batch);
    let left = bytesWritten;
    let i = 0;
    while (i < batch.length && left >= batch[i]!.length) {
      left -= batch[i]!.length;
      i++;
    }
    const rest = pending.slice(i);
    if (left > 0 && rest.length > 0) rest[0] = rest[0]!.subarray(left);
    pending = rest;
  }
}

/** Where a file lives in the directory layout under location (names are validated). */
export function filePath(location: string, type: FileType, name: string): string {
  if (!validName(type, name)) {
    throw new HoldfastError('HF_INVALID_ARGUMENT', `invalid ${type} file name ${JSON.stringify(name)}`);
  }
  if (type === 'pack') return path.join(location, 'data', name.slice(0, 2), name);
  return path.join(location, DIRS[type], name);
}

/** fsyncs a directory, so that a rename or unlink in it is durable. */
export async function syncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
