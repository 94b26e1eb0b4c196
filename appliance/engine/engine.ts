import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import pino, { type Logger } from 'pino';

import { Catalog } from '../catalog/index.ts';
import { HoldfastError, errorCode } from '../errors/index.ts';
import { EscrowKeyPair } from '../escrow/index.ts';
import { Repository, type SnapshotId } from '../repository/index.ts';
import { TargetRegistry } from '../replication/index.ts';
import { listSnapshots } from '../snapshot/index.ts';
import { LocalStorage } from '../storage/index.ts';
import { Accounts } from './accounts.ts';
import { type ApiServer, startApi } from './api.ts';
import { type Clock, systemClock } from './clock.ts';
import { adoptEscrowKey, saveEscrowKey } from './escrow-export.ts';
import { EngineEvents } from './events.ts';
import { JobRunner } from './job-runner.ts';
import { reapWorkers, runInWorker } from './job-worker.ts';
import { jobTypes } from './jobs.ts';
import { EngineMetrics } from './metrics.ts';
import { Notifier } from './notifier.ts';
import { Scheduler } from './scheduler.ts';
import { ApplianceKey } from './secrets.ts';
import type { EngineServices } from './services.ts';
import { StateStore } from './state-store.ts';

export interface EngineOptions {
  /** The data directory: state database, appliance key, repository, catalog, socket (created 0700 if missing). */
  dataDir: string;
  /** The API's unix socket (default DATA_DIR/engine.sock). */
  socketPath?: string;
  /**
   * On first start only: an existing repository and its passphrase to use
   * (default: a new repository in DATA_DIR/repository, with a random
   * passphrase the engine keeps sealed, and a recovery key shown once at setup).
   */
  repo?: { dir: string; password: string };
  /** Directories restores may write into besides DATA_DIR/restores (admins restore "to another path" there). */
  restoreRoots?: string[];
  clock?: Clock;
  log?: Logger;
  /** Tick the scheduler on the real clock (default true; tests tick it by hand). */
  schedule?: boolean;
}

/** Files in the data directory. */
export function dataFiles(dataDir: string) {
  return {
    key: path.join(dataDir, 'appliance.key'),
    state: path.join(dataDir, 'state.sqlite'),
    repository: path.join(dataDir, 'repository'),
    cache: path.join(dataDir, 'cache'),
    socket: path.join(dataDir, 'engine.sock'),
    /** The CLI's credential for the API (root only): `Authorization: Local …`. */
    localToken: path.join(dataDir, 'local.token'),
    /** Prometheus's credential for /metrics: `Authorization: Bearer …` at the console. */
    metricsToken: path.join(dataDir, 'metrics.token'),
    restores: path.join(dataDir, 'restores'),
    pki: path.join(dataDir, 'pki'),
    /** One file per running job worker, named by its pid. */
    workers: path.join(dataDir, 'workers'),
  };
}

async function tokenFile(file: string): Promise<string> {
  try {
    const t = (await fsp.readFile(file, 'utf8')).trim();
    if (t.length >= 32) return t;
  } catch (err) {
    if (errorCode(err) !== 'ENOENT') throw err;
  }
  const t = randomBytes(32).toString('base64url');
  await fsp.writeFile(file, `${t}\n`, { mode: 0o600 });
  return t;
}

/**
 * holdfast-engine: owns the appliance's state and the repository, runs the
 * jobs (backup, replicate, prune, verify, restore) on schedule or on
 * request, and serves the appliance API on a unix socket (docs/DESIGN.md,
 * "Appliance"). One engine per data directory.
 */
export class Engine implements EngineServices {
  readonly dataDir: string;
  readonly workersDir: string;
  readonly cacheDir: string;
  readonly socketPath: string;
  readonly repo: Repository;
  readonly state: StateStore;
  readonly accounts: Accounts;
  readonly catalog: Catalog;
  readonly targets: TargetRegistry;
  readonly runner: JobRunner;
  readonly scheduler: Scheduler;
  readonly events = new EngineEvents();
  readonly metrics: EngineMetrics;
  readonly clock: Clock;
  readonly log: Logger;
  readonly localToken: string;
  readonly metricsToken: string;
  readonly notifier: Notifier;
  readonly restoreRoots: string[];
  readonly #schedule: boolean;
  #api: ApiServer | null = null;
  #catalogSync: Promise<void> | null = null;
  /** Snapshots the last catalog worker could not catalogue. */
  #uncatalogued = new Set<SnapshotId>();
  #afterWrite: Promise<void> = Promise.resolve();
  readonly #stopping = new AbortController();

