import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

import { localFiles, targetStatus } from '../replication/index.ts';
import type { EngineEvents } from './events.ts';
import type { EngineServices } from './services.ts';

/**
 * The engine's Prometheus metrics (prom-client), served at /metrics:
 * jobs by kind and outcome with their durations, bytes read and added by
 * backups, warnings, replication lag per target, repository size and
 * snapshot count, and Node's process metrics.
 */
export class EngineMetrics {
  readonly registry = new Registry();
  readonly #jobs = new Counter({ name: 'holdfast_jobs_total', help: 'Jobs finished, by kind and state', labelNames: ['kind', 'state'], registers: [this.registry] });
  readonly #duration = new Histogram({
    name: 'holdfast_job_duration_seconds', help: 'Job run time', labelNames: ['kind'], registers: [this.registry],
    buckets: [1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600],
  });
  readonly #running = new Gauge({ name: 'holdfast_jobs_running', help: 'Jobs running now', labelNames: ['kind'], registers: [this.registry] });
  readonly #read = new Counter({ name: 'holdfast_backup_bytes_read_total', help: 'Bytes backups read from sources', labelNames: ['source'], registers: [this.registry] });
  readonly #added = new Counter({ name: 'holdfast_backup_bytes_added_total', help: 'Bytes backups added to the repository', labelNames: ['source'], registers: [this.registry] });
  readonly #warnings = new Counter({ name: 'holdfast_backup_warnings_total', help: 'Files backups could not read', labelNames: ['source'], registers: [this.registry] });
  readonly #errors = new Counter({ name: 'holdfast_job_errors_total', help: 'Failed jobs by error code', labelNames: ['kind', 'code'], registers: [this.registry] });
  readonly #lag = new Gauge({ name: 'holdfast_replication_lag_seconds', help: 'Age of the oldest snapshot a target lacks', labelNames: ['target'], registers: [this.registry] });
  readonly #pending = new Gauge({ name: 'holdfast_replication_pending_bytes', help: 'Repository bytes a target lacks', labelNames: ['target'], registers: [this.registry] });
  readonly #repoBytes = new Gauge({ name: 'holdfast_repository_bytes', help: 'Bytes of the repository on disk', registers: [this.registry] });
  readonly #snapshots = new Gauge({ name: 'holdfast_snapshots', help: 'Snapshots in the repository', registers: [this.registry] });

  constructor(events: EngineEvents) {
    collectDefaultMetrics({ register: this.registry, prefix: 'holdfast_engine_' });
    events.on((e) => {
      if (e.type !== 'job') return;
      const j = e.job;
      if (j.state === 'running' && j.progress === null) this.#running.inc({ kind: j.kind });
      if (j.state === 'done' || j.state === 'failed' || j.state === 'cancelled') {
        this.#jobs.inc({ kind: j.kind, state: j.state });
        if (j.started !== null) {
          this.#running.dec({ kind: j.kind });
          if (j.finished !== null) this.#duration.observe({ kind: j.kind }, (j.finished - j.started) / 1000);
        }
        if (j.state === 'failed' && j.error) this.#errors.inc({ kind: j.kind, code: j.error.code });
      }
    });
  }

  backupDone(source: string, bytesRead: number, bytesAdded: number, warnings: number): void {
    this.#read.inc({ source }, bytesRead);
    this.#added.inc({ source }, bytesAdded);
    if (warnings > 0) this.#warnings.inc({ source }, warnings);
  }

  repository(bytes: number, snapshots: number): void {
    this.#repoBytes.set(bytes);
    this.#snapshots.set(snapshots);
  }

  /** Replication lag and pending bytes per target, from the last runs' records (no connection). */
  async refreshLag(svc: Pick<EngineServices, 'repo' | 'targets'>): Promise<void> {
    const targets = await svc.targets.list();
    const files = targets.length > 0 ? await localFiles(svc.repo.storage) : [];
    for (const t of targets) {
      const s = await targetStatus(svc.repo.storage, svc.targets, t, { probe: false, files });
      this.#lag.set({ target: t.name }, s.lagSeconds);
      this.#pending.set({ target: t.name }, s.pendingBytes);
    }
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
