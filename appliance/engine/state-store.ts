import { HoldfastError } from '../errors/index.ts';
import type { RetentionPolicy } from '../snapshot/index.ts';
import type { SourceSpec } from '../sources/index.ts';
import { SqliteDb } from '../sqlite/index.ts';
import type { ApplianceKey } from './secrets.ts';

/** Bumped with every schema change; an older database is migrated forward in open(). */
const SCHEMA_VERSION = 1;

export type Role = 'admin' | 'operator' | 'viewer';
export const ROLES: readonly Role[] = ['admin', 'operator', 'viewer'];

export type JobKind = 'backup' | 'replicate' | 'prune' | 'verify' | 'restore';
export const JOB_KINDS: readonly JobKind[] = ['backup', 'replicate', 'prune', 'verify', 'restore'];
export type JobState = 'queued' | 'running' | 'done' | 'failed' | 'cancelled';

export interface UserRecord {
  name: string;
  role: Role;
  /** scrypt record: "scrypt$N$r$p$salt$hash" (base64). */
  password: string;
  created: string;
  lockedUntil: number;
}

/** The secrets of a source, sealed in the database. */
export interface SourceSecret {
  /** SMB password. */
  password?: string;
  /** SFTP private key (PEM / OpenSSH text). */
  identityKey?: string;
  /** SFTP host key pin, "SHA256:…". */
  hostKey?: string;
}

export interface SourceRecord {
  id: number;
  name: string;
  spec: SourceSpec;
  created: string;
  updated: string;
}

export interface ScheduleRecord {
  id: number;
  job: JobKind;
  /** The source (backup) or target (replicate, null: all) it is for. */
  subject: string | null;
  /** Five-field cron expression (minute hour day month weekday), local time. */
  cron: string;
  enabled: boolean;
  /** When it last fired (ms since the epoch). */
  lastFire: number | null;
}

export interface JobRecord {
  id: number;
  kind: JobKind;
  subject: string | null;
  state: JobState;
  requestedBy: string;
  created: number;
  started: number | null;
  finished: number | null;
  attempts: number;
  params: Record<string, unknown>;
  progress: Record<string, unknown> | null;
  result: Record<string, unknown> | null;
  error: { code: string; message: string; details?: Record<string, unknown> } | null;
}

export interface AuditRecord {
  id: number;
  at: number;
  user: string;
  action: string;
  detail: Record<string, unknown>;
}

interface JobRow {
  id: number; kind: JobKind; subject: string | null; state: JobState; requested_by: string; created: number;
  started: number | null; finished: number | null; attempts: number; params: string; progress: string | null;
  result: string | null; error: string | null;
}

const json = <T>(s: string | null): T | null => (s === null ? null : JSON.parse(s) as T);

function jobOf(r: JobRow): JobRecord {
  return {
    id: r.id, kind: r.kind, subject: r.subject, state: r.state, requestedBy: r.requested_by, created: r.created,
    started: r.started, finished: r.finished, attempts: r.attempts, params: json(r.params) ?? {},
    progress: json(r.progress), result: json(r.result), error: json(r.error),
  };
}

/**
 * The engine's state (docs/DESIGN.md, "Appliance state"): users, sessions,
 * sources (their secrets sealed with the appliance key), schedules, the
 * retention policy, protected snapshots, jobs, the audit log and the
 * storage history, in one SQLite database. Only the engine opens it.
 */
export class StateStore {
  readonly db: SqliteDb;
  readonly #key: ApplianceKey;

  private constructor(db: SqliteDb, key: ApplianceKey) {
    this.db = db;
    this.#key = key;
  }

