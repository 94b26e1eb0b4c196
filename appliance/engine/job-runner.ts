import type { Logger } from 'pino';

import { HoldfastError, errorCode } from '../errors/index.ts';
import type { Clock } from './clock.ts';
import type { EngineEvents } from './events.ts';
import type { JobKind, JobRecord, StateStore } from './state-store.ts';

/** How a job shares the repository: as the repository's own locks (docs/DESIGN.md, "Locks"). */
export type JobLock = 'shared' | 'append' | 'exclusive';

export interface JobContext {
  job: JobRecord;
  signal: AbortSignal;
  /** Reports progress (kept, shown live, and saved every few seconds). */
  progress(p: Record<string, unknown>): void;
  log: Logger;
}

export interface JobType {
  lock: JobLock;
  /** Runs the job; resolves with its result (saved with the job). Rejects with a coded error. */
  run(ctx: JobContext): Promise<Record<string, unknown>>;
}

/** Attempts before a job that keeps being interrupted is given up. */
const MAX_ATTEMPTS = 3;
const SAVE_PROGRESS_MS = 2000;
const EMIT_PROGRESS_MS = 250;

function compatible(a: JobLock, b: JobLock): boolean {
  if (a === 'exclusive' || b === 'exclusive') return false;
  return !(a === 'append' && b === 'append');
}

interface Running {
  job: JobRecord;
  lock: JobLock;
  abort: AbortController;
  done: Promise<void>;
  lastSaved: number;
  lastEmitted: number;
}

/**
 * Runs jobs from the state database, one queue for all kinds.
 *
 * - A job is durable once requested (a row, state "queued"). Jobs found
 *   "running" when the engine starts were interrupted (the engine was
 *   killed, the box lost power): they are queued again and resume; a
 *   backup reuses what it stored (its packs are adopted), so nothing is
 *   stored twice. After 3 attempts a job fails.
 * - Jobs share the repository as its locks allow: any number of shared
 *   ones (restore, verify, replicate) beside one append job (backup);
 *   an exclusive one (prune) alone. Queued jobs start in order, each as
 *   soon as it is compatible with those running.
 * - One job per kind and subject is queued or running at a time: asking
 *   again returns the one there (restores excepted: each is its own).
 * - The update lock: held only while no job runs; while held, no job
 *   starts (they wait in the queue), so an update or a reboot never cuts
 *   a job short.
 */
export class JobRunner {
  readonly #state: StateStore;
  readonly #clock: Clock;
  readonly #types: Record<JobKind, JobType>;
  readonly #events: EngineEvents;
  readonly #log: Logger;
  readonly #running = new Map<number, Running>();
  #updateLock: string | null = null;
  #pumping: Promise<void> | null = null;
  #again = false;
  #stopped = false;

  constructor(options: { state: StateStore; clock: Clock; types: Record<JobKind, JobType>; events: EngineEvents; log: Logger }) {
    this.#state = options.state;
    this.#clock = options.clock;
    this.#types = options.types;
    this.#events = options.events;
    this.#log = options.log;
  }

  /** Queues interrupted jobs again, then starts what can start. */
  async start(): Promise<void> {
    for (const j of await this.#state.jobs({ states: ['running'], limit: 10_000 })) {
      if (j.attempts >= MAX_ATTEMPTS) {
        await this.#finish(j.id, 'failed', null, { code: 'HF_INTERRUPTED', message: `interrupted ${j.attempts} times; given up` });
      } else {
        await this.#state.updateJob(j.id, { state: 'queued' });
        this.#log.info({ job: j.id, kind: j.kind, subject: j.subject, attempts: j.attempts }, 'resuming an interrupted job');
      }
    }
    this.#pump();
  }

