import { createHash, randomBytes } from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';

import { HoldfastError } from '../../appliance/errors/index.ts';
import { issueFromRequest, revokeSerial } from '../../appliance/pki/index.ts';
import type { BoxName, BoxRecord, CommandKind, CommandRecord, FleetStore, ReleaseRecord, UpdateOutcome } from './fleet-store.ts';
import { CHANNELS, FIRST_STAGE_PERCENT, HALT_FAILURE_RATE, VERSION, haltReason, releaseFor, rolloutBucket } from './rollout.ts';

export const COMMAND_KINDS: readonly CommandKind[] = ['run-job', 'set', 'upgrade', 'rotate-key'];
/** Settings a `set` command may change on a box (the agent's own). */
export const BOX_SETTINGS = ['channel', 'maintenance-window', 'heartbeat-seconds'] as const;
const JOB_KINDS = ['backup', 'replicate', 'verify', 'prune'];
const ESCROW_KEEP = 10;
const ESCROW_MAX = 4 << 20;

export interface Clock { now(): number }

export interface FleetServiceOptions {
  store: FleetStore;
  /** The vendor CA's directory (appliance/pki layout): issues boxes' certificates, keeps the CRL. */
  caDir: string;
  clock?: Clock;
  /** The heartbeat interval boxes are told (seconds; they add ±20% jitter). Default 300. */
  heartbeatSeconds?: number;
  /** The failure rate of a stage that halts a rollout. Default 0.2. */
  haltFailureRate?: number;
}

export interface HeartbeatReport {
  version: string;
  channel: string;
  /** 'ok' | 'warning' | 'error', and the engine's warnings. */
  health: { status: string; warnings: string[] };
  jobs: { running: { kind: string; subject: string | null }[]; lastFailed: string | null };
  storage: { repositoryBytes: number; snapshots: number; diskFreeBytes: number | null };
  /** Last successful backup per source (ISO time or null). */
  sources: { name: string; lastBackup: string | null }[];
  /** Replication lag per target (seconds, null when never replicated). */
  targets: { name: string; lagSeconds: number | null; lastError: string | null }[];
  /** Whether an update is waiting for running jobs or the maintenance window. */
  updateWaiting: string | null;
}

export interface HeartbeatAnswer {
  commands: { id: number; kind: CommandKind; args: Record<string, unknown> }[];
  /** The release to install, chosen by the rollout (the box verifies it with TUF). */
  update: { channel: string; version: string } | null;
  heartbeatSeconds: number;
  escrow: { version: number; sha256: string } | null;
}

const hashToken = (token: string) => createHash('sha256').update(token).digest('hex');

function str(v: unknown, what: string, max = 200): string {
  if (typeof v !== 'string' || v.length === 0 || v.length > max) throw new HoldfastError('HF_INVALID_ARGUMENT', `${what} must be a string of 1 to ${max} characters`);
  return v;
}

function channelOf(v: unknown): string {
  if (typeof v !== 'string' || !(CHANNELS as readonly string[]).includes(v)) throw new HoldfastError('HF_INVALID_ARGUMENT', `channel must be one of ${CHANNELS.join(', ')}`);
  return v;
}

function versionOf(v: unknown): string {
  if (typeof v !== 'string' || !VERSION.test(v)) throw new HoldfastError('HF_INVALID_ARGUMENT', `version ${JSON.stringify(v)} is not MAJOR.MINOR.PATCH[-PRE]`);
  return v;
}

const numOrNull = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);
const list = (v: unknown, max: number): unknown[] => (Array.isArray(v) ? v.slice(0, max) : []);
const obj = (v: unknown): Record<string, unknown> => (typeof v === 'object' && v !== null && !Array.isArray(v) ? v as Record<string, unknown> : {});
const shortStr = (v: unknown, max = 200): string | null => (typeof v === 'string' ? v.slice(0, max) : null);

