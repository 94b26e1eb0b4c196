import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp, { type FileHandle } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { Hasher } from '../../native/index.ts';
import { HoldfastError, errorCode, ioError } from '../errors/index.ts';
import { type ReplicatedType, contentAddressed } from '../protocol/index.ts';
import { LocalStorage, filePath, syncDir, validName } from '../storage/index.ts';
import type { StoreBackend, StoredFile, TenantUsage, TrashEntry, Upload } from './store-backend.ts';

export const TENANT_NAME = /^[a-z0-9][a-z0-9-]{0,62}$/;
/** A tombstone's name: <ms since epoch>-<8 hex>-<type>-<name> (both backends). */
export const TRASH_ENTRY = /^(\d{13})-([0-9a-f]{8})-(config|key|pack|index|snapshot)-(.+)$/;
const HASH_PIECE = 4 << 20;
const HOST = os.hostname().replace(/[^A-Za-z0-9-]/g, '_').slice(0, 64) || 'host';
/** An upload claimed by a front-end on another host and not written for this long is taken over. */
const ABANDONED_AFTER_MS = 180_000;
/** How long a usage figure is reused before the tenant's directory is walked again. */
const USAGE_TTL_MS = 10_000;

export function assertTenant(tenant: string): void {
  if (!TENANT_NAME.test(tenant)) {
    throw new HoldfastError('HF_INVALID_ARGUMENT', `invalid tenant name ${JSON.stringify(tenant)} (lowercase letters, digits and dashes)`);
  }
}

/**
 * A store's files in a directory:
 *
 *   <dir>/tenants/<tenant>/            a repository's layout (config, keys/, data/xx/, index/, snapshots/)
 *   <dir>/tenants/<tenant>/partial/    uploads in progress: <type>-<name>-<digest>
 *   <dir>/tenants/<tenant>/trash/      deleted files: <ms since epoch>-<random>-<type>-<name>
 *
 * Several store processes may serve one directory: every state change is a
 * rename, partial files are written at absolute offsets, and nothing is
 * cached except usage figures (for up to 10 s, so a quota can be overshot by
 * what other front-ends accepted in that time).
 */
export class FsStoreBackend implements StoreBackend {
  readonly location: string;
  readonly #tenants = new Map<string, LocalStorage>();
  readonly #usage = new Map<string, { at: number; usage: TenantUsage }>();

  constructor(location: string) {
    this.location = path.resolve(location);
  }

  /** Creates the store directory when missing. */
  async initialize(): Promise<void> {
    try {
      await fsp.mkdir(path.join(this.location, 'tenants'), { recursive: true, mode: 0o700 });
    } catch (err) {
      throw ioError(`cannot create the store directory ${this.location}`, err);
    }
  }

  readonly #durableDirs = new Set<string>();

  /** mkdir -p, fsyncing each parent that gained an entry, so a committed file's path survives a crash. */
  async #mkdirDurable(dir: string): Promise<void> {
    if (this.#durableDirs.has(dir)) return;
    const missing: string[] = [];
    for (let d = dir; d.startsWith(this.location) && d !== this.location; d = path.dirname(d)) {
      if (await fsp.stat(d).then(() => true, () => false)) break;
      missing.push(d);
    }
    await fsp.mkdir(dir, { recursive: true });
    for (const d of missing) await syncDir(path.dirname(d));
    this.#durableDirs.add(dir);
  }