  /** Queues a job (or returns the queued or running one of the same kind and subject). */
  async request(kind: JobKind, subject: string | null, requestedBy: string, params: Record<string, unknown> = {}): Promise<{ job: JobRecord; existing: boolean }> {
    if (this.#stopped) throw new HoldfastError('HF_INTERRUPTED', 'the engine is stopping');
    if (kind !== 'restore') {
      const same = (await this.#state.jobs({ states: ['queued', 'running'], kind, limit: 1000 })).find((j) => j.subject === subject);
      if (same) return { job: same, existing: true };
    }
    const job = await this.#state.addJob({ kind, subject, requestedBy, created: this.#clock.now(), params });
    this.#events.emit({ type: 'job', job });
    this.#pump();
    return { job, existing: false };
  }

  /** Cancels a queued job, or stops a running one (it ends "cancelled"; what it stored is kept). */
  async cancel(id: number, by: string): Promise<JobRecord> {
    const job = await this.#state.job(id);
    if (!job) throw new HoldfastError('HF_NOT_FOUND', `no job ${id}`);
    const r = this.#running.get(id);
    if (r) {
      r.abort.abort(new HoldfastError('HF_INTERRUPTED', `cancelled by ${by}`));
      await r.done;
    } else if (job.state === 'queued') {
      await this.#finish(id, 'cancelled', null, { code: 'HF_INTERRUPTED', message: `cancelled by ${by}` });
    }
    return (await this.#state.job(id))!;
  }

  running(): JobRecord[] {
    return [...this.#running.values()].map((r) => r.job);
  }

  /** Takes the update lock for `holder`; HF_UPDATE_LOCKED while a job runs or another holds it. */
  acquireUpdateLock(holder: string): void {
    if (this.#updateLock !== null && this.#updateLock !== holder) {
      throw new HoldfastError('HF_UPDATE_LOCKED', `the update lock is held by ${this.#updateLock}`);
    }
    if (this.#running.size > 0) {
      const names = this.running().map((j) => `${j.kind}${j.subject ? ` ${j.subject}` : ''} (job ${j.id})`).join(', ');
      throw new HoldfastError('HF_UPDATE_LOCKED', `jobs are running: ${names}; try again when they are done`,
        { details: { running: this.running().map((j) => j.id) } });
    }
    this.#updateLock = holder;
  }

  releaseUpdateLock(holder: string): void {
    if (this.#updateLock === holder) this.#updateLock = null;
    this.#pump();
  }

  get updateLockHolder(): string | null {
    return this.#updateLock;
  }

  /** Stops: no new job starts; running ones are asked to stop and awaited (they resume at the next start). */
  async stop(): Promise<void> {
    this.#stopped = true;
    for (const r of this.#running.values()) r.abort.abort(new HoldfastError('HF_INTERRUPTED', 'the engine is stopping'));
    await Promise.allSettled([...this.#running.values()].map((r) => r.done));
    await this.#pumping;
  }

  /** Starts every queued job that may start now. Never runs twice at once. */
  #pump(): void {
    if (this.#pumping) {
      this.#again = true;
      return;
    }
    this.#pumping = (async () => {
      do {
        this.#again = false;
        if (this.#stopped || this.#updateLock !== null) break;
        const queued = (await this.#state.jobs({ states: ['queued'], limit: 1000 })).reverse(); // oldest first
        for (const j of queued) {
          const type = this.#types[j.kind];
          if (!type) {
            await this.#finish(j.id, 'failed', null, { code: 'HF_INVALID_ARGUMENT', message: `unknown job kind ${j.kind}` });
            continue;
          }
          const locks = [...this.#running.values()].map((r) => r.lock);
          if (!locks.every((l) => compatible(l, type.lock))) {
            // An exclusive job waits for the running ones, and nothing queued after it overtakes it.
            if (type.lock === 'exclusive') break;
            continue;
          }
          this.#launch(j, type);
        }
      } while (this.#again);
    })().catch((err: unknown) => {
      this.#log.error({ err }, 'the job queue failed');
    }).finally(() => {
      this.#pumping = null;
      if (this.#again) this.#pump();
    });
  }

  #launch(queued: JobRecord, type: JobType): void {
    const abort = new AbortController();
    const now = this.#clock.now();
    const job: JobRecord = { ...queued, state: 'running', started: now, attempts: queued.attempts + 1 };
    const r: Running = { job, lock: type.lock, abort, done: Promise.resolve(), lastSaved: 0, lastEmitted: 0 };
    this.#running.set(job.id, r);
    const log = this.#log.child({ job: job.id, kind: job.kind, subject: job.subject });
    r.done = (async () => {
      await this.#state.updateJob(job.id, { state: 'running', started: now, attempts: job.attempts });
      this.#events.emit({ type: 'job', job });
      log.info({ attempt: job.attempts }, 'job started');
      try {
        const result = await type.run({
          job, signal: abort.signal, log,
          progress: (p) => this.#progress(r, p),
        });
        await this.#finish(job.id, 'done', result, null);
        log.info({ result }, 'job done');
      } catch (err) {
        const cancelled = abort.signal.aborted;
        const code = errorCode(err) ?? 'HF_IO';
        const message = err instanceof Error ? err.message : String(err);
        const details = err instanceof HoldfastError ? err.details : undefined;
        if (cancelled && this.#stopped) {
          // The engine stops: the job is left "running" and resumes at the next start.
          log.info('job left to resume at the next start');
          return;
        }
        await this.#finish(job.id, cancelled ? 'cancelled' : 'failed', null, { code, message, ...(details ? { details } : {}) });
        log.warn({ code, message }, cancelled ? 'job cancelled' : 'job failed');
      }
    })().finally(() => {
      this.#running.delete(job.id);
      this.#pump();
    });
  }

  #progress(r: Running, p: Record<string, unknown>): void {
    r.job = { ...r.job, progress: p };
    const now = this.#clock.now();
    if (now - r.lastEmitted >= EMIT_PROGRESS_MS) {
      r.lastEmitted = now;
      this.#events.emit({ type: 'job', job: r.job });
    }
    if (now - r.lastSaved >= SAVE_PROGRESS_MS) {
      r.lastSaved = now;
      void this.#state.updateJob(r.job.id, { progress: p }).catch(() => undefined);
    }
  }

  async #finish(id: number, state: 'done' | 'failed' | 'cancelled', result: Record<string, unknown> | null,
    error: { code: string; message: string } | null): Promise<void> {
    const r = this.#running.get(id);
    await this.#state.updateJob(id, { state, finished: this.#clock.now(), result, error, ...(r?.job.progress ? { progress: r.job.progress } : {}) });
    // No longer running once it says so: listeners see the end and what still runs together.
    this.#running.delete(id);
    const job = await this.#state.job(id);
    if (job) this.#events.emit({ type: 'job', job });
  }
}
