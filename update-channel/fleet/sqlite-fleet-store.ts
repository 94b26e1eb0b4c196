import { HoldfastError } from '../../appliance/errors/index.ts';
import { SqliteDb } from '../../appliance/sqlite/index.ts';
import type {
  BoxName, BoxRecord, CertificateRecord, CommandRecord, EscrowRecord, FleetStore, ReleaseRecord, TokenRecord, UpdateReport,
} from './fleet-store.ts';

const SCHEMA_VERSION = 1;

type Row = Record<string, unknown>;
const json = <T>(v: unknown): T | null => (typeof v === 'string' ? JSON.parse(v) as T : null);
const num = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v));

const tokenOf = (r: Row): TokenRecord => ({
  hash: String(r.hash), created: Number(r.created), expires: Number(r.expires), used: num(r.used),
  usedBy: (r.used_by as string | null) ?? null, replaces: (r.replaces as string | null) ?? null, note: String(r.note),
});
const boxOf = (r: Row): BoxRecord => ({
  name: String(r.name), enrolled: Number(r.enrolled), replaced: num(r.replaced), revoked: num(r.revoked),
  hostname: String(r.hostname), channel: String(r.channel), version: (r.version as string | null) ?? null,
  lastHeartbeat: num(r.last_heartbeat), report: json(r.report),
});
const certOf = (r: Row): CertificateRecord => ({
  serial: String(r.serial), box: String(r.box), issued: Number(r.issued), notAfter: Number(r.not_after), state: r.state as CertificateRecord['state'],
});
const commandOf = (r: Row): CommandRecord => ({
  id: Number(r.id), box: String(r.box), kind: r.kind as CommandRecord['kind'], args: json(r.args) ?? {}, created: Number(r.created),
  by: String(r.by), state: r.state as CommandRecord['state'], sent: num(r.sent), finished: num(r.finished), result: json(r.result),
});
const releaseOf = (r: Row): ReleaseRecord => ({
  channel: String(r.channel), version: String(r.version), published: Number(r.published), percent: Number(r.percent),
  halted: num(r.halted), haltReason: (r.halt_reason as string | null) ?? null,
});

/**
 * The fleet store in one SQLite file (node:sqlite through appliance/sqlite,
 * WAL): the default, for a fleet of thousands of boxes on one vendor server.
 * The vendor commands (`npm run channel -- token …`) open the same file
 * beside the running service; SQLite's locking serializes them.
 */
export class SqliteFleetStore implements FleetStore {
  readonly #db: SqliteDb;

  private constructor(db: SqliteDb) {
    this.#db = db;
  }

  static async open(file: string): Promise<SqliteFleetStore> {
    const db = await SqliteDb.open(file, { busyTimeoutMs: 10_000 }).catch((cause: unknown) => {
      throw new HoldfastError('HF_IO', `cannot open the fleet database ${file}: ${(cause as Error).message}`, { cause });
    });
    const s = new SqliteFleetStore(db);
    await db.transaction(async () => {
      await db.exec('CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)');
      const v = await db.get<{ value: string }>("SELECT value FROM meta WHERE key = 'schema'");
      if (v === undefined) await s.#create();
      else if (Number(v.value) > SCHEMA_VERSION) {
        throw new HoldfastError('HF_UNSUPPORTED_VERSION', `the fleet database ${file} has schema ${v.value}; this service knows ${SCHEMA_VERSION}: run the newer release`);
      }
    });
    return s;
  }

