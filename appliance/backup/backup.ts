import os from 'node:os';
import path from 'node:path';

import { HoldfastError, errorCode, hasCode, ioError } from '../errors/index.ts';
import { type BlobId, type Repository, type RepositoryWriter, type SnapshotId, shortId } from '../repository/index.ts';
import { type Snapshot, type SnapshotEntry, listSnapshots, saveSnapshot } from '../snapshot/index.ts';
import { LocalStorage } from '../storage/index.ts';
import type { Source } from '../sources/index.ts';
import { type ArchiveStats, Archiver, type BackupWarning } from './archiver.ts';

export const PROGRAM = 'holdfast 0.1.0';

export interface BackupOptions {
  /** Absolute paths in the source. */
  paths: string[];
  tags?: string[];
  host?: string;
  /** undefined: the latest snapshot of the same host and paths; null: none. */
  parent?: SnapshotId | null;
  /** Read every file, ignoring the parent's metadata. */
  force?: boolean;
  signal?: AbortSignal;
  onWarning?: (w: BackupWarning) => void;
  /** Receives live counters once, at the start (for progress display). */
  onStart?: (live: { archive: ArchiveStats; writer: RepositoryWriter['stats'] }) => void;
  command?: string;
  /** The snapshot's time (default now): the engine passes its clock's. */
  time?: Date;
}

export interface BackupResult {
  id: SnapshotId;
  snapshot: Snapshot;
  warnings: BackupWarning[];
  /** Packs left by an interrupted backup that this one took into the index. */
  adopted: { packs: number; blobs: number };
}

/** Normalizes the paths to back up: absolute, no trailing slash, no duplicates. */
export function normalizePaths(paths: readonly string[]): string[] {
  if (paths.length === 0) throw new HoldfastError('HF_USAGE', 'name at least one path to back up');
  const out = new Set<string>();
  for (const p of paths) {
    if (!path.posix.isAbsolute(p)) {
      throw new HoldfastError('HF_INVALID_ARGUMENT', `${p} is not an absolute path`);
    }
    out.add(path.posix.normalize(p).replace(/(.)\/+$/, '$1'));
  }
  return [...out].sort();
}

function chooseParent(all: readonly SnapshotEntry[], host: string, paths: readonly string[], source: Source): SnapshotEntry | null {
  const key = [...paths].sort().join('\0');
  for (let i = all.length - 1; i >= 0; i--) {
    const s = all[i]!.snapshot;
    // The same paths on another server are other files: never a parent.
    const sameSource = s.source.kind === source.kind && s.source.location === source.location;
    if (s.host === host && sameSource && [...s.paths].sort().join('\0') === key) return all[i]!;
  }
  return null;
}

/**
 * Why a path to back up cannot be examined, coded: only a path that is not
 * there is HF_SOURCE_NOT_FOUND; the source's own codes (a lost connection, a
 * protocol error) pass as they are.
 */
function pathError(source: Source, p: string, cause: unknown): HoldfastError {
  if (cause instanceof HoldfastError) return cause;
  const where = `cannot back up ${p}${source.kind === 'local' ? '' : ` from ${source.location}`}`;
  const why = cause instanceof Error ? cause.message : String(cause);
  switch (errorCode(cause)) {
    case 'ENOENT':
    case 'ENOTDIR':
      return new HoldfastError('HF_SOURCE_NOT_FOUND', `${where}: ${why}; check the path`, { cause });
    case 'EACCES':
    case 'EPERM':
      return new HoldfastError('HF_SOURCE_ACCESS_DENIED', `${where}: permission denied (${why}); give the backup user access to it`, { cause });
    default:
      return ioError(where, cause);
  }
}

/**
 * Backs up paths from a source into the repository and writes a snapshot.
 * Holds the append lock throughout. Blobs go to packs first, then index
 * files, then the snapshot (docs/DESIGN.md, "Write order"), so a crash at any
 * point leaves a valid repository, and the next backup reuses every pack that
 * was completely written (it adopts packs no index lists yet).
 */
export async function backup(repo: Repository, source: Source, options: BackupOptions): Promise<BackupResult> {
  const started = performance.now();
  const paths = normalizePaths(options.paths);
  for (const p of paths) {
    try {
      await source.stat(Buffer.from(p, 'utf8'));
    } catch (cause) {
      throw pathError(source, p, cause);
    }
  }
  const host = options.host ?? os.hostname();
  const lock = await repo.lock('append', options.command ?? 'holdfast backup');
  let writer: RepositoryWriter | null = null;
  try {
    await repo.loadIndex();
    writer = repo.writer();
    if (repo.storage instanceof LocalStorage) await repo.storage.clearTemporary();
    const adopted = await writer.adoptUnindexedPacks();
    const warnings: BackupWarning[] = [];
    for (const u of adopted.unreadable) {
      warnings.push({ path: `pack ${shortId(u.pack)}`, code: 'HF_WARN_SOURCE', message: `unreadable pack left in the repository: ${u.error.message}` });
    }
    const { snapshots } = await listSnapshots(repo);
    let parent: SnapshotEntry | null = null;
    if (options.parent !== null) {
      parent = options.parent === undefined
        ? chooseParent(snapshots, host, paths, source)
        : snapshots.find((s) => s.id === options.parent) ?? null;
    }
    const archiver = new Archiver(repo, writer, source, {
      force: options.force ?? false,
      ...(options.signal ? { signal: options.signal } : {}),
      ...(options.onWarning ? { onWarning: options.onWarning } : {}),
    });
    options.onStart?.({ archive: archiver.stats, writer: writer.stats });
    const tree: BlobId = await archiver.run(paths, parent?.snapshot.tree ?? null);
    await writer.flush();
    warnings.push(...archiver.warnings);
    const a = archiver.stats;
    const w = writer.stats;
    const snapshot: Snapshot = {
      version: 1,
      time: (options.time ?? new Date()).toISOString(),
      host,
      username: os.userInfo().username,
      paths,
      tags: options.tags ?? [],
      tree,
      parent: parent?.id ?? null,
      source: { kind: source.kind, location: source.location },
      stats: {
        files: a.files,
        dirs: a.dirs,
        bytes: a.bytes,
        filesRead: a.filesRead,
        filesUnchanged: a.filesUnchanged,
        bytesRead: a.bytesRead,
        bytesAdded: w.bytesAdded,
        rawAdded: w.rawAdded,
        blobsAdded: w.blobsAdded,
        warnings: warnings.length,
        seconds: Math.round(performance.now() - started) / 1000,
      },
      program: PROGRAM,
    };
    const id = await saveSnapshot(writer, snapshot);
    return { id, snapshot, warnings, adopted: { packs: adopted.adopted, blobs: adopted.blobs } };
  } catch (err) {
    // Keep what was completely stored, so that a retry does not send it again.
    if (writer) {
      const kept = !hasCode(err, 'HF_DISK_FULL') && await writer.flush().then(() => true, () => false);
      if (!kept) await writer.abort();
      if (kept && hasCode(err, 'HF_SOURCE_DISCONNECTED')) {
        throw new HoldfastError('HF_SOURCE_DISCONNECTED',
          `${(err as Error).message}; no snapshot was written, and what was stored is kept for the next backup`, { cause: err });
      }
    }
    throw err;
  } finally {
    await lock.release();
  }
}
