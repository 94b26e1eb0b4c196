import type { Logger } from 'pino';

import type { Catalog } from '../catalog/index.ts';
import type { Repository, SnapshotId } from '../repository/index.ts';
import type { TargetRegistry } from '../replication/index.ts';
import type { Accounts } from './accounts.ts';
import type { Clock } from './clock.ts';
import type { EngineEvents } from './events.ts';
import type { JobRunner } from './job-runner.ts';
import type { EngineMetrics } from './metrics.ts';
import type { Scheduler } from './scheduler.ts';
import type { StateStore } from './state-store.ts';

/** What the engine's parts (jobs, the API) share. The engine owns each; they must not close them. */
export interface EngineServices {
  dataDir: string;
  /** Pids of the running job workers (job-worker.ts). */
  workersDir: string;
  /** The catalog's directory (job workers write the catalog there; the engine reads it). */
  cacheDir: string;
  repo: Repository;
  state: StateStore;
  accounts: Accounts;
  catalog: Catalog;
  targets: TargetRegistry;
  runner: JobRunner;
  scheduler: Scheduler;
  events: EngineEvents;
  metrics: EngineMetrics;
  clock: Clock;
  log: Logger;
  /** Where the repository is and its passphrase (sealed in the state database): for job workers. */
  repoCredentials(): Promise<{ dir: string; password: string }>;
  /** Snapshots an admin protected from retention. */
  protectedIds(): Promise<SnapshotId[]>;
  /** After a job wrote to the repository (its worker catalogued it): storage history and metrics updated; after a prune, the index read again. */
  afterWrite(by: 'backup' | 'prune' | 'start'): Promise<void>;
  /** Snapshots a job worker could not catalogue. */
  uncatalogued(ids: readonly SnapshotId[]): void;
}