  #tenantDir(tenant: string): string {
    assertTenant(tenant);
    return path.join(this.location, 'tenants', tenant);
  }

  #storage(tenant: string): LocalStorage {
    let s = this.#tenants.get(tenant);
    if (!s) {
      s = new LocalStorage(this.#tenantDir(tenant));
      this.#tenants.set(tenant, s);
    }
    return s;
  }

  #final(tenant: string, type: ReplicatedType, name: string): string {
    return filePath(this.#tenantDir(tenant), type, name);
  }

  #partialPath(tenant: string, type: ReplicatedType, name: string, digest: string): string {
    if (!validName(type, name) || !/^[0-9a-f]{64}$/.test(digest)) {
      throw new HoldfastError('HF_INVALID_ARGUMENT', `invalid ${type} name or digest`);
    }
    return path.join(this.#tenantDir(tenant), 'partial', `${type}-${name}-${digest}`);
  }

  async stat(tenant: string, type: ReplicatedType, name: string): Promise<number | null> {
    try {
      return (await fsp.stat(this.#final(tenant, type, name))).size;
    } catch (err) {
      if (errorCode(err) === 'ENOENT') return null;
      throw ioError(`cannot stat ${type} ${name} of tenant ${tenant}`, err);
    }
  }

  async partial(tenant: string, type: ReplicatedType, name: string, digest: string): Promise<number | null> {
    const parked = this.#partialPath(tenant, type, name, digest);
    try {
      return (await fsp.stat(parked)).size;
    } catch (err) {
      if (errorCode(err) !== 'ENOENT') throw ioError(`cannot stat the upload of ${type} ${name} of tenant ${tenant}`, err);
    }
    // An upload in progress (or left by a front-end that died): its length is where a PUT resumes.
    let best: number | null = null;
    for (const a of await this.#active(parked)) best = Math.max(best ?? 0, a.size);
    return best;
  }

  /** Claimed (active) partial files of one upload: `<parked>.active.<host>.<pid>.<random>`. */
  async #active(parked: string): Promise<{ file: string; host: string; pid: number; size: number; mtimeMs: number }[]> {
    const dir = path.dirname(parked);
    const prefix = `${path.basename(parked)}.active.`;
    const names = (await fsp.readdir(dir).catch(() => [] as string[])).filter((n) => n.startsWith(prefix));
    const out = [];
    for (const n of names) {
      const m = /^(.+)\.(\d+)\.[0-9a-f]{8}$/.exec(n.slice(prefix.length));
      const st = await fsp.stat(path.join(dir, n)).catch(() => null);
      if (m && st) out.push({ file: path.join(dir, n), host: m[1]!, pid: Number(m[2]), size: st.size, mtimeMs: st.mtimeMs });
    }
    return out;
  }

  /** Whether an active partial file's owner is gone: a dead process on this host, or silent for long elsewhere. */
  #abandoned(a: { host: string; pid: number; mtimeMs: number }): boolean {
    if (a.host === HOST) {
      if (a.pid === process.pid) return false;
      try {
        process.kill(a.pid, 0);
        return false;
      } catch (err) {
        return errorCode(err) === 'ESRCH';
      }
    }
    return Date.now() - a.mtimeMs > ABANDONED_AFTER_MS;
  }

  async openUpload(tenant: string, type: ReplicatedType, name: string, digest: string): Promise<Upload> {
    const partial = this.#partialPath(tenant, type, name, digest);
    const final = this.#final(tenant, type, name);
    const what = `${type} ${name.slice(0, 16)} of tenant ${tenant}`;
    // The upload's file is claimed by renaming it to a name only this upload
    // uses: no two uploads ever write one file, and the file committed is one
    // no other upload has open (a second PUT of the same file waits: HF_STORE_BUSY).
    const mine = `${partial}.active.${HOST}.${process.pid}.${randomBytes(4).toString('hex')}`;
    let fh: FileHandle;
    try {
      await fsp.mkdir(path.dirname(partial), { recursive: true });
      let claimed = await fsp.rename(partial, mine).then(() => true, (err: unknown) => {
        if (errorCode(err) === 'ENOENT') return false;
        throw err;
      });
      if (!claimed) {
        const active = await this.#active(partial);
        for (const a of active.filter((x) => this.#abandoned(x)).sort((x, y) => y.size - x.size)) {
          if (await fsp.rename(a.file, mine).then(() => true, () => false)) {
            claimed = true;
            break;
          }
        }
        if (!claimed && active.some((x) => !this.#abandoned(x))) {
          throw new HoldfastError('HF_STORE_BUSY', `${what} is being uploaded by another connection; try again when it ends`);
        }
      }
      fh = await fsp.open(mine, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
    } catch (err) {
      throw ioError(`cannot open the upload of ${what}`, err);
    }
    const stored = (await fh.stat()).size;
    /** Where the bytes written so far end: a write may repeat bytes, never leave a hole. */
    let end = stored;
    let closed = false;
    let committed = false;
    const close = async () => {
      if (closed) return;
      closed = true;
      await fh.close().catch(() => undefined);
      if (committed) return;
      // Park it for a later resume; if another upload parked one meanwhile, keep the longer.
      const other = await fsp.stat(partial).catch(() => null);
      const own = await fsp.stat(mine).catch(() => null);
      if (!own) return;
      if (other && other.size >= own.size) await fsp.unlink(mine).catch(() => undefined);
      else await fsp.rename(mine, partial).catch(() => undefined);
    };
    return {
      stored,
      checksDigest: false,
      discard: async () => {
        committed = true;
        await close();
        await fsp.unlink(mine).catch(() => undefined);
      },
      write: async (parts, position) => {
        if (position > end) {
          throw new HoldfastError('HF_STORE_BAD_OFFSET', `${what}: a write at ${position}, but the upload ends at ${end}`);
        }
        try {
          let pending = parts.filter((p) => p.length > 0).map((p) => Buffer.from(p.buffer, p.byteOffset, p.length));
          let at = position;
          while (pending.length > 0) {
            const { bytesWritten } = await fh.writev(pending, at);
            at += bytesWritten;
            end = Math.max(end, at);
            let skip = bytesWritten;
            while (skip > 0 && pending.length > 0) {
              const first = pending[0]!;
              if (first.length <= skip) { skip -= first.length; pending.shift(); } else { pending[0] = first.subarray(skip); skip = 0; }
            }
          }
        } catch (err) {
          throw ioError(`cannot write the upload of ${what}`, err);
        }
      },
      resumeAt: async (offset) => {
        const at = Math.max(0, Math.min(offset, stored));
        const hasher = new Hasher();
        const buf = Buffer.allocUnsafe(Math.min(HASH_PIECE, Math.max(at, 1)));
        for (let off = 0; off < at;) {
          const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, at - off), off);
          if (bytesRead === 0) throw new HoldfastError('HF_IO', `${what}: the partial file ended at ${off}`);
          await hasher.update([buf.subarray(0, bytesRead)]);
          off += bytesRead;
        }
        return { at, hasher };
      },
      commit: async (size, hashed) => {
        try {
          const have = (await fh.stat()).size;
          if (have !== size) {
            throw new HoldfastError('HF_STORE_BAD_OFFSET', `${what}: ${have} bytes stored, ${size} announced`);
          }
          let got = hashed;
          if (got === undefined) {
            const hasher = new Hasher();
            const buf = Buffer.allocUnsafe(Math.min(HASH_PIECE, Math.max(size, 1)));
            for (let off = 0; off < size;) {
              const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - off), off);
              if (bytesRead === 0) throw new HoldfastError('HF_IO', `${what}: the partial file ended early`);
              await hasher.update([buf.subarray(0, bytesRead)]);
              off += bytesRead;
            }
            got = hasher.digest().toString('hex');
          }
          if (got !== digest) {
            committed = true; // nothing to park: the bytes are wrong
            await close();
            await fsp.unlink(mine).catch(() => undefined);
            throw new HoldfastError('HF_STORE_DIGEST_MISMATCH',
              `${what}: the ${size} bytes received hash to ${got.slice(0, 16)}…, not to the announced ${digest.slice(0, 16)}…; the upload was discarded and will be sent again`);
          }
          await fh.sync();
          committed = true;
          await close();
          await this.#mkdirDurable(path.dirname(final));
          // link, not rename: it never replaces a file that is already there.
          let committedByOther = false;
          try {
            await fsp.link(mine, final);
          } catch (err) {
            if (errorCode(err) !== 'EEXIST') throw err;
            committedByOther = true;
            const there = await fsp.readFile(final).catch(() => null);
            const same = there !== null && there.length === size &&
              (contentAddressed(type) || createHash('sha256').update(there).digest('hex') === digest);
            if (!same) {
              await fsp.unlink(mine).catch(() => undefined);
              throw new HoldfastError('HF_STORE_EXISTS', `the store holds a different ${type} ${name}`);
            }
          }
          await fsp.unlink(mine).catch(() => undefined);
          // The new name is what must survive a crash; a partial entry that reappeared would only be resumed or purged.
          await syncDir(path.dirname(final));
          if (!committedByOther) this.#addUsage(tenant, size);
        } catch (err) {
          await close();
          throw ioError(`cannot store ${what}`, err);
        }
      },
      close,
    };
  }

  async read(tenant: string, type: ReplicatedType, name: string, offset: number, length: number, into?: Buffer): Promise<Buffer> {
    try {
      return await this.#storage(tenant).load(type, name, offset, length, into);
    } catch (err) {
      if (errorCode(err) === 'HF_STORAGE_NOT_FOUND') {
        throw new HoldfastError('HF_STORE_NOT_FOUND', `${type} ${name} is not on the store`, { cause: err });
      }
      throw err;
    }
  }

  async list(tenant: string, type: ReplicatedType, after: string | undefined, limit: number): Promise<{ files: StoredFile[]; more: boolean }> {
    const all = (await this.#storage(tenant).list(type).catch((err: unknown) => {
      if (errorCode((err as { cause?: unknown }).cause) === 'ENOENT') return [];
      throw err;
    })).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const from = after === undefined ? all : all.filter((f) => f.name > after);
    return { files: from.slice(0, limit), more: from.length > limit };
  }

  async remove(tenant: string, type: ReplicatedType, name: string, now: Date): Promise<Date | null> {
    const final = this.#final(tenant, type, name);
    const trashDir = path.join(this.#tenantDir(tenant), 'trash');
    const entry = `${String(now.getTime()).padStart(13, '0')}-${randomBytes(4).toString('hex')}-${type}-${name}`;
    try {
      await fsp.mkdir(trashDir, { recursive: true });
      await fsp.rename(final, path.join(trashDir, entry));
    } catch (err) {
      if (errorCode(err) === 'ENOENT') return null;
      throw ioError(`cannot delete ${type} ${name} of tenant ${tenant}`, err);
    }
    await syncDir(trashDir);
    await syncDir(path.dirname(final));
    this.#usage.delete(tenant);
    return now;
  }

  async #trashEntries(tenant: string): Promise<(TrashEntry & { file: string })[]> {
    const dir = path.join(this.#tenantDir(tenant), 'trash');
    const names = await fsp.readdir(dir).catch((err: unknown) => {
      if (errorCode(err) === 'ENOENT') return [] as string[];
      throw ioError(`cannot list the trash of tenant ${tenant}`, err);
    });
    const out: (TrashEntry & { file: string })[] = [];
    for (const n of names) {
      const m = TRASH_ENTRY.exec(n);
      if (!m) continue;
      const type = m[3] as ReplicatedType;
      if (!validName(type, m[4]!)) continue;
      const st = await fsp.stat(path.join(dir, n)).catch(() => null);
      if (!st) continue;
      out.push({ type, name: m[4]!, size: st.size, deletedAt: new Date(Number(m[1])), file: path.join(dir, n) });
    }
    return out.sort((a, b) => a.deletedAt.getTime() - b.deletedAt.getTime());
  }

  async trash(tenant: string): Promise<TrashEntry[]> {
    return (await this.#trashEntries(tenant)).map(({ file: _file, ...e }) => e);
  }

  async undelete(tenant: string, match: (e: TrashEntry) => boolean = () => true): Promise<number> {
    let n = 0;
    for (const e of await this.#trashEntries(tenant)) {
      if (!match(e)) continue;
      const final = this.#final(tenant, e.type, e.name);
      await fsp.mkdir(path.dirname(final), { recursive: true });
      if (await fsp.stat(final).catch(() => null)) continue; // already back (content-addressed: the same bytes)
      await fsp.rename(e.file, final);
      await syncDir(path.dirname(final));
      n++;
    }
    this.#usage.delete(tenant);
    return n;
  }

  async purge(before: Date): Promise<number> {
    let n = 0;
    for (const tenant of await this.tenants()) {
      for (const e of await this.#trashEntries(tenant)) {
        if (e.deletedAt.getTime() >= before.getTime()) continue;
        await fsp.unlink(e.file).catch(() => undefined);
        n++;
      }
      // Uploads abandoned for longer than the grace period (a pack pruned before it was resumed).
      const partialDir = path.join(this.#tenantDir(tenant), 'partial');
      for (const name of await fsp.readdir(partialDir).catch(() => [] as string[])) {
        const st = await fsp.stat(path.join(partialDir, name)).catch(() => null);
        if (st && st.mtimeMs < before.getTime()) {
          await fsp.unlink(path.join(partialDir, name)).catch(() => undefined);
          n++;
        }
      }
      this.#usage.delete(tenant);
    }
    return n;
  }

  async usage(tenant: string): Promise<TenantUsage> {
    const cached = this.#usage.get(tenant);
    if (cached && Date.now() - cached.at < USAGE_TTL_MS) return cached.usage;
    const dir = this.#tenantDir(tenant);
    const u: TenantUsage = { files: 0, bytes: 0, partialBytes: 0, trashBytes: 0 };
    const walk = async (d: string, kind: 'files' | 'partial' | 'trash'): Promise<void> => {
      const entries = await fsp.readdir(d, { withFileTypes: true }).catch(() => []);
      for (const e of entries) {
        const p = path.join(d, e.name);
        if (e.isDirectory()) {
          if (d === dir && (e.name === 'partial' || e.name === 'trash')) await walk(p, e.name);
          else if (d === dir && e.name === 'tmp') continue;
          else await walk(p, kind);
        } else if (e.isFile()) {
          const st = await fsp.stat(p).catch(() => null);
          if (!st) continue;
          if (kind === 'files') { u.files++; u.bytes += st.size; }
          else if (kind === 'partial') u.partialBytes += st.size;
          else u.trashBytes += st.size;
        }
      }
    };
    await walk(dir, 'files');
    this.#usage.set(tenant, { at: Date.now(), usage: u });
    return u;
  }

  /** Counts a file this process stored into the cached usage. */
  #addUsage(tenant: string, bytes: number): void {
    const c = this.#usage.get(tenant);
    if (c) c.usage = { ...c.usage, bytes: c.usage.bytes + bytes, files: c.usage.files + 1 };
  }

  async tenants(): Promise<string[]> {
    const names = await fsp.readdir(path.join(this.location, 'tenants')).catch(() => [] as string[]);
    return names.filter((n) => TENANT_NAME.test(n)).sort();
  }

  async close(): Promise<void> {
    for (const s of this.#tenants.values()) await s.close();
    this.#tenants.clear();
  }
}

