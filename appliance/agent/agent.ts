import { createHash } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';

import type { Logger } from 'pino';

import { EngineClient } from '../console/engine-client.ts';
import { HoldfastError, errorCode } from '../errors/index.ts';
import { parseWindows, rateAt } from '../replication/index.ts';
import { type AgentState, type UpdateReportPending, loadState, saveState } from './agent-state.ts';
import { type BoxIdentity, RESTORED_MARKER, enrollBox, rotateIdentity } from './box-identity.ts';
import { FleetClient } from './fleet-client.ts';
import type { Provisioning } from './provisioning-file.ts';
import { type ReleaseChannel, type ReleaseInfo, ReleaseFetcher } from './release-fetcher.ts';
import { currentRelease, installRelease, pruneReleases, switchRelease } from './release-installer.ts';
import { type ServiceManager, runSelfTest } from './service-manager.ts';

const VERSION = /^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?$/;

/** Semver precedence of two release versions (the box's own: it does not load the vendor's update-channel code). */
export function compareVersions(a: string, b: string): number {
  const x = VERSION.exec(a), y = VERSION.exec(b);
  if (!x || !y) return a < b ? -1 : a > b ? 1 : 0;
  for (let i = 1; i <= 3; i++) if (Number(x[i]) !== Number(y[i])) return Math.sign(Number(x[i]) - Number(y[i]));
  if (x[4] === y[4]) return 0;
  if (x[4] === undefined) return 1;
  if (y[4] === undefined) return -1;
  return x[4] < y[4] ? -1 : 1;
}

/** Whether `now` falls in a maintenance window ("Sat-Sun 01:00-05:00; 22:00-06:00"); null means any time. */
export function inMaintenanceWindow(window: string | null, now: Date): boolean {
  if (window === null || window.trim() === '') return true;
  const windows = parseWindows(window.split(';').map((w) => w.trim()).filter(Boolean).map((w) => `${w}=1MiB/s`).join(';'));
  return rateAt(0, windows, now) > 0;
}

export interface AgentOptions {
  /** The agent's directory: identity, state, TUF metadata, downloads. */
  dataDir: string;
  /** Where releases are installed side by side (/opt/holdfast). */
  installRoot: string;
  provisioning: Provisioning;
  /** The engine's API (socket and local token); null when the box runs no engine (a test's bare agent). */
  engine: EngineClient | null;
  services: ServiceManager;
  log: Logger;
  /** How long the services get to report READY and pass the self-test after a switch. Default 120 s. */
  healthTimeoutMs?: number;
  /** Extra arguments for `holdfast self-test` (e.g. the engine socket). */
  selfTestArgs?: string[];
  now?: () => number;
  random?: () => number;
}

export type UpdateOutcome =
  | { state: 'current' }
  | { state: 'waiting'; reason: string }
  | { state: 'installed'; from: string; to: string }
  | { state: 'rolled-back'; from: string; to: string; reason: string }
  | { state: 'skipped'; reason: string };

/**
 * holdfast-agent: the box's link to the vendor. Enrolls once (provisioning
 * file), then heartbeats outbound with jitter: what the box is doing and how
 * it is; the answer carries commands (run a job, change a setting, upgrade,
 * rotate the key), which it runs and acknowledges, and the release the
 * rollout picked for it, which it installs: verified with TUF, unpacked
 * beside the running one, switched atomically, health-checked (READY and a
 * self-test within a time limit), rolled back automatically when that fails,
 * and reported either way. Never during a running job (the engine's update
 * lock) or outside the maintenance window.
 */
export class Agent {
  readonly dataDir: string;
  readonly installRoot: string;
  readonly log: Logger;
  identity: BoxIdentity;
  state: AgentState;
  fleet: FleetClient;
  readonly #o: AgentOptions;
  #fetcher: ReleaseFetcher;
  #updating: Promise<UpdateOutcome> | null = null;
  #lastUpdate: Promise<UpdateOutcome> | null = null;
  #waiting: string | null = null;
  #lastEscrowTry = 0;

  private constructor(o: AgentOptions, identity: BoxIdentity, state: AgentState) {
    this.#o = o;
    this.dataDir = o.dataDir;
    this.installRoot = o.installRoot;
    this.log = o.log;
    this.identity = identity;
    this.state = state;
    this.fleet = this.#client();
    this.#fetcher = this.#releaseFetcher();
  }