  private constructor(o: {
    options: EngineOptions; repo: Repository; state: StateStore; catalog: Catalog; localToken: string; metricsToken: string; log: Logger; clock: Clock;
  }) {
    this.dataDir = o.options.dataDir;
    const files = dataFiles(this.dataDir);
    this.workersDir = files.workers;
    this.cacheDir = files.cache;
    this.socketPath = o.options.socketPath ?? files.socket;
    this.repo = o.repo;
    this.state = o.state;
    this.catalog = o.catalog;
    this.localToken = o.localToken;
    this.metricsToken = o.metricsToken;
    this.log = o.log;
    this.clock = o.clock;
    this.#schedule = o.options.schedule ?? true;
    this.restoreRoots = (o.options.restoreRoots ?? []).map((r) => path.resolve(r));
    this.accounts = new Accounts(this.state, this.clock);
    this.targets = new TargetRegistry(this.repo.storage.location);
    this.metrics = new EngineMetrics(this.events);
    this.runner = new JobRunner({ state: this.state, clock: this.clock, types: jobTypes(this), events: this.events, log: this.log });
    this.scheduler = new Scheduler({
      state: this.state, clock: this.clock,
      fire: async (s) => { await this.runner.request(s.job, s.subject, 'schedule', { schedule: s.id }); },
      onError: (s, err) => this.log.error({ err, schedule: s.id }, 'a scheduled job could not be requested'),
    });
    this.notifier = new Notifier(this.log);
  }

  static async open(options: EngineOptions): Promise<Engine> {
    const log = options.log ?? pino({ base: { service: 'holdfast-engine' } });
    const clock = options.clock ?? systemClock;
    const files = dataFiles(options.dataDir);
    await fsp.mkdir(options.dataDir, { recursive: true, mode: 0o700 });
    const key = await ApplianceKey.load(files.key);
    const state = await StateStore.open(files.state, key);
    const repo = await openRepository(state, files.repository, options.repo, log);
    await adoptEscrowKey(state, new Date(clock.now()).toISOString());
    repo.followWriters = true; // the job workers write to it
    // Workers a killed engine left may still hold the catalog or the repository's lock.
    const reaped = await reapWorkers(files.workers);
    if (reaped.length > 0) log.warn({ pids: reaped }, 'stopped job workers a previous engine left running');
    await fsp.mkdir(files.cache, { recursive: true, mode: 0o700 });
    const catalog = await Catalog.open(files.cache, repo.id);
    const [localToken, metricsToken] = await Promise.all([tokenFile(files.localToken), tokenFile(files.metricsToken)]);
    return new Engine({ options, repo, state, catalog, localToken, metricsToken, log, clock });
  }