  async #create(): Promise<void> {
    await this.#db.exec(`
      CREATE TABLE tokens (hash TEXT PRIMARY KEY, created INTEGER NOT NULL, expires INTEGER NOT NULL, used INTEGER,
        used_by TEXT, replaces TEXT, note TEXT NOT NULL DEFAULT '');
      CREATE TABLE boxes (name TEXT PRIMARY KEY, enrolled INTEGER NOT NULL, replaced INTEGER, revoked INTEGER,
        hostname TEXT NOT NULL, channel TEXT NOT NULL, version TEXT, last_heartbeat INTEGER, report TEXT);
      CREATE TABLE certificates (serial TEXT PRIMARY KEY, box TEXT NOT NULL REFERENCES boxes (name), issued INTEGER NOT NULL,
        not_after INTEGER NOT NULL, state TEXT NOT NULL CHECK (state IN ('current','pending','revoked')));
      CREATE INDEX certificates_by_box ON certificates (box);
      CREATE TABLE commands (id INTEGER PRIMARY KEY, box TEXT NOT NULL REFERENCES boxes (name), kind TEXT NOT NULL,
        args TEXT NOT NULL, created INTEGER NOT NULL, by TEXT NOT NULL, state TEXT NOT NULL, sent INTEGER, finished INTEGER, result TEXT);
      CREATE INDEX commands_open ON commands (box, state);
      CREATE TABLE escrows (box TEXT NOT NULL REFERENCES boxes (name), version INTEGER NOT NULL, at INTEGER NOT NULL,
        sha256 TEXT NOT NULL, blob BLOB NOT NULL, PRIMARY KEY (box, version));
      CREATE TABLE releases (channel TEXT NOT NULL, version TEXT NOT NULL, published INTEGER NOT NULL, percent REAL NOT NULL,
        halted INTEGER, halt_reason TEXT, PRIMARY KEY (channel, version));
      CREATE TABLE update_reports (box TEXT NOT NULL, channel TEXT NOT NULL, version TEXT NOT NULL, outcome TEXT NOT NULL,
        at INTEGER NOT NULL, detail TEXT NOT NULL, PRIMARY KEY (box, channel, version));
      CREATE TABLE offers (box TEXT NOT NULL, channel TEXT NOT NULL, version TEXT NOT NULL, at INTEGER NOT NULL,
        PRIMARY KEY (channel, version, box));
      INSERT INTO meta (key, value) VALUES ('schema', '${SCHEMA_VERSION}');
    `);
  }

  async addToken(t: TokenRecord): Promise<void> {
    const r = await this.#db.run('INSERT OR IGNORE INTO tokens (hash, created, expires, used, used_by, replaces, note) VALUES (?, ?, ?, ?, ?, ?, ?)',
      [t.hash, t.created, t.expires, t.used, t.usedBy, t.replaces, t.note]);
    if (r.changes === 0) throw new HoldfastError('HF_CONFLICT', 'that enrollment token exists already');
  }

  async useToken(hash: string, box: BoxName, now: number): Promise<TokenRecord | null> {
    return this.#db.transaction(async () => {
      const r = await this.#db.get<Row>('SELECT * FROM tokens WHERE hash = ?', [hash]);
      if (!r || r.used !== null || Number(r.expires) <= now) return null;
      await this.#db.run('UPDATE tokens SET used = ?, used_by = ? WHERE hash = ? AND used IS NULL', [now, box, hash]);
      return tokenOf(r);
    });
  }

  async token(hash: string): Promise<TokenRecord | null> {
    const r = await this.#db.get<Row>('SELECT * FROM tokens WHERE hash = ?', [hash]);
    return r ? tokenOf(r) : null;
  }

  async tokens(): Promise<TokenRecord[]> {
    return (await this.#db.all<Row>('SELECT * FROM tokens ORDER BY created')).map(tokenOf);
  }

  async putBox(b: { name: BoxName; hostname: string; channel: string; at: number; replacement: boolean }): Promise<void> {
    if (b.replacement) {
      const r = await this.#db.run('UPDATE boxes SET replaced = ?, revoked = NULL, hostname = ? WHERE name = ?', [b.at, b.hostname, b.name]);
      if (r.changes === 1) return;
    }
    const r = await this.#db.run('INSERT OR IGNORE INTO boxes (name, enrolled, hostname, channel) VALUES (?, ?, ?, ?)', [b.name, b.at, b.hostname, b.channel]);
    if (r.changes === 0) throw new HoldfastError('HF_CONFLICT', `a box named ${b.name} is enrolled already`);
  }

  async box(name: BoxName): Promise<BoxRecord | null> {
    const r = await this.#db.get<Row>('SELECT * FROM boxes WHERE name = ?', [name]);
    return r ? boxOf(r) : null;
  }

  async boxes(): Promise<BoxRecord[]> {
    return (await this.#db.all<Row>('SELECT * FROM boxes ORDER BY name')).map(boxOf);
  }

  async boxNames(): Promise<BoxName[]> {
    return (await this.#db.all<{ name: string }>('SELECT name FROM boxes ORDER BY name')).map((r) => r.name);
  }

  async revokeBox(name: BoxName, at: number): Promise<string[]> {
    return this.#db.transaction(async () => {
      await this.#db.run('UPDATE boxes SET revoked = ? WHERE name = ?', [at, name]);
      const serials = (await this.#db.all<{ serial: string }>("SELECT serial FROM certificates WHERE box = ? AND state != 'revoked'", [name])).map((r) => r.serial);
      await this.#db.run("UPDATE certificates SET state = 'revoked' WHERE box = ?", [name]);
      return serials;
    });
  }

  async heartbeat(name: BoxName, at: number, version: string, channel: string, report: Record<string, unknown>): Promise<void> {
    await this.#db.run('UPDATE boxes SET last_heartbeat = ?, version = ?, channel = ?, report = ? WHERE name = ?',
      [at, version, channel, JSON.stringify(report), name]);
  }

  async addCertificate(c: CertificateRecord): Promise<void> {
    await this.#db.run('INSERT INTO certificates (serial, box, issued, not_after, state) VALUES (?, ?, ?, ?, ?)',
      [c.serial.toLowerCase(), c.box, c.issued, c.notAfter, c.state]);
  }

  async certificate(serial: string): Promise<CertificateRecord | null> {
    const r = await this.#db.get<Row>('SELECT * FROM certificates WHERE serial = ?', [serial.toLowerCase()]);
    return r ? certOf(r) : null;
  }

  async promoteCertificate(box: BoxName, serial: string): Promise<string[]> {
    return this.#db.transaction(async () => {
      const others = (await this.#db.all<{ serial: string }>("SELECT serial FROM certificates WHERE box = ? AND serial != ? AND state != 'revoked'",
        [box, serial.toLowerCase()])).map((r) => r.serial);
      await this.#db.run("UPDATE certificates SET state = 'revoked' WHERE box = ? AND serial != ?", [box, serial.toLowerCase()]);
      await this.#db.run("UPDATE certificates SET state = 'current' WHERE serial = ?", [serial.toLowerCase()]);
      return others;
    });
  }

  async certificates(box: BoxName): Promise<CertificateRecord[]> {
    return (await this.#db.all<Row>('SELECT * FROM certificates WHERE box = ? ORDER BY issued', [box])).map(certOf);
  }

  async addCommand(c: Omit<CommandRecord, 'id' | 'state' | 'sent' | 'finished' | 'result'>): Promise<number> {
    const r = await this.#db.run("INSERT INTO commands (box, kind, args, created, by, state) VALUES (?, ?, ?, ?, ?, 'pending')",
      [c.box, c.kind, JSON.stringify(c.args), c.created, c.by]);
    return r.lastID;
  }

  async takeCommands(box: BoxName, now: number): Promise<CommandRecord[]> {
    return this.#db.transaction(async () => {
      const rows = await this.#db.all<Row>("SELECT * FROM commands WHERE box = ? AND state IN ('pending','sent') ORDER BY id LIMIT 50", [box]);
      if (rows.length > 0) await this.#db.run("UPDATE commands SET state = 'sent', sent = ? WHERE box = ? AND state IN ('pending','sent')", [now, box]);
      return rows.map((r) => ({ ...commandOf(r), state: 'sent' as const, sent: now }));
    });
  }

  async finishCommand(box: BoxName, id: number, ok: boolean, result: Record<string, unknown>, at: number): Promise<boolean> {
    const r = await this.#db.run("UPDATE commands SET state = ?, finished = ?, result = ? WHERE id = ? AND box = ? AND state IN ('pending','sent')",
      [ok ? 'done' : 'failed', at, JSON.stringify(result), id, box]);
    return r.changes === 1;
  }

  async commands(box: BoxName, limit: number): Promise<CommandRecord[]> {
    return (await this.#db.all<Row>('SELECT * FROM commands WHERE box = ? ORDER BY id DESC LIMIT ?', [box, limit])).map(commandOf);
  }

  async putEscrow(e: Omit<EscrowRecord, 'version'>, keep: number): Promise<number> {
    return this.#db.transaction(async () => {
      const last = await this.#db.get<{ v: number | null }>('SELECT MAX(version) AS v FROM escrows WHERE box = ?', [e.box]);
      const version = Number(last?.v ?? 0) + 1;
      await this.#db.run('INSERT INTO escrows (box, version, at, sha256, blob) VALUES (?, ?, ?, ?, ?)', [e.box, version, e.at, e.sha256, e.blob]);
      await this.#db.run('DELETE FROM escrows WHERE box = ? AND version <= ?', [e.box, version - keep]);
      return version;
    });
  }

  async escrow(box: BoxName, version?: number): Promise<EscrowRecord | null> {
    const r = version === undefined
      ? await this.#db.get<Row>('SELECT * FROM escrows WHERE box = ? ORDER BY version DESC LIMIT 1', [box])
      : await this.#db.get<Row>('SELECT * FROM escrows WHERE box = ? AND version = ?', [box, version]);
    return r ? { box: String(r.box), version: Number(r.version), at: Number(r.at), sha256: String(r.sha256), blob: r.blob as Buffer } : null;
  }

  async escrowInfo(box: BoxName): Promise<{ version: number; sha256: string } | null> {
    const r = await this.#db.get<{ version: number; sha256: string }>('SELECT version, sha256 FROM escrows WHERE box = ? ORDER BY version DESC LIMIT 1', [box]);
    return r ? { version: Number(r.version), sha256: String(r.sha256) } : null;
  }

  async putRelease(r: ReleaseRecord): Promise<void> {
    const x = await this.#db.run('INSERT OR IGNORE INTO releases (channel, version, published, percent, halted, halt_reason) VALUES (?, ?, ?, ?, ?, ?)',
      [r.channel, r.version, r.published, r.percent, r.halted, r.haltReason]);
    if (x.changes === 0) throw new HoldfastError('HF_CONFLICT', `release ${r.version} is published on ${r.channel} already`);
  }

  async release(channel: string, version: string): Promise<ReleaseRecord | null> {
    const r = await this.#db.get<Row>('SELECT * FROM releases WHERE channel = ? AND version = ?', [channel, version]);
    return r ? releaseOf(r) : null;
  }

  async releases(channel?: string): Promise<ReleaseRecord[]> {
    const rows = channel === undefined
      ? await this.#db.all<Row>('SELECT * FROM releases ORDER BY published')
      : await this.#db.all<Row>('SELECT * FROM releases WHERE channel = ? ORDER BY published', [channel]);
    return rows.map(releaseOf);
  }

  async setRollout(channel: string, version: string, percent: number): Promise<void> {
    await this.#db.run('UPDATE releases SET percent = ? WHERE channel = ? AND version = ?', [percent, channel, version]);
  }

  async haltRelease(channel: string, version: string, at: number, reason: string): Promise<void> {
    await this.#db.run('UPDATE releases SET halted = ?, halt_reason = ? WHERE channel = ? AND version = ? AND halted IS NULL', [at, reason, channel, version]);
  }

  async resumeRelease(channel: string, version: string): Promise<void> {
    await this.#db.run('UPDATE releases SET halted = NULL, halt_reason = NULL WHERE channel = ? AND version = ?', [channel, version]);
  }

  async addUpdateReport(r: UpdateReport): Promise<void> {
    await this.#db.run('INSERT OR REPLACE INTO update_reports (box, channel, version, outcome, at, detail) VALUES (?, ?, ?, ?, ?, ?)',
      [r.box, r.channel, r.version, r.outcome, r.at, r.detail]);
  }

  async updateReports(channel: string, version: string): Promise<UpdateReport[]> {
    return (await this.#db.all<Row>('SELECT * FROM update_reports WHERE channel = ? AND version = ? ORDER BY at', [channel, version])).map((r) => ({
      box: String(r.box), channel: String(r.channel), version: String(r.version), outcome: r.outcome as UpdateReport['outcome'], at: Number(r.at), detail: String(r.detail),
    }));
  }

  async recordOffer(box: BoxName, channel: string, version: string, at: number): Promise<void> {
    await this.#db.run('INSERT OR IGNORE INTO offers (box, channel, version, at) VALUES (?, ?, ?, ?)', [box, channel, version, at]);
  }

  async offers(channel: string, version: string): Promise<BoxName[]> {
    return (await this.#db.all<{ box: string }>('SELECT box FROM offers WHERE channel = ? AND version = ? ORDER BY box', [channel, version])).map((r) => r.box);
  }

  close(): Promise<void> {
    return this.#db.close();
  }
}