  #client(): FleetClient {
    return new FleetClient(this.identity.fleet, { ca: this.identity.caPem, cert: this.identity.certPem, key: this.identity.keyPem });
  }

  #releaseFetcher(): ReleaseFetcher {
    return new ReleaseFetcher({
      metadataUrl: `${this.identity.fleet}/tuf/metadata/`, targetsUrl: `${this.identity.fleet}/tuf/targets/`,
      cacheDir: path.join(this.dataDir, 'tuf'), dispatcher: this.fleet.dispatcher,
      initialRoot: Buffer.from(JSON.stringify(this.#o.provisioning.tufRoot)),
    });
  }

  /** Enrolls if the box has no identity yet, and finishes an update a previous agent left half done. */
  static async open(o: AgentOptions): Promise<Agent> {
    await fsp.mkdir(o.dataDir, { recursive: true, mode: 0o700 });
    const { identity, enrolledNow } = await enrollBox(o.dataDir, o.provisioning);
    if (enrolledNow) o.log.info({ box: identity.name, fleet: identity.fleet, replacement: identity.replacement }, 'enrolled with the fleet');
    const agent = new Agent(o, identity, await loadState(o.dataDir, o.provisioning.channel));
    await agent.#resumeUpdate();
    return agent;
  }

  #now(): number {
    return (this.#o.now ?? Date.now)();
  }

  async version(): Promise<string> {
    const cur = await currentRelease(this.installRoot);
    if (!cur) throw new HoldfastError('HF_NOT_FOUND', `no release is installed under ${this.installRoot} (no current link)`);
    return cur.version;
  }

  async #save(): Promise<void> {
    await saveState(this.dataDir, this.state);
  }

  /** The interval to the next heartbeat: the fleet's (or a set one), ±20% so that a fleet's boxes spread out. */
  nextDelayMs(fleetSeconds: number): number {
    const base = (this.state.heartbeatSeconds ?? fleetSeconds) * 1000;
    return Math.round(base * (0.8 + 0.4 * (this.#o.random ?? Math.random)()));
  }

  /** What the heartbeat says about the box: from the engine's dashboard (or what is known without it). */
  async report(): Promise<Record<string, unknown>> {
    const version = await this.version();
    const base = { version, channel: this.state.channel, updateWaiting: this.#waiting };
    if (!this.#o.engine) return { ...base, health: { status: 'ok', warnings: [] }, jobs: { running: [], lastFailed: null }, storage: {}, sources: [], targets: [] };
    try {
      const d = await this.#o.engine.call<{
        sources: { name: string; lastSnapshot: { time: string } | null; lastJob: { state: string; error?: { message?: string } | null } | null }[];
        targets: { name: string; lagSeconds: number | null; lastError: { message: string } | null }[];
        storage: { repoBytes: number | null; snapshots: number };
        running: { kind: string; subject: string | null }[];
        warnings: { severity: string; message: string }[];
      }>('GET', '/v1/dashboard');
      const errors = d.warnings.filter((w) => w.severity === 'error');
      const failed = d.sources.find((s) => s.lastJob?.state === 'failed');
      return {
        ...base,
        health: { status: errors.length ? 'error' : d.warnings.some((w) => w.severity === 'warning') ? 'warning' : 'ok', warnings: d.warnings.filter((w) => w.severity !== 'info').map((w) => w.message) },
        jobs: { running: d.running.map((j) => ({ kind: j.kind, subject: j.subject })), lastFailed: failed ? `backup ${failed.name}: ${failed.lastJob?.error?.message ?? ''}` : null },
        storage: { repositoryBytes: d.storage.repoBytes ?? 0, snapshots: d.storage.snapshots, diskFreeBytes: await diskFree(this.installRoot) },
        sources: d.sources.map((s) => ({ name: s.name, lastBackup: s.lastSnapshot?.time ?? null })),
        targets: d.targets.map((t) => ({ name: t.name, lagSeconds: t.lagSeconds, lastError: t.lastError?.message ?? null })),
      };
    } catch (err) {
      return { ...base, health: { status: 'error', warnings: [`the engine does not answer: ${(err as Error).message}`] }, jobs: { running: [], lastFailed: null }, storage: {}, sources: [], targets: [] };
    }
  }

  /**
   * One heartbeat: report, then run what the answer carries (commands, then
   * an update). Returns the fleet's interval in seconds.
   */
  async heartbeat(): Promise<{ heartbeatSeconds: number; commands: number; update: { channel: string; version: string } | null }> {
    await this.#flushReports();
    const a = await this.fleet.call<{
      commands: { id: number; kind: string; args: Record<string, unknown> }[];
      update: { channel: string; version: string } | null; heartbeatSeconds: number; escrow: { sha256: string } | null;
    }>('POST', '/v1/heartbeat', await this.report());
    for (const c of a.commands) await this.#command(c);
    if (a.update) void this.update(a.update.channel, a.update.version).catch((err: unknown) => this.log.warn({ err, version: a.update?.version }, 'update did not happen'));
    await this.#escrow().catch((err: unknown) => this.log.warn({ err }, 'the configuration escrow was not uploaded; the next heartbeat tries again'));
    return { heartbeatSeconds: a.heartbeatSeconds, commands: a.commands.length, update: a.update };
  }

  async #command(c: { id: number; kind: string; args: Record<string, unknown> }): Promise<void> {
    let ok = true;
    let result: Record<string, unknown> = {};
    try {
      result = await this.#run(c.kind, c.args);
    } catch (err) {
      ok = false;
      result = { error: { code: errorCode(err) ?? 'HF_IO', message: (err as Error).message } };
      this.log.warn({ err, command: c.id, kind: c.kind }, 'a fleet command failed');
    }
    await this.fleet.call('POST', `/v1/commands/${c.id}/result`, ok ? { ok, result } : { ok, ...result });
  }

  async #run(kind: string, args: Record<string, unknown>): Promise<Record<string, unknown>> {
    switch (kind) {
      case 'run-job': {
        if (!this.#o.engine) throw new HoldfastError('HF_ENGINE_UNAVAILABLE', 'this agent has no engine to run jobs');
        const r = await this.#o.engine.call<{ job: { id: number } }>('POST', '/v1/jobs', { kind: args.job, ...(args.subject ? { subject: args.subject } : {}) });
        return { job: r.job.id };
      }
      case 'set': {
        if (args.key === 'channel' && (args.value === 'stable' || args.value === 'beta')) this.state.channel = args.value;
        else if (args.key === 'maintenance-window') {
          const w = args.value === null ? null : String(args.value);
          inMaintenanceWindow(w, new Date()); // validates
          this.state.maintenanceWindow = w;
        } else if (args.key === 'heartbeat-seconds' && Number.isInteger(args.value)) this.state.heartbeatSeconds = args.value as number;
        else throw new HoldfastError('HF_INVALID_ARGUMENT', `cannot set ${String(args.key)} to ${JSON.stringify(args.value)}`);
        await this.#save();
        return { [String(args.key)]: args.value };
      }
      case 'upgrade': {
        const r = await this.update(this.state.channel, String(args.version), { force: true });
        if (r.state === 'rolled-back') throw new HoldfastError('HF_UPDATE_FAILED', `${r.to} was rolled back to ${r.from}: ${r.reason}`);
        return r as unknown as Record<string, unknown>;
      }
      case 'rotate-key': {
        const old = this.identity.certPem;
        this.identity = await rotateIdentity(this.dataDir, this.identity, this.fleet);
        const previous = this.fleet;
        this.fleet = this.#client();
        this.#fetcher = this.#releaseFetcher();
        await previous.close();
        // The first request on the new key makes it current at the fleet (and revokes the old one).
        await this.fleet.call('GET', '/v1/whoami');
        return { rotated: old !== this.identity.certPem };
      }
      default:
        throw new HoldfastError('HF_PROTO_UNSUPPORTED', `this agent does not know the command ${kind}`);
    }
  }

  /** Uploads the engine's sealed configuration when it changed (the engine seals it to the customer's recovery key). */
  async #escrow(): Promise<void> {
    if (!this.#o.engine || this.#now() - this.#lastEscrowTry < 60_000) return;
    this.#lastEscrowTry = this.#now();
    // A replacement's own fresh engine must not become the newest escrow of the box it replaces before the restore.
    if (this.identity.replacement && !fs.existsSync(path.join(this.dataDir, RESTORED_MARKER))) return;
    const r = await this.#o.engine.raw('GET', '/v1/escrow', {});
    if (r.statusCode === 404) {
      await r.body.dump();
      return; // no escrow key (or nothing configured yet): the engine says why in its dashboard
    }
    if (r.statusCode >= 400) throw new HoldfastError('HF_ENGINE_UNAVAILABLE', `the engine refused GET /v1/escrow (${r.statusCode}): ${await r.body.text()}`);
    const sha = String(r.headers['x-holdfast-escrow-sha256'] ?? '');
    const blob = Buffer.from(await r.body.arrayBuffer());
    if (sha && sha === this.state.escrowSha256) return;
    await this.fleet.putBuffer('/v1/escrow', blob);
    this.state.escrowSha256 = sha || null;
    await this.#save();
  }

  /** Sends update outcomes the fleet has not acknowledged yet. */
  async #flushReports(): Promise<void> {
    while (this.state.reports.length > 0) {
      const r = this.state.reports[0]!;
      try {
        await this.fleet.call('POST', '/v1/updates/report', r);
      } catch (err) {
        if (errorCode(err) === 'HF_FLEET_UNREACHABLE' || errorCode(err) === 'HF_FLEET_UNAUTHORIZED') throw err;
        this.log.warn({ err, report: r }, 'the fleet refused an update report; dropping it');
      }
      this.state.reports.shift();
      await this.#save();
    }
  }

  async #report(r: UpdateReportPending): Promise<void> {
    this.state.reports.push(r);
    await this.#save();
    await this.#flushReports().catch((err: unknown) => this.log.warn({ err }, 'the update report waits for the next heartbeat'));
  }

  /**
   * Installs `version` of `channel` if it is newer than the running release
   * (never older: HF_UPDATE_DOWNGRADE), inside the maintenance window (unless
   * forced by an upgrade command), when no job runs. One update at a time.
   */
  update(channel: ReleaseChannel | string, version: string, o: { force?: boolean } = {}): Promise<UpdateOutcome> {
    this.#updating ??= this.#update(channel, version, o).finally(() => { this.#updating = null; });
    this.#lastUpdate = this.#updating;
    return this.#updating;
  }

  async #update(channel: string, version: string, o: { force?: boolean }): Promise<UpdateOutcome> {
    const from = await this.version();
    if (from === version) return { state: 'current' };
    if (compareVersions(version, from) < 0) throw new HoldfastError('HF_UPDATE_DOWNGRADE', `${version} is older than the running ${from}: updates never go backwards`);
    if (this.state.failedVersions.includes(version) && !o.force) return { state: 'skipped', reason: `${version} failed its health check here before` };
    if (!o.force && !inMaintenanceWindow(this.state.maintenanceWindow, new Date(this.#now()))) {
      this.#waiting = `${version} waits for the maintenance window (${this.state.maintenanceWindow})`;
      return { state: 'waiting', reason: this.#waiting };
    }
    if (channel !== 'stable' && channel !== 'beta') throw new HoldfastError('HF_INVALID_ARGUMENT', `no release channel ${channel}`);
    const info = await this.#fetcher.find(channel, version);
    const downloads = path.join(this.dataDir, 'downloads');
    await fsp.mkdir(downloads, { recursive: true, mode: 0o700 });
    const bundle = path.join(downloads, `holdfast-${version}.tar.gz`);
    if (!(await matches(bundle, info))) {
      this.log.info({ version, bytes: info.length }, 'downloading the release');
      await this.#fetcher.download(info, bundle);
    }
    // The update lock: no update while a job runs (the job is not interrupted; the update waits for it).
    if (this.#o.engine) {
      try {
        await this.#o.engine.call('POST', '/v1/update-lock', { holder: 'holdfast-agent' });
      } catch (err) {
        if (errorCode(err) !== 'HF_UPDATE_LOCKED') throw err;
        this.#waiting = `${version} is downloaded and waits for running jobs: ${(err as Error).message}`;
        this.log.info({ version }, this.#waiting);
        return { state: 'waiting', reason: this.#waiting };
      }
    }
    this.#waiting = null;
    try {
      await installRelease(this.installRoot, bundle, version);
    } catch (err) {
      await this.#o.engine?.call('DELETE', '/v1/update-lock?holder=holdfast-agent').catch(() => undefined);
      throw err;
    }
    this.state.update = { channel, from, to: version, phase: 'switched', at: new Date(this.#now()).toISOString() };
    await this.#save();
    await switchRelease(this.installRoot, version);
    this.log.info({ from, to: version }, 'switched to the new release; restarting the services');
    return this.#finishUpdate();
  }

  /** After the switch: health check, then keep it (report installed) or roll back (report failed). */
  async #finishUpdate(): Promise<UpdateOutcome> {
    const u = this.state.update!;
    const timeout = this.#o.healthTimeoutMs ?? 120_000;
    let reason: string | null = null;
    try {
      await this.#health(timeout);
    } catch (err) {
      reason = (err as Error).message;
    }
    if (reason === null) {
      this.state.update = null;
      await this.#save();
      await pruneReleases(this.installRoot, [u.to, u.from]);
      await fsp.rm(path.join(this.dataDir, 'downloads', `holdfast-${u.to}.tar.gz`), { force: true });
      this.log.info({ from: u.from, to: u.to }, 'the new release is healthy');
      await this.#report({ channel: u.channel, version: u.to, outcome: 'installed', detail: `from ${u.from}` });
      await this.#o.services.restartAgent();
      return { state: 'installed', from: u.from, to: u.to };
    }
    this.log.error({ from: u.from, to: u.to, reason }, 'the new release failed its health check; rolling back');
    this.state.update = { ...u, phase: 'rolling-back' };
    await this.#save();
    await switchRelease(this.installRoot, u.from);
    let back = 'the previous release is healthy again';
    try {
      await this.#health(timeout);
    } catch (err) {
      back = `the previous release did not come back either: ${(err as Error).message}`;
      this.log.error({ err }, back);
    }
    this.state.update = null;
    if (!this.state.failedVersions.includes(u.to)) this.state.failedVersions.push(u.to);
    await this.#save();
    await this.#report({ channel: u.channel, version: u.to, outcome: 'failed', detail: `${reason.slice(0, 300)}; rolled back to ${u.from} (${back})` });
    return { state: 'rolled-back', from: u.from, to: u.to, reason };
  }

  async #health(timeoutMs: number): Promise<void> {
    const started = this.#now();
    await this.#o.services.restart(timeoutMs);
    const cur = await currentRelease(this.installRoot);
    if (!cur) throw new HoldfastError('HF_UPDATE_FAILED', 'no current release after the switch');
    await runSelfTest(cur.dir, this.#o.selfTestArgs ?? [], Math.max(5_000, timeoutMs - (this.#now() - started)));
  }

  /** An agent that died between the switch and the report: check the release now, keep it or roll back. */
  async #resumeUpdate(): Promise<void> {
    const u = this.state.update;
    if (!u) return;
    this.log.warn({ update: u }, 'an update was interrupted; checking the release it left');
    if (u.phase === 'rolling-back') {
      await switchRelease(this.installRoot, u.from);
      await this.#o.services.restart(this.#o.healthTimeoutMs ?? 120_000).catch((err: unknown) => this.log.error({ err }, 'the previous release does not come up'));
      this.state.update = null;
      if (!this.state.failedVersions.includes(u.to)) this.state.failedVersions.push(u.to);
      await this.#save();
      await this.#report({ channel: u.channel, version: u.to, outcome: 'failed', detail: `the agent stopped during the rollback; rolled back to ${u.from}` });
      return;
    }
    await this.#finishUpdate();
  }

  /** Heartbeats until the signal aborts; an unreachable fleet is retried at the next interval. */
  async run(signal: AbortSignal, onBeat?: () => void): Promise<void> {
    let seconds = this.state.heartbeatSeconds ?? 300;
    while (!signal.aborted) {
      try {
        seconds = (await this.heartbeat()).heartbeatSeconds;
        onBeat?.();
      } catch (err) {
        this.log.warn({ err }, 'heartbeat failed; trying again at the next interval');
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, this.nextDelayMs(seconds));
        signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
      });
    }
    await this.#updating?.catch(() => undefined);
  }

  /** The latest update attempt (running or finished), if any: what the last heartbeat's offer came to. */
  get lastUpdate(): Promise<UpdateOutcome> | null {
    return this.#lastUpdate;
  }

  async close(): Promise<void> {
    await this.#updating?.catch(() => undefined);
    await this.fleet.close();
  }
}

/** Whether a bundle downloaded earlier (while an update waited) still has the signed length and hash. */
async function matches(file: string, info: ReleaseInfo): Promise<boolean> {
  try {
    if ((await fsp.stat(file)).size !== info.length) return false;
    const h = createHash('sha256');
    for await (const c of fs.createReadStream(file)) h.update(c as Buffer);
    return h.digest('hex') === info.sha256;
  } catch (err) {
    if (errorCode(err) === 'ENOENT') return false;
    throw err;
  }
}

async function diskFree(dir: string): Promise<number | null> {
  try {
    const s = await fsp.statfs(dir);
    return s.bavail * s.bsize;
  } catch {
    return null;
  }
}
