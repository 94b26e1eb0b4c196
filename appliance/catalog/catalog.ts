import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import { HoldfastError, errorCode } from '../errors/index.ts';
import { SqliteDb } from '../sqlite/index.ts';
import { type BlobId, type Repository, type SnapshotId, shortId } from '../repository/index.ts';
import { type NodeType, type SnapshotEntry, type TreeNode, displayName, listSnapshots, loadTree, splitPath } from '../snapshot/index.ts';

/** Bumped when the schema changes; an older catalog is rebuilt. */
const SCHEMA_VERSION = '1';
/** Rows per multi-row INSERT (10 parameters each; SQLite allows 32766). */
const ROWS_PER_INSERT = 500;

export interface CatalogEntry {
  path: string;
  name: string;
  type: NodeType;
  size: number;
  mode: number;
  mtime: [number, number];
  /** Short digest of the file's chunk list: equal digests, equal content. */
  content: string | null;
}

export interface FindMatch extends CatalogEntry {
  snapshot: SnapshotId;
  time: string;
}

/**
 * A SQLite catalog of what the snapshots hold, for fast browsing and search.
 * It is derived data: built from the trees, kept in the local cache (never in
 * the repository), rebuilt when missing, and synced with the repository
 * before each use (new snapshots indexed, forgotten ones dropped).
 *
 * Listings are stored per tree, not per snapshot: an unchanged directory is
 * one tree blob shared by every snapshot, and is catalogued once, so the
 * catalog grows with changes, not with snapshots × files.
 */
export class Catalog {
  readonly #db: SqliteDb;
  readonly file: string;

  private constructor(db: SqliteDb) {
    this.#db = db;
    this.file = db.file;
  }

  /**
   * Opens (creating if needed) the catalog of a repository in a cache
   * directory. `busyTimeoutMs`: how long to wait for another process's sync
   * (default 5 s; the engine's job workers wait longer, off its event loop).
   */
  static async open(cacheDir: string, repoId: string, options: { busyTimeoutMs?: number } = {}): Promise<Catalog> {
    const dir = path.join(cacheDir, repoId);
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const file = path.join(dir, 'catalog.sqlite');
    const db = await SqliteDb.open(file, options).catch((cause: unknown) => {
      throw new HoldfastError('HF_IO', `cannot open the catalog ${file}: ${(cause as Error).message}`, { cause });
    });
    const c = new Catalog(db);
    await c.#db.exec('PRAGMA foreign_keys = OFF;');
    const version = await c.#db.get<{ value: string }>("SELECT value FROM meta WHERE key = 'schema'").catch(() => undefined);
    if (version?.value !== SCHEMA_VERSION) await c.#createSchema();
    return c;
  }

