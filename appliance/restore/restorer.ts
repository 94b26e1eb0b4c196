import { constants } from 'node:fs';
import fsp, { type FileHandle } from 'node:fs/promises';

import { type FileMeta, type WriteEntry, mknod, setMeta, writeFile, writeFiles } from '../../native/index.ts';
import { Semaphore } from '../limits/index.ts';
import { HoldfastError, errorCode } from '../errors/index.ts';
import { type BlobId, BlobReader, type Repository, shortId } from '../repository/index.ts';
import { type Snapshot, type TreeNode, displayName, isSafeName, loadTree, splitPath } from '../snapshot/index.ts';

/** Files restored at once, and plaintext bytes being fetched at once. */
const FILES_IN_FLIGHT = 16;
const FETCH_BUDGET = 8 << 20;
/**
 * Small files (one chunk, one link) and symlinks are restored in batches:
 * their blobs opened in one native job, the files and links written (with
 * their metadata) in another. Two threadpool round trips per batch instead
 * of two to four per entry.
 */
const BATCH_FILES = 64;
const BATCH_BYTES = 1 << 20;
const BATCHES_IN_FLIGHT = 4;
/**
 * Directories restored at once beside the main walk. A directory takes a
 * slot only if one is free, else it is restored in line: no walk waits for
 * a slot held by its own ancestor. Each directory is a chain of threadpool
 * round trips (its tree, its mkdir, its batches), and the threadpool queue
 * is shared with decompression: walked one at a time, the walk is the
 * bottleneck.
 */
const DIRS_IN_FLIGHT = 8;

export type RestoreWarningCode =
  | 'HF_WARN_UNSAFE_NAME' | 'HF_WARN_DAMAGED' | 'HF_WARN_WRITE' | 'HF_WARN_SKIPPED';

export interface RestoreWarning {
  path: string;
  code: RestoreWarningCode;
  message: string;
}

export interface RestoreStats {
  files: number;
  dirs: number;
  symlinks: number;
  hardlinks: number;
  specials: number;
  bytes: number;
  /** Files not restored (damaged data, write errors): each has a warning. */
  failed: number;
}

export interface RestoreOptions {
  /** Directory to restore into; snapshot paths are recreated under it. */
  target: string;
  /** Absolute paths in the snapshot to restore (default: everything). */
  include?: string[];
  /** Restore owners (default: when running as root). */
  owners?: boolean;
  signal?: AbortSignal;
  onWarning?: (w: RestoreWarning) => void;
  onStart?: (stats: RestoreStats) => void;
}

export interface RestoreResult {
  stats: RestoreStats;
  warnings: RestoreWarning[];
  seconds: number;
}

const SLASH = Buffer.from('/');
const S_IFIFO = 0o010000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;

function join(dir: Buffer, name: Buffer): Buffer {
  return Buffer.concat([dir, SLASH, name]);
}

/**
 * Restores a snapshot (or subtrees of it) under a target directory.
 *
 * Never writes outside the target: every name is checked (no "", ".", "..",
 * "/" or NUL), duplicate names are refused, and nothing is written through a
 * symlink: an existing symlink where a directory or file goes is replaced,
 * files are opened with O_NOFOLLOW, and symlinks from the snapshot are
 * recreated as links, never followed. Every blob's content is checked against
 * its id. Runs of zeros (whole chunks) become holes. Directory metadata is
 * applied last, deepest first, so that writing children does not disturb it.
 */
export async function restore(repo: Repository, snapshot: Snapshot, options: RestoreOptions): Promise<RestoreResult> {
  const started = performance.now();
  try {
    await fsp.mkdir(options.target, { recursive: true });
    if (!(await fsp.stat(options.target)).isDirectory()) throw Object.assign(new Error('not a directory'), { code: 'ENOTDIR' });
  } catch (cause) {
    throw new HoldfastError('HF_INVALID_ARGUMENT',
      `cannot restore into ${options.target}: ${errorCode(cause) === 'EEXIST' || errorCode(cause) === 'ENOTDIR' ? 'it exists and is not a directory' : (cause as Error).message}; choose a directory (it is created if missing)`,
      { cause });
  }
  const base = Buffer.from(await fsp.realpath(options.target), 'utf8');
  const lock = await repo.lock('shared', 'holdfast restore');
  try {
    await repo.loadIndex();
    const r = new Restorer(repo, base, options);
    options.onStart?.(r.stats);
    await r.run(snapshot.tree, options.include);
    return { stats: r.stats, warnings: r.warnings, seconds: (performance.now() - started) / 1000 };
  } finally {
    await lock.release();
  }
}

