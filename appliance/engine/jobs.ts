import os from 'node:os';

import { HoldfastError } from '../errors/index.ts';
import type { SnapshotId } from '../repository/index.ts';
import type { JobContext, JobType } from './job-runner.ts';
import { type WorkerContext, runInWorker } from './job-worker.ts';
import type { EngineServices } from './services.ts';
import type { JobKind, SourceRecord } from './state-store.ts';

/** Verify reads one slice of the packs per run; this many runs read them all. */
export const VERIFY_SLICES = 30;

/** The host a source's snapshots are recorded under (its server; this box for local paths). */
export function sourceHost(src: SourceRecord): string {
  return src.spec.kind === 'local' ? os.hostname() : src.spec.host;
}

/**
 * The job kinds the engine runs: how each shares the repository, what it
 * takes from the engine's state, and what the engine does with its result.
 * The work itself runs in a job worker process (job-worker.ts, job-work.ts).
 */
export function jobTypes(svc: EngineServices): Record<JobKind, JobType> {
  return {
    backup: { lock: 'append', run: (ctx) => backupJob(svc, ctx) },
    replicate: { lock: 'shared', run: (ctx) => replicateJob(svc, ctx) },
    prune: { lock: 'exclusive', run: (ctx) => pruneJob(svc, ctx) },
    verify: { lock: 'shared', run: (ctx) => verifyJob(svc, ctx) },
    restore: { lock: 'shared', run: (ctx) => restoreJob(svc, ctx) },
  };
}

function worker(ctx: JobContext): WorkerContext {
  return { job: ctx.job.id, signal: ctx.signal, progress: (p) => ctx.progress(p), log: ctx.log };
}

async function backupJob(svc: EngineServices, ctx: JobContext): Promise<Record<string, unknown>> {
  const name = ctx.job.subject;
  const src = name ? await svc.state.source(name) : null;
  if (!src) throw new HoldfastError('HF_NOT_FOUND', `no source named ${name ?? '(none)'}; it was removed, or the job names none`);
  const secret = await svc.state.sourceSecret(src.name);
  const r = await runInWorker(await svc.repoCredentials(),
    { kind: 'backup', source: src, secret, host: sourceHost(src), time: svc.clock.now(), cacheDir: svc.cacheDir }, worker(ctx), svc.workersDir);
  await svc.afterWrite('backup');
  if (Array.isArray(r.catalogDamaged)) svc.uncatalogued(r.catalogDamaged as SnapshotId[]);
  svc.metrics.backupDone(src.name, Number(r.bytesRead), Number(r.bytesAdded), Number(r.warnings));
  return r;
}

async function replicateJob(svc: EngineServices, ctx: JobContext): Promise<Record<string, unknown>> {
  try {
    return await runInWorker(await svc.repoCredentials(), { kind: 'replicate', target: ctx.job.subject }, worker(ctx), svc.workersDir);
  } finally {
    await svc.metrics.refreshLag(svc).catch(() => undefined);
  }
}

async function pruneJob(svc: EngineServices, ctx: JobContext): Promise<Record<string, unknown>> {
  const policy = await svc.state.retention();
  try {
    return await runInWorker(await svc.repoCredentials(), { kind: 'prune', policy, protect: await svc.protectedIds(), cacheDir: svc.cacheDir }, worker(ctx), svc.workersDir);
  } finally {
    // what it forgot and deleted is gone even when it stopped half-way
    if (policy) await svc.afterWrite('prune');
  }
}

async function verifyJob(svc: EngineServices, ctx: JobContext): Promise<Record<string, unknown>> {
  const slice = Number(await svc.state.getMeta('verify:next-slice') ?? 0) % VERIFY_SLICES;
  const next = () => svc.state.setMeta('verify:next-slice', String((slice + 1) % VERIFY_SLICES));
  try {
    const r = await runInWorker(await svc.repoCredentials(), { kind: 'verify', slice, of: VERIFY_SLICES }, worker(ctx), svc.workersDir);
    await next();
    return r;
  } catch (err) {
    // a slice read to its end moves on, whatever it found
    if (err instanceof HoldfastError && err.code === 'HF_CHECK_FAILED') await next();
    throw err;
  }
}

async function restoreJob(svc: EngineServices, ctx: JobContext): Promise<Record<string, unknown>> {
  const p = ctx.job.params as { snapshot?: string; paths?: string[]; target?: string };
  if (typeof p.snapshot !== 'string' || typeof p.target !== 'string') {
    throw new HoldfastError('HF_INVALID_ARGUMENT', 'a restore names a snapshot and a target directory');
  }
  return runInWorker(await svc.repoCredentials(), { kind: 'restore', snapshot: p.snapshot, paths: p.paths ?? [], target: p.target }, worker(ctx), svc.workersDir);
}