/** A heartbeat's body, validated at the boundary: unknown fields dropped, lists and strings bounded. */
export function parseHeartbeat(body: unknown): HeartbeatReport {
  const b = obj(body);
  const h = obj(b.health);
  const j = obj(b.jobs);
  const s = obj(b.storage);
  return {
    version: versionOf(b.version),
    channel: channelOf(b.channel),
    health: { status: ['ok', 'warning', 'error'].includes(String(h.status)) ? String(h.status) : 'error', warnings: list(h.warnings, 20).map((w) => String(w).slice(0, 300)) },
    jobs: {
      running: list(j.running, 20).map((x) => ({ kind: String(obj(x).kind).slice(0, 20), subject: shortStr(obj(x).subject, 100) })),
      lastFailed: shortStr(j.lastFailed, 300),
    },
    storage: { repositoryBytes: numOrNull(s.repositoryBytes) ?? 0, snapshots: numOrNull(s.snapshots) ?? 0, diskFreeBytes: numOrNull(s.diskFreeBytes) },
    sources: list(b.sources, 200).map((x) => ({ name: String(obj(x).name).slice(0, 100), lastBackup: shortStr(obj(x).lastBackup, 40) })),
    targets: list(b.targets, 50).map((x) => ({ name: String(obj(x).name).slice(0, 100), lagSeconds: numOrNull(obj(x).lagSeconds), lastError: shortStr(obj(x).lastError, 300) })),
    updateWaiting: shortStr(b.updateWaiting, 300),
  };
}

/** A command for a box, validated (the fleet page and the CLI send these). */
export function parseCommand(kind: unknown, args: unknown): { kind: CommandKind; args: Record<string, unknown> } {
  if (!(COMMAND_KINDS as readonly unknown[]).includes(kind)) throw new HoldfastError('HF_INVALID_ARGUMENT', `a command is one of ${COMMAND_KINDS.join(', ')}`);
  const a = obj(args);
  switch (kind as CommandKind) {
    case 'run-job': {
      if (!JOB_KINDS.includes(String(a.job))) throw new HoldfastError('HF_INVALID_ARGUMENT', `run-job needs job: ${JOB_KINDS.join(' | ')}`);
      return { kind: 'run-job', args: { job: a.job, ...(typeof a.subject === 'string' && a.subject ? { subject: a.subject.slice(0, 100) } : {}) } };
    }
    case 'set': {
      if (!(BOX_SETTINGS as readonly unknown[]).includes(a.key)) throw new HoldfastError('HF_INVALID_ARGUMENT', `set needs key: ${BOX_SETTINGS.join(' | ')}`);
      if (a.key === 'channel') channelOf(a.value);
      if (a.key === 'heartbeat-seconds' && !(Number.isInteger(a.value) && (a.value as number) >= 1 && (a.value as number) <= 86_400)) {
        throw new HoldfastError('HF_INVALID_ARGUMENT', 'heartbeat-seconds is a whole number from 1 to 86400');
      }
      if (a.key === 'maintenance-window' && !(a.value === null || (typeof a.value === 'string' && a.value.length <= 100))) {
        throw new HoldfastError('HF_INVALID_ARGUMENT', 'maintenance-window is like "Sat-Sun 01:00-05:00", or null for any time');
      }
      return { kind: 'set', args: { key: a.key, value: a.value } };
    }
    case 'upgrade':
      return { kind: 'upgrade', args: { version: versionOf(a.version) } };
    case 'rotate-key':
      return { kind: 'rotate-key', args: {} };
  }
}

/**
 * The fleet service's logic, apart from HTTP (channel-server.ts serves it):
 * one-time enrollment tokens, certificates for boxes from the vendor CA,
 * heartbeats and the commands they carry back, config escrow, and the
 * staged rollout of releases. Every box request is authenticated by the
 * certificate serial its TLS connection presented (authenticate).
 */
export class FleetService {
  readonly store: FleetStore;
  readonly caDir: string;
  readonly clock: Clock;
  readonly heartbeatSeconds: number;
  readonly haltFailureRate: number;
  /** Releases, read once per second at most (every heartbeat needs them). */
  #releases: { at: number; list: ReleaseRecord[] } | null = null;

  constructor(o: FleetServiceOptions) {
    this.store = o.store;
    this.caDir = o.caDir;
    this.clock = o.clock ?? { now: () => Date.now() };
    this.heartbeatSeconds = o.heartbeatSeconds ?? 300;
    this.haltFailureRate = o.haltFailureRate ?? HALT_FAILURE_RATE;
  }