  /** Resumes interrupted jobs, starts the scheduler, serves the API; then tells systemd it is ready. */
  async start(): Promise<void> {
    await this.runner.start();
    if (this.#schedule) this.scheduler.start();
    this.#api = await startApi(this, this.socketPath);
    this.syncCatalog().then(() => this.afterWrite('start')).catch((err: unknown) => this.log.warn({ err }, 'catalog sync at start failed'));
    this.events.on((e) => { if (e.type === 'job') this.notifier.jobStatus(this.runner.running()); });
    this.notifier.ready(() => this.healthy());
    this.log.info({ socket: this.socketPath, dataDir: this.dataDir, repository: this.repo.storage.location }, 'engine ready');
  }

  /** Whether the engine can do its work: the state database answers (the watchdog's test). */
  async healthy(): Promise<boolean> {
    try {
      await this.state.db.get('SELECT 1');
      return true;
    } catch {
      return false;
    }
  }

  async stop(): Promise<void> {
    this.notifier.stopping();
    await this.scheduler.stop();
    // jobs first: a job that ends while the engine stops is left to resume, never failed
    await this.runner.stop();
    await this.#api?.close();
    this.#stopping.abort(new HoldfastError('HF_INTERRUPTED', 'the engine is stopping'));
    await this.#catalogSync?.catch(() => undefined);
    await this.#afterWrite.catch(() => undefined);
    await this.catalog.close();
    await this.state.close();
    await this.repo.close();
  }

  async repoCredentials(): Promise<{ dir: string; password: string }> {
    const known = await this.state.getSealed<{ dir: string; password: string }>('repository');
    if (!known) throw new HoldfastError('HF_REPO_NOT_FOUND', 'the state database names no repository; start the engine again');
    return known;
  }

  async protectedIds(): Promise<SnapshotId[]> {
    return (await this.state.protectedSnapshots()) as SnapshotId[];
  }

  /** Snapshots a job worker could not catalogue (their trees are unreadable): browsing them does not start a sync each time. */
  uncatalogued(ids: readonly SnapshotId[]): void {
    for (const id of ids) this.#uncatalogued.add(id);
  }

  /**
   * Storage history and metrics after a job wrote (its worker catalogued
   * what it wrote); a prune also replaced index files. Never rejects: what
   * fails here is logged, and the job's own outcome stands.
   */
  afterWrite(by: 'backup' | 'prune' | 'start'): Promise<void> {
    const next = this.#afterWrite.catch(() => undefined).then(async () => {
      // A backup's new blobs are found on demand (followWriters); a prune's
      // deleted packs must not be read from, so its index is read again.
      if (by === 'prune') await this.repo.refreshIndex();
      const packs = await this.repo.storage.list('pack');
      const repoBytes = packs.reduce((a, p) => a + p.size, 0);
      const { snapshots } = await listSnapshots(this.repo, { cached: true });
      const latest = new Map<string, number>();
      for (const s of snapshots) latest.set(s.snapshot.tags.find((t) => t.startsWith('source:')) ?? `${s.snapshot.host}\0${s.snapshot.paths.join('\0')}`, s.snapshot.stats.bytes);
      const logical = [...latest.values()].reduce((a, b) => a + b, 0);
      await this.state.recordStorage(this.clock.now(), repoBytes, logical, snapshots.length);
      this.metrics.repository(repoBytes, snapshots.length);
      await this.metrics.refreshLag(this).catch(() => undefined);
    }).catch((err: unknown) => {
      this.log.warn({ err, after: by }, 'updating the storage history and metrics failed');
    });
    this.#afterWrite = next;
    return next;
  }

  /**
   * Makes sure a snapshot (perhaps written a moment ago by a job worker) is
   * in the catalog before it is browsed; one whose trees a sync could not
   * read is not tried again on every request (the next backup's sync does).
   */
  async catalogued(snapshot: SnapshotId): Promise<void> {
    if (this.#uncatalogued.has(snapshot) || await this.catalog.has(snapshot)) return;
    await this.syncCatalog();
  }

  /**
   * Catalogues what the catalog lacks, in a worker (the engine only reads
   * the catalog): at start, and when a snapshot is browsed before its
   * backup's worker catalogued it. One at a time; callers meanwhile share it.
   */
  syncCatalog(): Promise<void> {
    this.#catalogSync ??= (async () => {
      try {
        const r = await runInWorker(await this.repoCredentials(), { kind: 'catalog', cacheDir: this.cacheDir },
          { job: null, signal: this.#stopping.signal, progress: () => undefined, log: this.log }, this.workersDir);
        const c = r.catalog as { error?: string; damaged?: { id: SnapshotId; error: string }[] } | undefined;
        if (c?.error) this.log.warn({ error: c.error }, 'catalog sync failed; the next one catches up');
        this.#uncatalogued = new Set(c?.damaged?.map((d) => d.id) ?? []);
        if (c?.damaged?.length) this.log.warn({ damaged: c.damaged }, 'snapshots left out of the catalog: their trees cannot be read (run a verify)');
      } finally {
        this.#catalogSync = null;
      }
    })();
    return this.#catalogSync;
  }
}

/**
 * The repository the engine works on: the one it already knows (passphrase
 * sealed in the state database), else the one given on first start, else a
 * new one with a random passphrase. A repository in the way whose
 * passphrase the engine does not know is HF_REPO_EXISTS (say which one to
 * use: --repo and --password-file). A new repository's escrow public key
 * is kept beside it (an adopted one's is set with PUT /v1/escrow/key).
 */
async function openRepository(state: StateStore, defaultDir: string, given: EngineOptions['repo'], log: Logger): Promise<Repository> {
  const known = await state.getSealed<{ dir: string; password: string }>('repository');
  if (known) return Repository.open(new LocalStorage(known.dir), { password: known.password });
  if (given) {
    const dir = path.resolve(given.dir);
    const repo = await Repository.open(new LocalStorage(dir), { password: given.password });
    await state.setSealed('repository', { dir, password: given.password });
    log.info({ repository: dir }, 'using the given repository');
    return repo;
  }
  if (fs.existsSync(path.join(defaultDir, 'config'))) {
    throw new HoldfastError('HF_REPO_EXISTS',
      `${defaultDir} holds a repository this engine has no passphrase for: start it once with --repo ${defaultDir} --password-file FILE`);
  }
  const password = randomBytes(32).toString('base64url');
  const { repo, recoveryKey } = await Repository.init(new LocalStorage(defaultDir), password);
  await state.setSealed('repository', { dir: defaultDir, password });
  await state.setSealed('recovery-key', { key: recoveryKey, created: new Date().toISOString(), host: os.hostname() });
  // The escrow key is derived now, while the recovery key is known: setup forgets it.
  await saveEscrowKey(state, EscrowKeyPair.fromRecoveryKey(recoveryKey).publicKey, 'init', new Date().toISOString());
  log.info({ repository: defaultDir }, 'created the repository; its recovery key is shown once, at setup');
  return repo;
}