class Restorer {
  readonly stats: RestoreStats = { files: 0, dirs: 0, symlinks: 0, hardlinks: 0, specials: 0, bytes: 0, failed: 0 };
  readonly warnings: RestoreWarning[] = [];
  readonly #repo: Repository;
  readonly #reader: BlobReader;
  readonly #base: Buffer;
  readonly #owners: boolean;
  readonly #signal: AbortSignal | undefined;
  readonly #onWarning: ((w: RestoreWarning) => void) | undefined;
  readonly #files = new Semaphore(FILES_IN_FLIGHT);
  readonly #batches = new Semaphore(BATCHES_IN_FLIGHT);
  readonly #dirSlots = new Semaphore(DIRS_IN_FLIGHT);
  readonly #budget = new Semaphore(FETCH_BUDGET);
  readonly #tasks = new Set<Promise<void>>();
  readonly #hardlinks = new Map<string, Promise<Buffer | null>>();
  /**
   * Directories whose metadata is applied at the end, in creation order
   * (a directory is created before anything in it, so walking this list
   * backwards meets children before their parents). Paths are kept as
   * latin1 strings (byte for byte), not Buffers: a small Buffer is a view of
   * an 8 KiB slab it keeps alive, and thousands of them held to the end kept
   * tens of MB.
   */
  readonly #dirs: { path: string; meta: FileMeta }[] = [];
  #failure: unknown = null;

  constructor(repo: Repository, base: Buffer, options: RestoreOptions) {
    this.#repo = repo;
    this.#reader = new BlobReader(repo);
    this.#base = base;
    this.#owners = options.owners ?? process.getuid?.() === 0;
    this.#signal = options.signal;
    this.#onWarning = options.onWarning;
  }