  static async open(file: string, key: ApplianceKey): Promise<StateStore> {
    const db = await SqliteDb.open(file).catch((cause: unknown) => {
      throw new HoldfastError('HF_IO', `cannot open the state database ${file}: ${(cause as Error).message}`, { cause });
    });
    const s = new StateStore(db, key);
    await db.exec('PRAGMA foreign_keys = ON;');
    const version = await db.get<{ value: string }>("SELECT value FROM meta WHERE key = 'schema'").catch(() => undefined);
    if (version === undefined) await s.#create();
    else if (Number(version.value) > SCHEMA_VERSION) {
      throw new HoldfastError('HF_UNSUPPORTED_VERSION',
        `the state database ${file} has schema ${version.value}; this engine knows ${SCHEMA_VERSION}: run the newer release`);
    }
    return s;
  }

  async #create(): Promise<void> {
    await this.db.exec(`
      CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
      CREATE TABLE users (name TEXT PRIMARY KEY, role TEXT NOT NULL CHECK (role IN ('admin','operator','viewer')),
        password TEXT NOT NULL, created TEXT NOT NULL, locked_until INTEGER NOT NULL DEFAULT 0);
      CREATE TABLE login_failures (name TEXT NOT NULL, at INTEGER NOT NULL);
      CREATE INDEX login_failures_by_name ON login_failures (name, at);
      CREATE TABLE sessions (token TEXT PRIMARY KEY, user TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
        csrf TEXT NOT NULL, created INTEGER NOT NULL, seen INTEGER NOT NULL);
      CREATE TABLE sources (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, spec TEXT NOT NULL, secret BLOB,
        created TEXT NOT NULL, updated TEXT NOT NULL);
      CREATE TABLE schedules (id INTEGER PRIMARY KEY, job TEXT NOT NULL, subject TEXT, cron TEXT NOT NULL,
        enabled INTEGER NOT NULL DEFAULT 1, last_fire INTEGER);
      CREATE TABLE protected (snapshot TEXT PRIMARY KEY, by TEXT NOT NULL, at TEXT NOT NULL);
      CREATE TABLE jobs (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, subject TEXT, state TEXT NOT NULL,
        requested_by TEXT NOT NULL, created INTEGER NOT NULL, started INTEGER, finished INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0, params TEXT NOT NULL DEFAULT '{}', progress TEXT, result TEXT, error TEXT);
      CREATE INDEX jobs_by_state ON jobs (state);
      CREATE TABLE audit (id INTEGER PRIMARY KEY, at INTEGER NOT NULL, user TEXT NOT NULL, action TEXT NOT NULL, detail TEXT NOT NULL);
      CREATE TABLE storage_history (at INTEGER PRIMARY KEY, repo_bytes INTEGER NOT NULL, logical_bytes INTEGER NOT NULL,
        snapshots INTEGER NOT NULL);
      INSERT INTO meta VALUES ('schema', '${SCHEMA_VERSION}');`);
  }

  close(): Promise<void> {
    return this.db.close();
  }

  // ---- meta and sealed values ----

  async getMeta(key: string): Promise<string | null> {
    return (await this.db.get<{ value: string }>('SELECT value FROM meta WHERE key = ?', [key]))?.value ?? null;
  }

  async setMeta(key: string, value: string | null): Promise<void> {
    if (value === null) await this.db.run('DELETE FROM meta WHERE key = ?', [key]);
    else await this.db.run('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value', [key, value]);
  }

  async getSealed<T>(key: string): Promise<T | null> {
    const v = await this.getMeta(`sealed:${key}`);
    return v === null ? null : this.#key.open<T>(`meta:${key}`, Buffer.from(v, 'base64'));
  }

  async setSealed(key: string, value: unknown): Promise<void> {
    await this.setMeta(`sealed:${key}`, value === null ? null : this.#key.seal(`meta:${key}`, value).toString('base64'));
  }

  // ---- users ----

  async users(): Promise<UserRecord[]> {
    const rows = await this.db.all<{ name: string; role: Role; password: string; created: string; locked_until: number }>(
      'SELECT * FROM users ORDER BY name');
    return rows.map((r) => ({ name: r.name, role: r.role, password: r.password, created: r.created, lockedUntil: r.locked_until }));
  }

  async user(name: string): Promise<UserRecord | null> {
    return (await this.users()).find((u) => u.name === name) ?? null;
  }

  async addUser(u: Omit<UserRecord, 'lockedUntil'>): Promise<void> {
    try {
      await this.db.run('INSERT INTO users (name, role, password, created) VALUES (?, ?, ?, ?)', [u.name, u.role, u.password, u.created]);
    } catch (err) {
      if ((err as { code?: string }).code === 'SQLITE_CONSTRAINT') throw new HoldfastError('HF_CONFLICT', `a user named ${u.name} exists`);
      throw err;
    }
  }

  async updateUser(name: string, change: { role?: Role; password?: string; lockedUntil?: number }): Promise<void> {
    const u = await this.user(name);
    if (!u) throw new HoldfastError('HF_NOT_FOUND', `no user named ${name}`);
    await this.db.run('UPDATE users SET role = ?, password = ?, locked_until = ? WHERE name = ?',
      [change.role ?? u.role, change.password ?? u.password, change.lockedUntil ?? u.lockedUntil, name]);
  }

  async removeUser(name: string): Promise<void> {
    await this.db.run('DELETE FROM users WHERE name = ?', [name]);
  }

  async recordLoginFailure(name: string, at: number): Promise<number> {
    await this.db.run('INSERT INTO login_failures (name, at) VALUES (?, ?)', [name, at]);
    await this.db.run('DELETE FROM login_failures WHERE at < ?', [at - 3_600_000]);
    return (await this.db.get<{ n: number }>('SELECT COUNT(*) AS n FROM login_failures WHERE name = ? AND at > ?', [name, at - 60_000]))!.n;
  }

  async clearLoginFailures(name: string): Promise<void> {
    await this.db.run('DELETE FROM login_failures WHERE name = ?', [name]);
  }

  // ---- sessions (tokens are stored as their SHA-256) ----

  async addSession(tokenHash: string, user: string, csrf: string, now: number): Promise<void> {
    await this.db.run('INSERT INTO sessions (token, user, csrf, created, seen) VALUES (?, ?, ?, ?, ?)', [tokenHash, user, csrf, now, now]);
  }

  async session(tokenHash: string): Promise<{ user: string; csrf: string; created: number; seen: number } | null> {
    return (await this.db.get<{ user: string; csrf: string; created: number; seen: number }>(
      'SELECT user, csrf, created, seen FROM sessions WHERE token = ?', [tokenHash])) ?? null;
  }

  async touchSession(tokenHash: string, now: number): Promise<void> {
    await this.db.run('UPDATE sessions SET seen = ? WHERE token = ?', [now, tokenHash]);
  }

  async removeSession(tokenHash: string): Promise<void> {
    await this.db.run('DELETE FROM sessions WHERE token = ?', [tokenHash]);
  }

  async removeSessionsOf(user: string): Promise<void> {
    await this.db.run('DELETE FROM sessions WHERE user = ?', [user]);
  }

  async expireSessions(createdBefore: number, seenBefore: number): Promise<void> {
    await this.db.run('DELETE FROM sessions WHERE created < ? OR seen < ?', [createdBefore, seenBefore]);
  }

  // ---- sources ----

  async sources(): Promise<SourceRecord[]> {
    const rows = await this.db.all<{ id: number; name: string; spec: string; created: string; updated: string }>(
      'SELECT id, name, spec, created, updated FROM sources ORDER BY name');
    return rows.map((r) => ({ id: r.id, name: r.name, spec: JSON.parse(r.spec) as SourceSpec, created: r.created, updated: r.updated }));
  }

  async source(name: string): Promise<SourceRecord | null> {
    return (await this.sources()).find((s) => s.name === name) ?? null;
  }

  async sourceSecret(name: string): Promise<SourceSecret> {
    const row = await this.db.get<{ secret: Buffer | null }>('SELECT secret FROM sources WHERE name = ?', [name]);
    if (!row) throw new HoldfastError('HF_NOT_FOUND', `no source named ${name}`);
    return row.secret ? this.#key.open<SourceSecret>(`source:${name}`, row.secret) : {};
  }

  /** Adds or replaces a source; secret undefined keeps the stored one. */
  async putSource(name: string, spec: SourceSpec, secret: SourceSecret | undefined, now: string): Promise<void> {
    const sealed = secret === undefined ? undefined : this.#key.seal(`source:${name}`, secret);
    const existing = await this.source(name);
    if (existing) {
      if (sealed === undefined) await this.db.run('UPDATE sources SET spec = ?, updated = ? WHERE name = ?', [JSON.stringify(spec), now, name]);
      else await this.db.run('UPDATE sources SET spec = ?, secret = ?, updated = ? WHERE name = ?', [JSON.stringify(spec), sealed, now, name]);
    } else {
      await this.db.run('INSERT INTO sources (name, spec, secret, created, updated) VALUES (?, ?, ?, ?, ?)',
        [name, JSON.stringify(spec), sealed ?? null, now, now]);
    }
  }

  async removeSource(name: string): Promise<void> {
    await this.db.run('DELETE FROM sources WHERE name = ?', [name]);
    await this.db.run("DELETE FROM schedules WHERE job = 'backup' AND subject = ?", [name]);
  }

  // ---- schedules ----

  async schedules(): Promise<ScheduleRecord[]> {
    const rows = await this.db.all<{ id: number; job: JobKind; subject: string | null; cron: string; enabled: number; last_fire: number | null }>(
      'SELECT * FROM schedules ORDER BY id');
    return rows.map((r) => ({ id: r.id, job: r.job, subject: r.subject, cron: r.cron, enabled: r.enabled === 1, lastFire: r.last_fire }));
  }

  async addSchedule(s: Omit<ScheduleRecord, 'id'>): Promise<number> {
    return (await this.db.run('INSERT INTO schedules (job, subject, cron, enabled, last_fire) VALUES (?, ?, ?, ?, ?)',
      [s.job, s.subject, s.cron, s.enabled ? 1 : 0, s.lastFire])).lastID;
  }

  async updateSchedule(id: number, s: Partial<Omit<ScheduleRecord, 'id'>>): Promise<void> {
    const cur = (await this.schedules()).find((x) => x.id === id);
    if (!cur) throw new HoldfastError('HF_NOT_FOUND', `no schedule ${id}`);
    const n = { ...cur, ...s };
    await this.db.run('UPDATE schedules SET job = ?, subject = ?, cron = ?, enabled = ?, last_fire = ? WHERE id = ?',
      [n.job, n.subject, n.cron, n.enabled ? 1 : 0, n.lastFire, id]);
  }

  async removeSchedule(id: number): Promise<void> {
    await this.db.run('DELETE FROM schedules WHERE id = ?', [id]);
  }

  // ---- retention and protected snapshots ----

  async retention(): Promise<RetentionPolicy | null> {
    const v = await this.getMeta('retention');
    return v === null ? null : JSON.parse(v) as RetentionPolicy;
  }

  async setRetention(p: RetentionPolicy | null): Promise<void> {
    await this.setMeta('retention', p === null ? null : JSON.stringify(p));
  }

  async protectedSnapshots(): Promise<string[]> {
    return (await this.db.all<{ snapshot: string }>('SELECT snapshot FROM protected ORDER BY snapshot')).map((r) => r.snapshot);
  }

  async setProtected(snapshot: string, on: boolean, by: string, at: string): Promise<void> {
    if (on) await this.db.run('INSERT OR IGNORE INTO protected (snapshot, by, at) VALUES (?, ?, ?)', [snapshot, by, at]);
    else await this.db.run('DELETE FROM protected WHERE snapshot = ?', [snapshot]);
  }

  // ---- jobs ----

  async addJob(j: { kind: JobKind; subject: string | null; requestedBy: string; created: number; params: Record<string, unknown> }): Promise<JobRecord> {
    const id = (await this.db.run("INSERT INTO jobs (kind, subject, state, requested_by, created, params) VALUES (?, ?, 'queued', ?, ?, ?)",
      [j.kind, j.subject, j.requestedBy, j.created, JSON.stringify(j.params)])).lastID;
    return (await this.job(id))!;
  }

  async job(id: number): Promise<JobRecord | null> {
    const r = await this.db.get<JobRow>('SELECT * FROM jobs WHERE id = ?', [id]);
    return r ? jobOf(r) : null;
  }

  async jobs(options: { states?: JobState[]; kind?: JobKind; subject?: string; limit?: number; before?: number } = {}): Promise<JobRecord[]> {
    const where: string[] = [];
    const params: unknown[] = [];
    if (options.states) {
      where.push(`state IN (${options.states.map(() => '?').join(',')})`);
      params.push(...options.states);
    }
    if (options.kind) {
      where.push('kind = ?');
      params.push(options.kind);
    }
    if (options.subject !== undefined) {
      where.push('subject = ?');
      params.push(options.subject);
    }
    if (options.before !== undefined) {
      where.push('id < ?');
      params.push(options.before);
    }
    const rows = await this.db.all<JobRow>(
      `SELECT * FROM jobs ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id DESC LIMIT ?`, [...params, options.limit ?? 100]);
    return rows.map(jobOf);
  }

  async updateJob(id: number, change: Partial<Pick<JobRecord, 'state' | 'started' | 'finished' | 'attempts' | 'progress' | 'result' | 'error'>>): Promise<void> {
    const sets: string[] = [];
    const params: unknown[] = [];
    for (const [k, v] of Object.entries(change)) {
      sets.push(`${k} = ?`); // keys are the columns' names (typed above, never from input)
      params.push(k === 'progress' || k === 'result' || k === 'error' ? (v === null ? null : JSON.stringify(v)) : v);
    }
    if (sets.length) await this.db.run(`UPDATE jobs SET ${sets.join(', ')} WHERE id = ?`, [...params, id]);
  }

  // ---- audit ----

  async audit(user: string, action: string, detail: Record<string, unknown>, at: number): Promise<void> {
    await this.db.run('INSERT INTO audit (at, user, action, detail) VALUES (?, ?, ?, ?)', [at, user, action, JSON.stringify(detail)]);
  }

  async auditLog(limit = 200, before?: number): Promise<AuditRecord[]> {
    const rows = await this.db.all<{ id: number; at: number; user: string; action: string; detail: string }>(
      `SELECT * FROM audit ${before !== undefined ? 'WHERE id < ?' : ''} ORDER BY id DESC LIMIT ?`,
      before !== undefined ? [before, limit] : [limit]);
    return rows.map((r) => ({ id: r.id, at: r.at, user: r.user, action: r.action, detail: JSON.parse(r.detail) as Record<string, unknown> }));
  }

  // ---- storage history (for the dashboard's charts) ----

  async recordStorage(at: number, repoBytes: number, logicalBytes: number, snapshots: number): Promise<void> {
    await this.db.run('INSERT OR REPLACE INTO storage_history (at, repo_bytes, logical_bytes, snapshots) VALUES (?, ?, ?, ?)',
      [at, repoBytes, logicalBytes, snapshots]);
  }

  async storageHistory(since: number): Promise<{ at: number; repoBytes: number; logicalBytes: number; snapshots: number }[]> {
    const rows = await this.db.all<{ at: number; repo_bytes: number; logical_bytes: number; snapshots: number }>(
      'SELECT * FROM storage_history WHERE at >= ? ORDER BY at', [since]);
    return rows.map((r) => ({ at: r.at, repoBytes: r.repo_bytes, logicalBytes: r.logical_bytes, snapshots: r.snapshots }));
  }
}