  async #createSchema(): Promise<void> {
    await this.#db.exec(`
      DROP TABLE IF EXISTS meta; DROP TABLE IF EXISTS snapshots; DROP TABLE IF EXISTS entries; DROP TABLE IF EXISTS trees;
      CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
      CREATE TABLE trees (id INTEGER PRIMARY KEY, blob TEXT NOT NULL UNIQUE);
      CREATE TABLE entries (
        tree INTEGER NOT NULL, name TEXT NOT NULL, type TEXT NOT NULL, size INTEGER NOT NULL,
        mode INTEGER NOT NULL, mtime_s INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
        subtree INTEGER, content TEXT, PRIMARY KEY (tree, name)) WITHOUT ROWID;
      CREATE INDEX entries_by_subtree ON entries (subtree);
      CREATE TABLE snapshots (id TEXT PRIMARY KEY, time TEXT NOT NULL, host TEXT NOT NULL, root INTEGER NOT NULL);
      INSERT INTO meta VALUES ('schema', '${SCHEMA_VERSION}');`);
  }

  /** Whether a snapshot is catalogued. */
  async has(snapshot: SnapshotId): Promise<boolean> {
    return (await this.#db.get('SELECT 1 FROM snapshots WHERE id = ?', [snapshot])) !== undefined;
  }

  /**
   * Brings the catalog up to date with the repository. A snapshot whose
   * trees cannot be read (a damaged or missing blob) is left out and named
   * in `damaged`, and the others are catalogued all the same; the next sync
   * tries it again.
   */
  async sync(repo: Repository, options: { signal?: AbortSignal; waitMs?: number } = {}): Promise<{ added: number; removed: number; damaged: { id: SnapshotId; error: string }[] }> {
    const damaged: { id: SnapshotId; error: string }[] = [];
    const missing = async () => {
      const { snapshots, damaged: unreadable } = await listSnapshots(repo);
      // a snapshot file that could not be read this time is not gone
      const present = new Set<string>([...snapshots.map((s) => s.id), ...unreadable.map((d) => d.id)]);
      const known = new Set((await this.#db.all<{ id: string }>('SELECT id FROM snapshots')).map((r) => r.id));
      return { gone: [...known].filter((id) => !present.has(id)), fresh: snapshots.filter((s) => !known.has(s.id)) };
    };
    const first = await missing();
    if (first.gone.length === 0 && first.fresh.length === 0) return { added: 0, removed: 0, damaged };
    // Another process may be syncing too (the engine's job workers): take
    // the write lock first (waiting for it without blocking the thread),
    // then look again at what the repository holds and the catalog lacks.
    await this.#beginImmediate(options);
    let gone: string[] = [];
    let fresh: SnapshotEntry[] = [];
    try {
      ({ gone, fresh } = await missing());
      for (const id of gone) await this.#db.run('DELETE FROM snapshots WHERE id = ?', [id]);
      const treeIds = new Map<string, number>();
      for (const s of fresh) {
        if (options.signal?.aborted) throw options.signal.reason;
        const added: string[] = [];
        await this.#db.exec('SAVEPOINT snapshot');
        try {
          const root = await this.#indexTree(repo, s.snapshot.tree, treeIds, added);
          await this.#db.run('INSERT INTO snapshots (id, time, host, root) VALUES (?, ?, ?, ?)', [s.id, s.snapshot.time, s.snapshot.host, root]);
          await this.#db.exec('RELEASE snapshot');
        } catch (err) {
          if (!['HF_PACK_CORRUPT', 'HF_BLOB_MISSING', 'HF_REPO_CORRUPT', 'HF_STORAGE_NOT_FOUND'].includes(errorCode(err) ?? '')) throw err;
          await this.#db.exec('ROLLBACK TO snapshot; RELEASE snapshot');
          for (const blob of added) treeIds.delete(blob); // their rows went with the savepoint
          damaged.push({ id: s.id, error: (err as Error).message });
        }
      }
      if (gone.length > 0) {
        // Drop listings no remaining snapshot reaches.
        await this.#db.exec(`
          CREATE TEMP TABLE live AS
            WITH RECURSIVE r(id) AS (SELECT root FROM snapshots
              UNION SELECT e.subtree FROM entries e JOIN r ON e.tree = r.id WHERE e.subtree IS NOT NULL)
            SELECT id FROM r;
          DELETE FROM entries WHERE tree NOT IN (SELECT id FROM live);
          DELETE FROM trees WHERE id NOT IN (SELECT id FROM live);
          DROP TABLE live;`);
      }
      await this.#db.exec('COMMIT');
    } catch (err) {
      await this.#db.exec('ROLLBACK').catch(() => undefined);
      throw err;
    }
    return { added: fresh.length - damaged.length, removed: gone.length, damaged };
  }

  /** BEGIN IMMEDIATE, retried while another connection holds the write lock (up to waitMs, default 5 s), between awaits. */
  async #beginImmediate(options: { signal?: AbortSignal; waitMs?: number }): Promise<void> {
    const until = Date.now() + (options.waitMs ?? 5000);
    for (;;) {
      try {
        await this.#db.exec('BEGIN IMMEDIATE');
        return;
      } catch (err) {
        if (errorCode(err) !== 'SQLITE_BUSY' || Date.now() > until) throw err;
        if (options.signal?.aborted) throw options.signal.reason;
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  }

  /** Catalogues a tree and everything below it that is not yet known; returns its row id. */
  async #indexTree(repo: Repository, blob: BlobId, ids: Map<string, number>, added: string[]): Promise<number> {
    const cached = ids.get(blob);
    if (cached !== undefined) return cached;
    const row = await this.#db.get<{ id: number }>('SELECT id FROM trees WHERE blob = ?', [blob]);
    if (row) {
      ids.set(blob, row.id);
      return row.id;
    }
    const nodes: TreeNode[] = await loadTree(repo, blob);
    const subIds: (number | null)[] = [];
    for (const n of nodes) subIds.push(n.type === 'dir' && n.subtree ? await this.#indexTree(repo, n.subtree, ids, added) : null);
    const id = (await this.#db.run('INSERT INTO trees (blob) VALUES (?)', [blob])).lastID;
    ids.set(blob, id);
    added.push(blob);
    for (let i = 0; i < nodes.length; i += ROWS_PER_INSERT) {
      const batch = nodes.slice(i, i + ROWS_PER_INSERT);
      const params: (string | number | null)[] = [];
      batch.forEach((n, k) => {
        params.push(id, displayName(n.name), n.type, n.size, n.mode, n.mtime[0], n.mtime[1], subIds[i + k]!,
          n.content ? contentDigest(n.content) : null);
      });
      await this.#db.run(
        `INSERT OR IGNORE INTO entries (tree, name, type, size, mode, mtime_s, mtime_ns, subtree, content) VALUES ${batch.map(() => '(?,?,?,?,?,?,?,?,?)').join(',')}`,
        params,
      );
    }
    return id;
  }

  /**
   * The entries of a directory in a snapshot (or the entry itself for a
   * file), optionally with everything below. HF_PATH_NOT_FOUND when absent.
   */
  async list(snapshot: SnapshotId, dirPath: string, recursive: boolean): Promise<CatalogEntry[]> {
    const at = await this.#locate(snapshot, dirPath);
    if ('file' in at) return [at.file];
    const { tree, here } = at;
    const out: CatalogEntry[] = [];
    const walk = async (t: number, prefix: string): Promise<void> => {
      for (const e of await this.#db.all<Row>('SELECT * FROM entries WHERE tree = ? ORDER BY name', [t])) {
        const p = `${prefix}/${e.name}`;
        out.push(toEntry(e, p));
        if (recursive && e.type === 'dir' && e.subtree !== null) await walk(e.subtree, p);
      }
    };
    await walk(tree, here);
    return out;
  }

  /**
   * Entries whose name matches a glob (`*`, `?`, `[…]`), in every snapshot
   * that holds them, by path then time. Case-insensitive with ignoreCase.
   */
  /**
   * Finds a path in a snapshot: the directory's tree row (and its path as
   * catalogued), or the file's entry. HF_SNAPSHOT_NOT_FOUND, HF_PATH_NOT_FOUND.
   */
  async #locate(snapshot: SnapshotId, dirPath: string): Promise<{ tree: number; here: string } | { file: CatalogEntry }> {
    const snap = await this.#db.get<{ root: number }>('SELECT root FROM snapshots WHERE id = ?', [snapshot]);
    if (!snap) {
      throw new HoldfastError('HF_SNAPSHOT_NOT_FOUND',
        `snapshot ${shortId(snapshot)} is not in the catalog: its trees could not be read (run a verify, or \`holdfast check\`), or it is still being catalogued (try again in a minute)`);
    }
    let tree = snap.root;
    const parts = splitPath(dirPath).map((b) => b.toString('utf8'));
    let here = '';
    for (let i = 0; i < parts.length; i++) {
      const e = await this.#db.get<Row>('SELECT * FROM entries WHERE tree = ? AND name = ?', [tree, parts[i]]);
      if (!e) {
        throw new HoldfastError('HF_PATH_NOT_FOUND', `${dirPath} is not in snapshot ${shortId(snapshot)}`);
      }
      here += `/${e.name}`;
      if (e.type !== 'dir') {
        if (i === parts.length - 1) return { file: toEntry(e, here) };
        throw new HoldfastError('HF_PATH_NOT_FOUND', `${dirPath} is not in snapshot ${shortId(snapshot)} (${here} is not a directory)`);
      }
      tree = e.subtree!;
    }
    return { tree, here };
  }

  /**
   * One page of a directory's entries in name order, after the name
   * `after` (exclusive): an index range scan, as fast for the last page of
   * 100,000 entries as for the first. `next` is the name to continue after.
   */
  async listPage(snapshot: SnapshotId, dirPath: string, options: { after?: string; limit?: number } = {}): Promise<{ path: string; entries: CatalogEntry[]; next: string | null }> {
    const at = await this.#locate(snapshot, dirPath);
    if ('file' in at) return { path: at.file.path, entries: [at.file], next: null };
    const limit = Math.max(1, Math.min(options.limit ?? 200, 5000));
    const rows = options.after === undefined
      ? await this.#db.all<Row>('SELECT * FROM entries WHERE tree = ? ORDER BY name LIMIT ?', [at.tree, limit + 1])
      : await this.#db.all<Row>('SELECT * FROM entries WHERE tree = ? AND name > ? ORDER BY name LIMIT ?', [at.tree, options.after, limit + 1]);
    const more = rows.length > limit;
    const entries = rows.slice(0, limit).map((e) => toEntry(e, `${at.here}/${e.name}`));
    return { path: at.here || '/', entries, next: more ? entries.at(-1)!.name : null };
  }

  /** Every version of a path: per snapshot (oldest first), its entry there, or null where it is absent. */
  async versions(filePath: string): Promise<{ snapshot: SnapshotId; time: string; entry: CatalogEntry | null }[]> {
    const snaps = await this.#db.all<{ id: string; time: string }>('SELECT id, time FROM snapshots ORDER BY time');
    const out: { snapshot: SnapshotId; time: string; entry: CatalogEntry | null }[] = [];
    for (const s of snaps) {
      let entry: CatalogEntry | null = null;
      try {
        const at = await this.#locate(s.id as SnapshotId, filePath);
        entry = 'file' in at ? at.file : { path: at.here, name: at.here.split('/').pop() ?? '', type: 'dir', size: 0, mode: 0, mtime: [0, 0], content: null };
      } catch (err) {
        if (!(err instanceof HoldfastError) || err.code !== 'HF_PATH_NOT_FOUND') throw err;
      }
      out.push({ snapshot: s.id as SnapshotId, time: s.time, entry });
    }
    return out;
  }

  /**
   * What changed in one directory from snapshot a to b: names only in b
   * (added), only in a (removed), and in both with other content, size,
   * mode or mtime (a directory: another listing below it).
   */
  async diff(a: SnapshotId, b: SnapshotId, dirPath: string): Promise<{ added: CatalogEntry[]; removed: CatalogEntry[]; changed: { before: CatalogEntry; after: CatalogEntry }[] }> {
    const rows = async (snap: SnapshotId) => {
      try {
        const at = await this.#locate(snap, dirPath);
        if ('file' in at) return { here: at.file.path, rows: [] as Row[], file: at.file };
        return { here: at.here, rows: await this.#db.all<Row>('SELECT * FROM entries WHERE tree = ? ORDER BY name', [at.tree]), file: null };
      } catch (err) {
        if (err instanceof HoldfastError && err.code === 'HF_PATH_NOT_FOUND') return { here: dirPath, rows: [] as Row[], file: null };
        throw err;
      }
    };
    const [ra, rb] = await Promise.all([rows(a), rows(b)]);
    const before = new Map(ra.rows.map((r) => [r.name, r]));
    const after = new Map(rb.rows.map((r) => [r.name, r]));
    const added: CatalogEntry[] = [];
    const removed: CatalogEntry[] = [];
    const changed: { before: CatalogEntry; after: CatalogEntry }[] = [];
    for (const [name, r] of after) {
      const o = before.get(name);
      if (!o) added.push(toEntry(r, `${rb.here}/${name}`));
      else if (o.type !== r.type || o.size !== r.size || o.mode !== r.mode || o.mtime_s !== r.mtime_s || o.mtime_ns !== r.mtime_ns ||
        o.content !== r.content || o.subtree !== r.subtree) {
        changed.push({ before: toEntry(o, `${ra.here}/${name}`), after: toEntry(r, `${rb.here}/${name}`) });
      }
    }
    for (const [name, r] of before) if (!after.has(name)) removed.push(toEntry(r, `${ra.here}/${name}`));
    return { added, removed, changed };
  }

  async find(pattern: string, options: { ignoreCase?: boolean; snapshot?: SnapshotId; limit?: number } = {}): Promise<FindMatch[]> {
    const test = options.ignoreCase ? 'lower(e.name) GLOB lower(?)' : 'e.name GLOB ?';
    const rows = await this.#db.all<Row & { snapshot: string; time: string; path: string }>(`
      WITH RECURSIVE up(tree, path, name, type, size, mode, mtime_s, mtime_ns, subtree, content) AS (
        SELECT e.tree, '/' || e.name, e.name, e.type, e.size, e.mode, e.mtime_s, e.mtime_ns, e.subtree, e.content
          FROM entries e WHERE ${test}
        UNION ALL
        SELECT p.tree, '/' || p.name || up.path, up.name, up.type, up.size, up.mode, up.mtime_s, up.mtime_ns, up.subtree, up.content
          FROM entries p JOIN up ON p.subtree = up.tree)
      SELECT s.id AS snapshot, s.time AS time, up.* FROM up JOIN snapshots s ON s.root = up.tree
      ${options.snapshot ? 'WHERE s.id = ?' : ''}
      ORDER BY up.path, s.time LIMIT ?`,
    [pattern, ...(options.snapshot ? [options.snapshot] : []), options.limit ?? 1_000_000]);
    return rows.map((r) => ({ ...toEntry(r, r.path), snapshot: r.snapshot as SnapshotId, time: r.time }));
  }

  close(): Promise<void> {
    return this.#db.close();
  }
}

interface Row {
  tree: number;
  name: string;
  type: NodeType;
  size: number;
  mode: number;
  mtime_s: number;
  mtime_ns: number;
  subtree: number | null;
  content: string | null;
}

function toEntry(r: Row, p: string): CatalogEntry {
  return { path: p, name: r.name, type: r.type, size: r.size, mode: r.mode, mtime: [r.mtime_s, r.mtime_ns], content: r.content };
}

function contentDigest(content: readonly string[]): string {
  const h = createHash('sha256');
  for (const c of content) h.update(c);
  return h.digest('hex').slice(0, 16);
}