  async run(root: BlobId, include: string[] | undefined): Promise<void> {
    try {
      if (!include || include.length === 0) await this.#dir(root, this.#base);
      else for (const p of include) await this.#included(root, p);
    } catch (err) {
      this.#failure ??= err;
    }
    // Tasks start tasks (a directory walked beside others starts its files'): wait until none is left.
    while (this.#tasks.size > 0) await Promise.allSettled([...this.#tasks]);
    if (this.#failure) throw this.#failure;
    for (let i = this.#dirs.length - 1; i >= 0; i--) {
      const { path, meta } = this.#dirs[i]!;
      const p = Buffer.from(path, 'latin1');
      await setMeta(p, false, meta).catch((err: unknown) => this.#warn(p, 'HF_WARN_WRITE', `metadata not set: ${(err as Error).message}`));
    }
  }

  #warn(p: Buffer, code: RestoreWarningCode, message: string): void {
    const rel = p.subarray(this.#base.length);
    const w = { path: displayName(rel.length ? rel : SLASH), code, message };
    this.warnings.push(w);
    this.#onWarning?.(w);
  }

  #checkAbort(): void {
    if (this.#failure) throw this.#failure;
    if (this.#signal?.aborted) throw new HoldfastError('HF_INTERRUPTED', 'restore interrupted');
  }

  #meta(n: TreeNode): FileMeta {
    return {
      mode: n.mode & 0o7777,
      uid: this.#owners ? n.uid : -1,
      gid: this.#owners ? n.gid : -1,
      atime: n.mtime,
      mtime: n.mtime,
    };
  }

  /** Restores one snapshot path, creating the directories above it. */
  async #included(root: BlobId, snapshotPath: string): Promise<void> {
    const parts = splitPath(snapshotPath);
    let tree = root;
    let dir = this.#base;
    for (let i = 0; i < parts.length; i++) {
      const nodes = await loadTree(this.#repo, tree);
      const node = nodes.find((n) => n.name.equals(parts[i]!));
      if (!node) {
        throw new HoldfastError('HF_PATH_NOT_FOUND',
          `${snapshotPath} is not in the snapshot; list it with \`holdfast ls\``);
      }
      if (!isSafeName(node.name)) {
        this.#warn(join(dir, node.name), 'HF_WARN_UNSAFE_NAME', 'refused: the name is not safe to create');
        return;
      }
      const p = join(dir, node.name);
      if (i === parts.length - 1) {
        await this.#entry(p, node);
        return;
      }
      if (node.type !== 'dir') {
        throw new HoldfastError('HF_PATH_NOT_FOUND', `${snapshotPath} is not in the snapshot (${displayName(node.name)} is not a directory)`);
      }
      await this.#makeDir(p, node);
      tree = node.subtree!;
      dir = p;
    }
    // "/" itself: everything
    await this.#dir(root, this.#base);
  }

  async #dir(tree: BlobId, dir: Buffer): Promise<void> {
    let nodes: TreeNode[];
    try {
      nodes = await loadTree(this.#repo, tree);
    } catch (err) {
      // A damaged listing loses this directory's contents, not the restore.
      if (!(err instanceof HoldfastError) || !['HF_PACK_CORRUPT', 'HF_BLOB_MISSING', 'HF_REPO_CORRUPT'].includes(err.code)) throw err;
      this.stats.failed++;
      this.#warn(dir, 'HF_WARN_DAMAGED', `directory contents not restored, the repository copy of its listing is damaged: ${err.message}`);
      return;
    }
    const seen = new Set<string>();
    let batch: { p: Buffer; n: TreeNode }[] = [];
    let batchBytes = 0;
    const list: (TreeNode | undefined)[] = nodes;
    for (let i = 0; i < list.length; i++) {
      this.#checkAbort();
      const n = list[i]!;
      list[i] = undefined; // handed over: a large directory's nodes are not all held to its end
      const p = join(dir, n.name);
      if (!isSafeName(n.name)) {
        this.#warn(p, 'HF_WARN_UNSAFE_NAME', 'refused: the name is empty, ".", "..", or holds "/" or NUL');
        continue;
      }
      const key = n.name.toString('latin1');
      if (seen.has(key)) {
        this.#warn(p, 'HF_WARN_UNSAFE_NAME', 'refused: a second entry with the same name in one directory');
        continue;
      }
      seen.add(key);
      if (n.type === 'symlink' || (n.type === 'file' && n.links <= 1 && (n.content?.length ?? 0) <= 1 && n.size <= BATCH_BYTES)) {
        if (batch.length >= BATCH_FILES || batchBytes + n.size > BATCH_BYTES) {
          await this.#startBatch(batch);
          batch = [];
          batchBytes = 0;
        }
        batch.push({ p, n });
        if (n.type === 'file') batchBytes += n.size;
        continue;
      }
      await this.#entry(p, n);
    }
    if (batch.length > 0) await this.#startBatch(batch);
  }

  async #startBatch(items: { p: Buffer; n: TreeNode }[]): Promise<void> {
    await this.#batches.acquire();
    const task = this.#restoreBatch(items)
      .catch((err: unknown) => { this.#failure ??= err; })
      .finally(() => {
        this.#batches.release();
        this.#tasks.delete(task);
      });
    this.#tasks.add(task);
  }

  /** A batch of small files and symlinks: blobs opened in one job, files and links written in another. */
  async #restoreBatch(items: { p: Buffer; n: TreeNode }[]): Promise<void> {
    const withBlob = items.filter((i) => i.n.type === 'file' && i.n.content!.length === 1);
    const units = await this.#reserve(withBlob.reduce((a, i) => a + i.n.size, 0));
    let loaded: Awaited<ReturnType<BlobReader['loadMany']>> | null = null;
    try {
      if (withBlob.length > 0) loaded = await this.#reader.loadMany(withBlob.map((i) => i.n.content![0]!));
      const entries: WriteEntry[] = [];
      const written: { p: Buffer; n: TreeNode }[] = [];
      let k = 0;
      for (const item of items) {
        const { p, n } = item;
        if (n.type === 'symlink') {
          entries.push({ path: p, kind: 'symlink', target: n.target!, meta: this.#meta(n) });
          written.push(item);
          continue;
        }
        if (n.content!.length === 0) {
          if (n.size !== 0) {
            await this.#failed(p, new HoldfastError('HF_REPO_CORRUPT', `it has no blobs, the tree says ${n.size} bytes`));
            continue;
          }
          entries.push({ path: p, data: null, size: 0, meta: this.#meta(n) });
          written.push(item);
          continue;
        }
        const r = loaded!.results[k++]!;
        if ('error' in r) {
          await this.#failed(p, r.error);
        } else if (r.plain.length !== n.size) {
          await this.#failed(p, new HoldfastError('HF_REPO_CORRUPT', `its blobs hold ${r.plain.length} bytes, the tree says ${n.size}`));
        } else {
          entries.push({ path: p, data: r.allZero ? null : r.plain, size: n.size, meta: this.#meta(n) });
          written.push(item);
        }
      }
      if (entries.length === 0) return;
      const errors = await writeFiles(entries);
      for (const [i, code] of errors.entries()) {
        const { p, n } = written[i]!;
        const inTheWay = code === 'EISDIR' ? 'a directory is in the way; move it aside and restore again' : null;
        if (n.type === 'symlink') {
          if (code === null) this.stats.symlinks++;
          else this.#warn(p, 'HF_WARN_WRITE', `not restored: ${inTheWay ?? writeFailure(p, Object.assign(new Error(code), { code }))}`);
        } else if (code === null) {
          this.stats.files++;
          this.stats.bytes += n.size;
        } else {
          await this.#failed(p, Object.assign(new Error(inTheWay ?? code), { code }));
        }
      }
    } finally {
      if (loaded) this.#reader.done(loaded.buffer);
      this.#budget.release(units);
    }
  }

  /** A file that could not be restored: a warning, and no partial file left that could pass for it. */
  async #failed(p: Buffer, err: unknown): Promise<void> {
    this.stats.failed++;
    const damaged = err instanceof HoldfastError &&
      (err.code === 'HF_PACK_CORRUPT' || err.code === 'HF_BLOB_MISSING' || err.code === 'HF_REPO_CORRUPT');
    const message = writeFailure(p, err);
    this.#warn(p, damaged ? 'HF_WARN_DAMAGED' : 'HF_WARN_WRITE',
      `${damaged ? 'not restored, the repository copy is damaged' : 'not restored'}: ${message}` +
      (damaged && !message.includes('holdfast check') ? '; run `holdfast check --read-data` for the full list' : ''));
    if (!(err instanceof Error && (err as { code?: string }).code === 'EISDIR')) await fsp.unlink(p).catch(() => undefined);
  }

  async #entry(p: Buffer, n: TreeNode): Promise<void> {
    switch (n.type) {
      case 'dir': {
        if (!(await this.#makeDir(p, n))) return;
        if (!this.#dirSlots.tryAcquire()) {
          await this.#dir(n.subtree!, p);
          return;
        }
        const task = this.#dir(n.subtree!, p)
          .catch((err: unknown) => { this.#failure ??= err; })
          .finally(() => {
            this.#dirSlots.release();
            this.#tasks.delete(task);
          });
        this.#tasks.add(task);
        return;
      }
      case 'file': {
        await this.#files.acquire();
        const task = this.#file(p, n)
          .catch((err: unknown) => { this.#failure ??= err; })
          .finally(() => {
            this.#files.release();
            this.#tasks.delete(task);
          });
        this.#tasks.add(task);
        return;
      }
      case 'symlink':
        // a symlink named by --include (in a directory, they go in batches)
        await this.#restoreBatch([{ p, n }]);
        return;
      case 'fifo':
      case 'chardev':
      case 'blockdev': {
        if (n.type !== 'fifo' && process.getuid?.() !== 0) {
          this.#warn(p, 'HF_WARN_SKIPPED', 'device node not created: that needs root');
          return;
        }
        const kind = n.type === 'fifo' ? S_IFIFO : n.type === 'chardev' ? S_IFCHR : S_IFBLK;
        await this.#guarded(p, async () => {
          await this.#clear(p);
          await mknod(p, kind | (n.mode & 0o7777), n.rdev ?? 0);
          await setMeta(p, false, this.#meta(n));
          this.stats.specials++;
        });
        return;
      }
      case 'socket':
        return; // sockets belong to the program that listens on them
    }
  }

  /** Runs a write; a failure becomes a warning about this path. */
  async #guarded(p: Buffer, fn: () => Promise<void>): Promise<boolean> {
    try {
      await fn();
      return true;
    } catch (err) {
      this.#warn(p, 'HF_WARN_WRITE', `not restored: ${writeFailure(p, err)}`);
      return false;
    }
  }

  /** Removes what is in the way (a file, link or special; never a directory). */
  async #clear(p: Buffer): Promise<void> {
    try {
      const st = await fsp.lstat(p);
      if (st.isDirectory()) {
        throw new HoldfastError('HF_IO', 'a directory is in the way; move it aside and restore again');
      }
      await fsp.unlink(p);
    } catch (err) {
      if (errorCode(err) !== 'ENOENT') throw err;
    }
  }

  /** Creates a directory (or keeps an existing one); a symlink or file in the way is replaced. */
  async #makeDir(p: Buffer, n: TreeNode): Promise<boolean> {
    const ok = await this.#guarded(p, async () => {
      try {
        await fsp.mkdir(p, 0o700);
      } catch (err) {
        if (errorCode(err) !== 'EEXIST') throw err;
        const st = await fsp.lstat(p);
        if (!st.isDirectory()) {
          await fsp.unlink(p);
          await fsp.mkdir(p, 0o700);
        } else if ((st.mode & 0o700) !== 0o700) {
          await fsp.chmod(p, (st.mode & 0o7777) | 0o700); // writable until its metadata is applied
        }
      }
    });
    if (ok) {
      this.stats.dirs++;
      this.#dirs.push({ path: p.toString('latin1'), meta: this.#meta(n) });
    }
    return ok;
  }

  async #file(p: Buffer, n: TreeNode): Promise<void> {
    let settleLink: ((first: Buffer | null) => void) | null = null;
    if (n.links > 1) {
      const key = `${n.device}:${n.inode}`;
      const first = this.#hardlinks.get(key);
      if (first) {
        const target = await first;
        if (target && await this.#guarded(p, async () => {
          await this.#clear(p);
          await fsp.link(target, p);
        })) {
          this.stats.hardlinks++;
          return;
        }
      } else {
        this.#hardlinks.set(key, new Promise((resolve) => { settleLink = resolve; }));
      }
    }
    let ok = false;
    try {
      ok = await this.#writeContent(p, n);
    } finally {
      (settleLink as ((first: Buffer | null) => void) | null)?.(ok ? p : null);
    }
  }

  /** Writes a file's content and metadata; false (with a warning) when it could not be. */
  async #writeContent(p: Buffer, n: TreeNode): Promise<boolean> {
    const content = n.content ?? [];
    const sizes = content.map((id) => this.#repo.index.get(id)?.rawLength ?? -1);
    const missing = content.findIndex((_, i) => sizes[i]! < 0);
    const total = sizes.reduce((a, b) => a + Math.max(b, 0), 0);
    try {
      if (missing >= 0) {
        throw new HoldfastError('HF_BLOB_MISSING', `blob ${shortId(content[missing]!)} is in no pack`);
      }
      if (total !== n.size) {
        throw new HoldfastError('HF_REPO_CORRUPT', `its blobs hold ${total} bytes, the tree says ${n.size}`);
      }
      if (content.length <= 1) {
        // one job to write it all: content (or a hole), size, owner, mode, times
        const blob = content.length ? await this.#fetch(content[0]!, sizes[0]!) : null;
        try {
          await writeFile(p, blob && !blob.allZero ? blob.plain : null, n.size, this.#meta(n));
        } finally {
          if (blob) this.#done(blob);
        }
      } else {
        await this.#writeChunks(p, n, content, sizes);
        await setMeta(p, false, this.#meta(n));
      }
      this.stats.files++;
      this.stats.bytes += n.size;
      return true;
    } catch (err) {
      if (err instanceof HoldfastError && err.code === 'HF_INTERRUPTED') throw err;
      await this.#failed(p, err);
      return false;
    }
  }

  /** Reserves budget for a blob (waits), then loads and checks it. */
  async #fetch(id: BlobId, size: number): Promise<{ plain: Buffer; allZero: boolean; size: number }> {
    return this.#load(id, size, await this.#reserve(size));
  }

  async #reserve(size: number): Promise<number> {
    this.#checkAbort();
    const units = Math.min(this.#reader.footprint(size), FETCH_BUDGET);
    await this.#budget.acquire(units);
    return units;
  }

  async #load(id: BlobId, size: number, units: number): Promise<{ plain: Buffer; allZero: boolean; size: number }> {
    try {
      const r = await this.#reader.load(id);
      return { plain: r.plain, allZero: r.allZero, size };
    } catch (err) {
      this.#budget.release(units);
      throw err;
    }
  }

  #done(blob: { plain: Buffer; size: number }): void {
    this.#reader.done(blob.plain);
    this.#budget.release(Math.min(this.#reader.footprint(blob.size), FETCH_BUDGET));
  }

  /** A multi-chunk file: chunks fetched concurrently (within the budget), written at their offsets. */
  async #writeChunks(p: Buffer, n: TreeNode, content: BlobId[], sizes: number[]): Promise<void> {
    const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW;
    let fh: FileHandle;
    try {
      fh = await fsp.open(p, flags, 0o600);
    } catch (err) {
      if (errorCode(err) !== 'ELOOP') throw err;
      await fsp.unlink(p); // a symlink in the way: replaced, not followed
      fh = await fsp.open(p, flags | constants.O_EXCL, 0o600);
    }
    try {
      const writes: Promise<void>[] = [];
      let offset = 0;
      for (let i = 0; i < content.length; i++) {
        const at = offset;
        offset += sizes[i]!;
        let units: number;
        try {
          units = await this.#reserve(sizes[i]!); // backpressure: wait for budget, not for the fetch
        } catch (err) {
          await Promise.allSettled(writes); // nothing already started may fail unobserved
          throw err;
        }
        writes.push(this.#load(content[i]!, sizes[i]!, units).then(async (blob) => {
          try {
            if (blob.allZero) return;
            let done = 0;
            while (done < blob.plain.length) {
              const { bytesWritten } = await fh.write(blob.plain, done, blob.plain.length - done, at + done);
              done += bytesWritten;
            }
          } finally {
            this.#done(blob);
          }
        }));
      }
      // Every write settles before the handle closes; the first failure is reported.
      const failed = (await Promise.allSettled(writes)).find((r) => r.status === 'rejected');
      if (failed) throw (failed as PromiseRejectedResult).reason;
      await fh.truncate(n.size); // the length, and a trailing hole if it ends in zeros
    } finally {
      await fh.close();
    }
  }
}

/**
 * Why a path could not be written, in words an admin can act on. A name from
 * a Windows server can be legal there (255 UTF-16 units) and too long here
 * (255 bytes of UTF-8).
 */
function writeFailure(p: Buffer, err: unknown): string {
  if ((err as { code?: string }).code === 'ENAMETOOLONG') {
    const name = p.subarray(p.lastIndexOf(0x2f) + 1);
    return `its name is ${name.length} bytes, longer than this file system allows (usually 255), or the path is too long; ` +
      'restore it to a target whose file system allows it (e.g. back onto the server it came from), or restore its directory elsewhere';
  }
  return (err as Error).message;
}
