import { DatabaseSync, type SQLInputValue, type StatementSync } from 'node:sqlite';

export interface RunResult {
  lastID: number;
  changes: number;
}

/** SQLite's primary result codes by number, for errors (`code`, as the sqlite3 package names them). */
const RESULT_CODES: Record<number, string> = {
  1: 'SQLITE_ERROR', 2: 'SQLITE_INTERNAL', 3: 'SQLITE_PERM', 4: 'SQLITE_ABORT', 5: 'SQLITE_BUSY', 6: 'SQLITE_LOCKED',
  7: 'SQLITE_NOMEM', 8: 'SQLITE_READONLY', 9: 'SQLITE_INTERRUPT', 10: 'SQLITE_IOERR', 11: 'SQLITE_CORRUPT',
  12: 'SQLITE_NOTFOUND', 13: 'SQLITE_FULL', 14: 'SQLITE_CANTOPEN', 15: 'SQLITE_PROTOCOL', 17: 'SQLITE_SCHEMA',
  18: 'SQLITE_TOOBIG', 19: 'SQLITE_CONSTRAINT', 20: 'SQLITE_MISMATCH', 21: 'SQLITE_MISUSE', 26: 'SQLITE_NOTADB',
};

/** Prepared statements kept per database (least recently used first out). */
const MAX_STATEMENTS = 256;

/** The driver's error with SQLite's result code name as `code` (SQLITE_CONSTRAINT, SQLITE_BUSY, …). */
function sqliteError(err: unknown): unknown {
  const e = err as { errcode?: unknown; code?: unknown };
  if (err instanceof Error && typeof e.errcode === 'number') {
    Object.defineProperty(err, 'code', { value: RESULT_CODES[e.errcode & 0xff] ?? `SQLITE_${e.errcode & 0xff}`, configurable: true, writable: true });
  }
  return err;
}

function bind(params: unknown[]): SQLInputValue[] {
  return params.map((p) => {
    if (p === undefined) return null;
    if (typeof p === 'boolean') return p ? 1 : 0;
    if (p instanceof Date) return p.getTime();
    return p as SQLInputValue;
  });
}

/** Rows with BLOB columns as Buffers (the driver gives Uint8Arrays) and ordinary prototypes. */
function row<T>(r: Record<string, unknown> | undefined): T | undefined {
  if (r === undefined) return undefined;
  const o: Record<string, unknown> = {};
  for (const k in r) {
    const v = r[k];
    o[k] = v instanceof Uint8Array ? Buffer.from(v.buffer, v.byteOffset, v.byteLength) : v;
  }
  return o as T;
}

/**
 * One SQLite database, promise-shaped, on Node's built-in SQLite
 * (`node:sqlite`; docs/DESIGN.md, "Appliance", says why not the sqlite3
 * package). Each call runs to completion when it is made, in the order
 * made; the queries the engine makes are small indexed lookups, a few
 * microseconds each. `transaction` MUST NOT be nested, and nothing else
 * should be issued on the same database while one runs (its statements
 * would join it): callers that need concurrent transactions queue them
 * (`transaction` does, per database).
 */
export class SqliteDb {
  readonly file: string;
  readonly #db: DatabaseSync;
  #queue: Promise<unknown> = Promise.resolve();
  readonly #statements = new Map<string, StatementSync>();

  private constructor(db: DatabaseSync, file: string) {
    this.#db = db;
    this.file = file;
  }

  /** Opens (creating) a database file in WAL mode; a lock held elsewhere is waited for up to busyTimeoutMs (default 5 s). */
  static async open(file: string, options: { busyTimeoutMs?: number } = {}): Promise<SqliteDb> {
    let db: DatabaseSync;
    try {
      db = new DatabaseSync(file, { timeout: options.busyTimeoutMs ?? 5000 });
    } catch (err) {
      throw sqliteError(err);
    }
    const s = new SqliteDb(db, file);
    await s.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;');
    return s;
  }

  /** The prepared statement for sql; the least recently used one goes when MAX_STATEMENTS are kept. */
  #statement(sql: string): StatementSync {
    let st = this.#statements.get(sql);
    if (st) {
      this.#statements.delete(sql); // most recently used last
    } else {
      st = this.#db.prepare(sql);
      if (this.#statements.size >= MAX_STATEMENTS) this.#statements.delete(this.#statements.keys().next().value!);
    }
    this.#statements.set(sql, st);
    return st;
  }

  exec(sql: string): Promise<void> {
    try {
      this.#db.exec(sql);
      return Promise.resolve();
    } catch (err) {
      return Promise.reject(sqliteError(err));
    }
  }

  run(sql: string, params: unknown[] = []): Promise<RunResult> {
    try {
      const r = this.#statement(sql).run(...bind(params));
      return Promise.resolve({ lastID: Number(r.lastInsertRowid), changes: Number(r.changes) });
    } catch (err) {
      return Promise.reject(sqliteError(err));
    }
  }

  get<T>(sql: string, params: unknown[] = []): Promise<T | undefined> {
    try {
      return Promise.resolve(row<T>(this.#statement(sql).get(...bind(params)) as Record<string, unknown> | undefined));
    } catch (err) {
      return Promise.reject(sqliteError(err));
    }
  }

  all<T>(sql: string, params: unknown[] = []): Promise<T[]> {
    try {
      return Promise.resolve((this.#statement(sql).all(...bind(params)) as Record<string, unknown>[]).map((r) => row<T>(r)!));
    } catch (err) {
      return Promise.reject(sqliteError(err));
    }
  }

  /**
   * Runs fn inside BEGIN IMMEDIATE … COMMIT (ROLLBACK when it throws).
   * Transactions on one SqliteDb run one after another.
   */
  transaction<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.#queue.then(async () => {
      await this.exec('BEGIN IMMEDIATE');
      try {
        const r = await fn();
        await this.exec('COMMIT');
        return r;
      } catch (err) {
        await this.exec('ROLLBACK').catch(() => undefined);
        throw err;
      }
    });
    this.#queue = next.catch(() => undefined);
    return next;
  }

  close(): Promise<void> {
    this.#statements.clear();
    try {
      if (this.#db.isOpen) this.#db.close();
      return Promise.resolve();
    } catch (err) {
      return Promise.reject(sqliteError(err));
    }
  }
}
