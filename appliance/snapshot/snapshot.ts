import { HoldfastError, hasCode } from '../errors/index.ts';
import {
  type BlobId, type Repository, type RepositoryWriter, type SnapshotId, forEachLimit, isId, shortId,
} from '../repository/index.ts';

export interface SnapshotStats {
  files: number;
  dirs: number;
  /** Bytes of all files in the snapshot. */
  bytes: number;
  /** Files read because they were new or changed. */
  filesRead: number;
  /** Files whose chunk list was reused from the parent without reading. */
  filesUnchanged: number;
  /** Bytes read from the source. */
  bytesRead: number;
  /** Bytes written to the repository (sealed blobs, pack headers, index files). */
  bytesAdded: number;
  /** Plaintext bytes of the blobs that were new. */
  rawAdded: number;
  blobsAdded: number;
  /** Files and directories that could not be read (they are not in the snapshot). */
  warnings: number;
  seconds: number;
}

/** A snapshot record (sealed file in snapshots/, named by its SHA-256). */
export interface Snapshot {
  version: 1;
  /** ISO 8601, UTC, milliseconds. */
  time: string;
  host: string;
  username: string;
  /** The paths backed up, absolute, as given. */
  paths: string[];
  tags: string[];
  /** Root tree: the paths appear under it with their full directory chain. */
  tree: BlobId;
  parent: SnapshotId | null;
  source: { kind: string; location: string };
  stats: SnapshotStats;
  program: string;
}

export interface SnapshotEntry {
  id: SnapshotId;
  snapshot: Snapshot;
}

export function encodeSnapshot(s: Snapshot): Buffer {
  return Buffer.from(JSON.stringify(s));
}

export function decodeSnapshot(plain: Buffer, id: string): Snapshot {
  const bad = (why: string) => new HoldfastError('HF_REPO_CORRUPT', `snapshot ${shortId(id)}: ${why}; run \`holdfast check\``);
  let s: Snapshot;
  try {
    s = JSON.parse(plain.toString('utf8')) as Snapshot;
  } catch {
    throw bad('not valid JSON');
  }
  if (s?.version !== 1) {
    throw new HoldfastError('HF_UNSUPPORTED_VERSION',
      `snapshot ${shortId(id)} has format version ${String(s?.version)}; this Holdfast reads version 1: upgrade Holdfast`);
  }
  if (typeof s.time !== 'string' || !Number.isFinite(Date.parse(s.time)) || typeof s.tree !== 'string' ||
      !isId(s.tree) || !Array.isArray(s.paths) || !Array.isArray(s.tags) || typeof s.host !== 'string' ||
      typeof s.source?.kind !== 'string' || typeof s.source?.location !== 'string') {
    throw bad('missing or invalid fields');
  }
  return s;
}

export async function saveSnapshot(writer: RepositoryWriter, s: Snapshot): Promise<SnapshotId> {
  return writer.saveSnapshot(encodeSnapshot(s));
}

export async function loadSnapshot(repo: Repository, id: SnapshotId): Promise<Snapshot> {
  return decodeSnapshot(await repo.loadFile('snapshot', id), id);
}

/**
 * Snapshot records already read, per open repository. A snapshot file is
 * named by its content's hash and never changes, so a record once read stays
 * true for as long as its file is listed; the engine lists snapshots on
 * most console pages and reads each file once. Records are frozen: shared.
 * Only callers that ask (`cached`) get them: check and prune read every
 * file, so that a file damaged since is found.
 */
const records = new WeakMap<Repository, Map<SnapshotId, Snapshot>>();

function deepFreeze<T>(o: T): T {
  if (typeof o === 'object' && o !== null && !Object.isFrozen(o)) {
    Object.freeze(o);
    for (const v of Object.values(o)) deepFreeze(v);
  }
  return o;
}

/**
 * All snapshots, oldest first. Unreadable ones are reported, not fatal;
 * vanished ones are skipped. With `cached`, records read before by a cached
 * listing of this repository are not read again.
 */
export async function listSnapshots(repo: Repository, options: { cached?: boolean } = {}): Promise<{ snapshots: SnapshotEntry[]; damaged: { id: SnapshotId; error: Error }[] }> {
  const ids = await repo.listSnapshotIds();
  let cache = options.cached ? records.get(repo) : new Map<SnapshotId, Snapshot>();
  if (!cache) records.set(repo, cache = new Map());
  const listed = new Set(ids);
  for (const id of cache.keys()) if (!listed.has(id)) cache.delete(id);
  const snapshots: SnapshotEntry[] = [];
  const damaged: { id: SnapshotId; error: Error }[] = [];
  await forEachLimit(ids, 8, async (id) => {
    try {
      let snapshot = cache.get(id);
      if (!snapshot) cache.set(id, snapshot = options.cached ? deepFreeze(await loadSnapshot(repo, id)) : await loadSnapshot(repo, id));
      snapshots.push({ id, snapshot });
    } catch (err) {
      // one that vanished since the listing was forgotten meanwhile
      if (!hasCode(err, 'HF_STORAGE_NOT_FOUND')) damaged.push({ id, error: err as Error });
    }
  });
  snapshots.sort((a, b) => Date.parse(a.snapshot.time) - Date.parse(b.snapshot.time) || (a.id < b.id ? -1 : 1));
  return { snapshots, damaged };
}

/**
 * Resolves "latest" or a unique id prefix (at least 4 hex digits) among the
 * given snapshots. HF_SNAPSHOT_NOT_FOUND when none or several match.
 */
export function resolveSnapshot(all: readonly SnapshotEntry[], ref: string): SnapshotEntry {
  if (ref === 'latest') {
    const last = all[all.length - 1];
    if (!last) throw new HoldfastError('HF_SNAPSHOT_NOT_FOUND', 'the repository has no snapshots yet');
    return last;
  }
  if (!/^[0-9a-f]{4,64}$/.test(ref)) {
    throw new HoldfastError('HF_SNAPSHOT_NOT_FOUND',
      `${JSON.stringify(ref)} is not a snapshot id: give "latest" or at least 4 hex digits (see \`holdfast snapshots\`)`);
  }
  const matches = all.filter((s) => s.id.startsWith(ref));
  if (matches.length === 1) return matches[0]!;
  if (matches.length === 0) {
    throw new HoldfastError('HF_SNAPSHOT_NOT_FOUND', `no snapshot ${ref}; list them with \`holdfast snapshots\``);
  }
  throw new HoldfastError('HF_SNAPSHOT_NOT_FOUND',
    `${ref} matches ${matches.length} snapshots (${matches.map((m) => shortId(m.id)).join(', ')}); give more digits`);
}
