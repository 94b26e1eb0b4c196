import sqlite3 from 'sqlite3';

export interface RunResult {
  lastID: number;
  changes: number;
}

/**
 * One SQLite database, promise-shaped. Statements run in the order they are
 * issued (sqlite3 serializes them on one connection). `transaction` MUST
 * NOT be nested, and nothing else should be issued on the same database
 * while one runs (its statements would join it): callers that need
 * concurrent transactions queue them (`transaction` does, per database).
 */
export class SqliteDb {
  readonly file: string;
  readonly #db: sqlite3.Database;
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(db: sqlite3.Database, file: string) {
    this.#db = db;
    this.file = file;
  }

  /** Opens (creating) a database file in WAL mode with a 5 s busy timeout. */
  static async open(file: string): Promise<SqliteDb> {
    const db = await new Promise<sqlite3.Database>((resolve, reject) => {
      const d = new sqlite3.Database(file, (err) => (err ? reject(err) : resolve(d)));
    });
    db.configure('busyTimeout', 5000);
    const s = new SqliteDb(db, file);
    await s.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;');
    return s;
  }

  exec(sql: string): Promise<void> {
    return new Promise((resolve, reject) => this.#db.exec(sql, (err) => (err ? reject(err) : resolve())));
  }

  run(sql: string, params: unknown[] = []): Promise<RunResult> {
    return new Promise((resolve, reject) => {
      this.#db.run(sql, params, function done(this: sqlite3.RunResult, err: Error | null) {
        if (err) reject(err);
        else resolve({ lastID: this.lastID, changes: this.changes });
      });
    });
  }

  get<T>(sql: string, params: unknown[] = []): Promise<T | undefined> {
    return new Promise((resolve, reject) => this.#db.get(sql, params, (err, row) => (err ? reject(err) : resolve(row as T | undefined))));
  }

  all<T>(sql: string, params: unknown[] = []): Promise<T[]> {
    return new Promise((resolve, reject) => this.#db.all(sql, params, (err, rows) => (err ? reject(err) : resolve(rows as T[]))));
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
    return new Promise((resolve, reject) => this.#db.close((err) => (err ? reject(err) : resolve())));
  }
}