  /** A new one-time token (shown once; only its hash is kept). */
  async createToken(o: { hours?: number; replaces?: BoxName | null; note?: string } = {}): Promise<{ token: string; expires: string }> {
    const hours = o.hours ?? 72;
    if (!(hours > 0 && hours <= 24 * 365)) throw new HoldfastError('HF_INVALID_ARGUMENT', 'a token lives from a few minutes to a year (--hours)');
    if (o.replaces) {
      const b = await this.store.box(o.replaces);
      if (!b) throw new HoldfastError('HF_NOT_FOUND', `no box named ${o.replaces} to replace`);
    }
    const token = `hft_${randomBytes(24).toString('base64url')}`;
    const now = this.clock.now();
    const expires = now + Math.round(hours * 3_600_000);
    await this.store.addToken({ hash: hashToken(token), created: now, expires, used: null, usedBy: null, replaces: o.replaces ?? null, note: (o.note ?? '').slice(0, 200) });
    return { token, expires: new Date(expires).toISOString() };
  }

  /**
   * Enrolls a box: the token is used up (exactly once, even under races), and
   * the CSR's key gets a certificate. A replacement token gives the replaced
   * box's name (its tenant at the stores, its escrow) and revokes the
   * certificates of the box it replaces.
   */
  async enroll(body: unknown): Promise<{ name: BoxName; certificate: string; ca: string; replaced: boolean }> {
    const b = obj(body);
    const token = str(b.token, 'token', 200);
    const csr = str(b.csr, 'csr', 16 << 10);
    const hostname = shortStr(b.hostname, 100) ?? 'unknown';
    const channel = b.channel === undefined ? 'stable' : channelOf(b.channel);
    const now = this.clock.now();
    // The name is settled before the token is used, and the CSR checked, so
    // that a malformed request does not use up a good token.
    const refused = () => new HoldfastError('HF_ENROLL_TOKEN', 'the enrollment token is unknown, used already or expired: ask the vendor for a new one');
    const peek = await this.store.token(hashToken(token));
    if (!peek || peek.used !== null || peek.expires <= now) throw refused();
    const name = peek.replaces ?? `box-${randomBytes(5).toString('hex')}`;
    const issued = await issueFromRequest(this.caDir, csr, { name });
    const used = await this.store.useToken(hashToken(token), name, now);
    if (!used) throw refused(); // lost a race for it
    await this.store.putBox({ name, hostname, channel, at: now, replacement: used.replaces !== null });
    await this.store.addCertificate({ serial: issued.serialNumber, box: name, issued: now, notAfter: issued.notAfter.getTime(), state: 'pending' });
    const revoked = await this.store.promoteCertificate(name, issued.serialNumber);
    for (const s of revoked) await revokeSerial(this.caDir, s);
    return { name, certificate: issued.certPem, ca: await fsp.readFile(path.join(this.caDir, 'ca.crt'), 'utf8'), replaced: used.replaces !== null };
  }

  /**
   * The box a verified client certificate belongs to. HF_FLEET_UNAUTHORIZED
   * unless the serial is the box's current certificate (or a pending one
   * from a key rotation, which then becomes current) and the box is not revoked.
   */
  async authenticate(serial: string | null): Promise<BoxRecord> {
    const refuse = (why: string) => new HoldfastError('HF_FLEET_UNAUTHORIZED', `${why}: enroll the box again with a new token`);
    if (!serial) throw refuse('no client certificate from the vendor CA');
    const c = await this.store.certificate(serial);
    if (!c) throw refuse('the certificate is not known to this fleet');
    if (c.state === 'revoked') throw refuse(`the certificate of ${c.box} is revoked`);
    const b = await this.store.box(c.box);
    if (!b || b.revoked !== null) throw refuse(`box ${c.box} is revoked`);
    if (c.state === 'pending') {
      // The box uses its rotated key: the old certificate goes.
      for (const s of await this.store.promoteCertificate(c.box, c.serial)) await revokeSerial(this.caDir, s);
    }
    return b;
  }

  async #releaseList(): Promise<ReleaseRecord[]> {
    const now = this.clock.now();
    if (!this.#releases || now - this.#releases.at > 1000) this.#releases = { at: now, list: await this.store.releases() };
    return this.#releases.list;
  }

  async heartbeat(box: BoxRecord, body: unknown): Promise<HeartbeatAnswer> {
    const r = parseHeartbeat(body);
    const now = this.clock.now();
    await this.store.heartbeat(box.name, now, r.version, r.channel, r as unknown as Record<string, unknown>);
    const commands = (await this.store.takeCommands(box.name, now)).map((c: CommandRecord) => ({ id: c.id, kind: c.kind, args: c.args }));
    const rel = releaseFor(box.name, r.channel, r.version, await this.#releaseList());
    if (rel) await this.store.recordOffer(box.name, rel.channel, rel.version, now);
    const e = await this.store.escrowInfo(box.name);
    return {
      commands,
      update: rel ? { channel: rel.channel, version: rel.version } : null,
      heartbeatSeconds: this.heartbeatSeconds,
      escrow: e ? { version: e.version, sha256: e.sha256 } : null,
    };
  }

  async finishCommand(box: BoxRecord, id: number, body: unknown): Promise<void> {
    const b = obj(body);
    const ok = b.ok === true;
    const result = ok ? obj(b.result) : { error: { code: shortStr(obj(b.error).code, 60), message: shortStr(obj(b.error).message, 1000) } };
    if (!Number.isSafeInteger(id) || !(await this.store.finishCommand(box.name, id, ok, result, this.clock.now()))) {
      throw new HoldfastError('HF_NOT_FOUND', `command ${id} is not an open command of ${box.name}`);
    }
  }

  /** A box says how an update went; a stage failing past the threshold halts the rollout. */
  async reportUpdate(box: BoxRecord, body: unknown): Promise<{ halted: boolean }> {
    const b = obj(body);
    const channel = channelOf(b.channel);
    const version = versionOf(b.version);
    const outcome: UpdateOutcome = b.outcome === 'installed' ? 'installed' : b.outcome === 'failed' ? 'failed' : (() => {
      throw new HoldfastError('HF_INVALID_ARGUMENT', 'outcome is installed or failed');
    })();
    const rel = await this.store.release(channel, version);
    if (!rel) throw new HoldfastError('HF_NOT_FOUND', `release ${version} is not published on ${channel}`);
    await this.store.addUpdateReport({ box: box.name, channel, version, outcome, at: this.clock.now(), detail: shortStr(b.detail, 500) ?? '' });
    const why = haltReason(await this.store.updateReports(channel, version), this.haltFailureRate);
    if (why && rel.halted === null) {
      await this.store.haltRelease(channel, version, this.clock.now(), why);
      this.#releases = null;
      return { halted: true };
    }
    return { halted: rel.halted !== null };
  }

  async renew(box: BoxRecord, body: unknown): Promise<{ certificate: string }> {
    const csr = str(obj(body).csr, 'csr', 16 << 10);
    const issued = await issueFromRequest(this.caDir, csr, { name: box.name });
    // Pending until the box first uses it: a box that never got the answer keeps its old key.
    await this.store.addCertificate({ serial: issued.serialNumber, box: box.name, issued: this.clock.now(), notAfter: issued.notAfter.getTime(), state: 'pending' });
    return { certificate: issued.certPem };
  }

  async putEscrow(box: BoxRecord, blob: Buffer): Promise<{ version: number; sha256: string }> {
    if (blob.length === 0 || blob.length > ESCROW_MAX) throw new HoldfastError('HF_INVALID_ARGUMENT', `an escrow is 1 byte to ${ESCROW_MAX >> 20} MiB`);
    const sha256 = createHash('sha256').update(blob).digest('hex');
    const last = await this.store.escrowInfo(box.name);
    if (last?.sha256 === sha256) return { version: last.version, sha256 };
    return { version: await this.store.putEscrow({ box: box.name, at: this.clock.now(), sha256, blob }, ESCROW_KEEP), sha256 };
  }

  async getEscrow(box: BoxRecord, version?: number): Promise<{ blob: Buffer; version: number }> {
    const e = await this.store.escrow(box.name, version);
    if (!e) throw new HoldfastError('HF_ESCROW_NOT_FOUND', `the fleet holds no configuration escrow for ${box.name}${version ? ` (version ${version})` : ''}`);
    return { blob: e.blob, version: e.version };
  }

  /** Revokes a box: every certificate it has goes on the CRL, and every request gets 401. */
  async revoke(name: BoxName): Promise<{ serials: string[] }> {
    if (!(await this.store.box(name))) throw new HoldfastError('HF_NOT_FOUND', `no box named ${name}`);
    const serials = await this.store.revokeBox(name, this.clock.now());
    for (const s of serials) await revokeSerial(this.caDir, s);
    return { serials };
  }

  async addCommand(name: BoxName, kind: unknown, args: unknown, by: string): Promise<number> {
    const b = await this.store.box(name);
    if (!b) throw new HoldfastError('HF_NOT_FOUND', `no box named ${name}`);
    if (b.revoked !== null) throw new HoldfastError('HF_CONFLICT', `box ${name} is revoked`);
    const c = parseCommand(kind, args);
    return this.store.addCommand({ box: name, kind: c.kind, args: c.args, created: this.clock.now(), by });
  }

  /** Records a published release (the TUF targets are signed by `publish`) with its first stage. */
  async addRelease(channel: unknown, version: unknown, percent: number = FIRST_STAGE_PERCENT): Promise<ReleaseRecord> {
    const r: ReleaseRecord = { channel: channelOf(channel), version: versionOf(version), published: this.clock.now(), percent: checkPercent(percent), halted: null, haltReason: null };
    await this.store.putRelease(r);
    this.#releases = null;
    return r;
  }

  /** Raises (or lowers) a rollout. A halted one stays halted unless `resume`. */
  async setRollout(channel: unknown, version: unknown, percent: number, resume = false): Promise<ReleaseRecord> {
    const c = channelOf(channel);
    const v = versionOf(version);
    const r = await this.store.release(c, v);
    if (!r) throw new HoldfastError('HF_NOT_FOUND', `release ${v} is not published on ${c}`);
    if (r.halted !== null && !resume) {
      throw new HoldfastError('HF_CONFLICT', `the rollout of ${v} on ${c} was halted: ${r.haltReason}; fix the release, or pass --resume to go on anyway`);
    }
    await this.store.setRollout(c, v, checkPercent(percent));
    if (resume) await this.store.resumeRelease(c, v);
    this.#releases = null;
    return (await this.store.release(c, v))!;
  }

  /** The fleet view: every box with what its last heartbeat said. */
  async fleet(): Promise<Record<string, unknown>[]> {
    const now = this.clock.now();
    return (await this.store.boxes()).map((b) => {
      const r = (b.report ?? {}) as Partial<HeartbeatReport>;
      return {
        name: b.name, hostname: b.hostname, channel: b.channel, version: b.version,
        enrolled: new Date(b.enrolled).toISOString(), replaced: b.replaced ? new Date(b.replaced).toISOString() : null,
        revoked: b.revoked ? new Date(b.revoked).toISOString() : null,
        lastHeartbeat: b.lastHeartbeat ? new Date(b.lastHeartbeat).toISOString() : null,
        silentSeconds: b.lastHeartbeat ? Math.round((now - b.lastHeartbeat) / 1000) : null,
        health: r.health ?? null, sources: r.sources ?? [], targets: r.targets ?? [], storage: r.storage ?? null,
        jobs: r.jobs ?? null, updateWaiting: r.updateWaiting ?? null,
      };
    });
  }

  /** Which boxes a release's stage holds now (for the fleet page and the rollout test). */
  inStage(box: BoxName, r: ReleaseRecord): boolean {
    return rolloutBucket(box, r.channel, r.version) < r.percent;
  }
}

function checkPercent(p: number): number {
  if (!(typeof p === 'number' && p >= 0 && p <= 100)) throw new HoldfastError('HF_INVALID_ARGUMENT', 'a rollout percentage is from 0 to 100');
  return p;
}
