import os from 'node:os';

import { backup } from '../backup/index.ts';
import { HoldfastError } from '../errors/index.ts';
import { check, forget, packSlice, prune } from '../maintenance/index.ts';
import { replicateTargets } from '../replication/index.ts';
import { restore } from '../restore/index.ts';
import { listSnapshots, resolveSnapshot } from '../snapshot/index.ts';
import { type Source, type SourceCredentials, openSource } from '../sources/index.ts';
import { type Estimate, estimateSource } from './estimate.ts';
import type { JobContext, JobType } from './job-runner.ts';
import type { EngineServices } from './services.ts';
import type { JobKind, SourceRecord, SourceSecret } from './state-store.ts';

/** Verify reads one slice of the packs per run; this many runs read them all. */
export const VERIFY_SLICES = 30;
const PROGRESS_MS = 500;

/** The credentials a stored source connects with. */
export function sourceCredentials(secret: SourceSecret): SourceCredentials {
  return {
    ...(secret.password !== undefined ? { password: secret.password } : {}),
    ...(secret.identityKey !== undefined ? { identityKey: Buffer.from(secret.identityKey) } : {}),
    ...(secret.hostKey !== undefined ? { hostKey: secret.hostKey } : {}),
  };
}

export async function connectSource(svc: EngineServices, src: SourceRecord): Promise<Source> {
  return openSource(src.spec, sourceCredentials(await svc.state.sourceSecret(src.name)));
}

/** The host a source's snapshots are recorded under (its server; this box for local paths). */
export function sourceHost(src: SourceRecord): string {
  return src.spec.kind === 'local' ? os.hostname() : src.spec.host;
}

/** Calls report every PROGRESS_MS until stop() is called. */
function ticker(report: () => void): { stop(): void } {
  const t = setInterval(report, PROGRESS_MS);
  t.unref();
  return { stop: () => { clearInterval(t); report(); } };
}

/** The job kinds the engine runs: what each does, and how it shares the repository. */
export function jobTypes(svc: EngineServices): Record<JobKind, JobType> {
  return {
    backup: { lock: 'append', run: (ctx) => backupJob(svc, ctx) },
    replicate: { lock: 'shared', run: (ctx) => replicateJob(svc, ctx) },
    prune: { lock: 'exclusive', run: (ctx) => pruneJob(svc, ctx) },
    verify: { lock: 'shared', run: (ctx) => verifyJob(svc, ctx) },
    restore: { lock: 'shared', run: (ctx) => restoreJob(svc, ctx) },
  };
}

async function backupJob(svc: EngineServices, ctx: JobContext): Promise<Record<string, unknown>> {
  const name = ctx.job.subject;
  const src = name ? await svc.state.source(name) : null;
  if (!src) throw new HoldfastError('HF_NOT_FOUND', `no source named ${name ?? '(none)'}; it was removed, or the job names none`);
  // The last snapshot of this source says how much to expect (for the
  // progress bar and ETA); a first backup counts the source beside it.
  const { snapshots } = await listSnapshots(svc.repo);
  const previous = snapshots.filter((s) => s.snapshot.tags.includes(`source:${src.name}`)).at(-1) ?? null;
  let expected = previous?.snapshot.stats.bytes ?? null;
  let counted: Estimate | null = null;
  const started = svc.clock.now();
  ctx.progress({ phase: 'connecting', source: src.name });
  const source = await connectSource(svc, src);
  const counting = new AbortController();
  const estimate = previous ? null : estimateSource(source, src.spec.paths, AbortSignal.any([ctx.signal, counting.signal]), (e) => {
    counted = e;
    if (e.complete) expected = e.bytes;
  }).catch(() => null);
  let live: { archive: { files: number; bytes: number; bytesRead: number; filesRead: number }; writer: { bytesAdded: number } } | null = null;
  const report = () => {
    if (!live) return;
    const seconds = (svc.clock.now() - started) / 1000;
    const done = live.archive.bytes;
    const rate = seconds > 0 ? live.archive.bytesRead / seconds : 0;
    const percent = expected ? Math.min(99, Math.floor((100 * done) / Math.max(expected, 1))) : null;
    const eta = expected && done > 0 && seconds > 1 ? Math.max(0, Math.round(((expected - done) / done) * seconds)) : null;
    const c = counted as Estimate | null;
    ctx.progress({
      phase: 'backing up', source: src.name, files: live.archive.files, bytes: done, bytesRead: live.archive.bytesRead,
      bytesAdded: live.writer.bytesAdded, seconds: Math.round(seconds), rate: Math.round(rate), expectedBytes: expected, percent, etaSeconds: eta,
      ...(c && !c.complete ? { counting: { files: c.files, bytes: c.bytes } } : {}),
    });
  };
  const tick = ticker(report);
  try {
    const r = await backup(svc.repo, source, {
      paths: src.spec.paths, tags: [`source:${src.name}`], host: sourceHost(src), signal: ctx.signal,
      onStart: (l) => { live = l; }, command: `holdfast engine: backup ${src.name}`, time: new Date(svc.clock.now()),
    });
    tick.stop();
    ctx.progress({ phase: 'cataloguing', source: src.name, percent: 100 });
    await svc.afterWrite();
    const st = r.snapshot.stats;
    svc.metrics.backupDone(src.name, st.bytesRead, st.bytesAdded, r.warnings.length);
    return {
      snapshot: r.id, files: st.files, bytes: st.bytes, bytesRead: st.bytesRead, bytesAdded: st.bytesAdded,
      seconds: st.seconds, warnings: r.warnings.length, warningList: r.warnings.slice(0, 50), adoptedPacks: r.adopted.packs,
    };
  } finally {
    tick.stop();
    counting.abort();
    await estimate;
    await source.close();
  }
}

async function replicateJob(svc: EngineServices, ctx: JobContext): Promise<Record<string, unknown>> {
  const all = await svc.targets.list();
  const targets = ctx.job.subject ? all.filter((t) => t.name === ctx.job.subject) : all;
  if (ctx.job.subject && targets.length === 0) throw new HoldfastError('HF_TARGET_NOT_FOUND', `no replication target named ${ctx.job.subject}`);
  if (targets.length === 0) return { targets: [] };
  const per: Record<string, { bytes: number; bytesTotal: number }> = {};
  const runs = await replicateTargets(svc.repo.storage, svc.targets, targets, {
    signal: ctx.signal,
    onProgress: (target, p) => {
      per[target] = { bytes: p.bytes, bytesTotal: p.bytesTotal };
      const sent = Object.values(per).reduce((a, x) => a + x.bytes, 0);
      const total = Object.values(per).reduce((a, x) => a + x.bytesTotal, 0);
      ctx.progress({ phase: p.phase, targets: per, bytes: sent, bytesTotal: total, percent: total ? Math.floor((100 * sent) / total) : null });
    },
  });
  await svc.metrics.refreshLag(svc);
  const failed = runs.filter((r) => !r.ok);
  const result = { targets: runs.map((r) => ({ target: r.target, ok: r.ok, error: r.error ?? null, sentBytes: r.result?.sent ?? 0, sentFiles: r.result?.sentFiles ?? 0 })) };
  if (failed.length > 0) {
    throw new HoldfastError((failed[0]!.error?.code ?? 'HF_TARGET_UNREACHABLE') as 'HF_TARGET_UNREACHABLE',
      failed.map((f) => `${f.target}: ${f.error?.message ?? 'failed'}`).join('; '), { details: result });
  }
  return result;
}

async function pruneJob(svc: EngineServices, ctx: JobContext): Promise<Record<string, unknown>> {
  const policy = await svc.state.retention();
  if (!policy) return { forgotten: 0, note: 'no retention policy is set: nothing is forgotten' };
  ctx.progress({ phase: 'forgetting' });
  const f = await forget(svc.repo, { policy, protect: await svc.protectedIds() });
  if (ctx.signal.aborted) throw ctx.signal.reason;
  const p = await prune(svc.repo, { onProgress: (x) => ctx.progress({ phase: x.phase, done: x.done, total: x.total }) });
  await svc.afterWrite();
  return { forgotten: f.removed.length, kept: f.decisions.filter((d) => d.keep).length, packsDeleted: p.packsDeleted, packsRepacked: p.packsRepacked, bytesBefore: p.bytesBefore, bytesAfter: p.bytesAfter };
}

async function verifyJob(svc: EngineServices, ctx: JobContext): Promise<Record<string, unknown>> {
  const slice = Number(await svc.state.getMeta('verify:next-slice') ?? 0) % VERIFY_SLICES;
  const r = await check(svc.repo, {
    readData: { slice, of: VERIFY_SLICES },
    onProgress: (p) => ctx.progress({ phase: p.phase, done: p.done, total: p.total, slice, of: VERIFY_SLICES }),
  });
  await svc.state.setMeta('verify:next-slice', String((slice + 1) % VERIFY_SLICES));
  const summary = {
    slice, of: VERIFY_SLICES, packsRead: r.stats.packsRead, bytesRead: r.stats.bytesRead, problems: r.problems.length,
    damagedPacks: r.damagedPacks, affected: r.affected.slice(0, 20), notes: r.notes,
  };
  if (!r.ok) {
    throw new HoldfastError('HF_CHECK_FAILED',
      `verify found ${r.problems.length} problem(s): ${r.problems.slice(0, 3).map((p) => p.message).join('; ')}`, { details: summary });
  }
  return summary;
}

async function restoreJob(svc: EngineServices, ctx: JobContext): Promise<Record<string, unknown>> {
  const p = ctx.job.params as { snapshot?: string; paths?: string[]; target?: string };
  if (typeof p.snapshot !== 'string' || typeof p.target !== 'string') {
    throw new HoldfastError('HF_INVALID_ARGUMENT', 'a restore names a snapshot and a target directory');
  }
  const { snapshots } = await listSnapshots(svc.repo);
  const s = resolveSnapshot(snapshots, p.snapshot);
  const expected = !p.paths?.length ? s.snapshot.stats.bytes : null;
  const started = svc.clock.now();
  let live: { files: number; bytes: number; failed: number } | null = null;
  const tick = ticker(() => {
    if (!live) return;
    const seconds = (svc.clock.now() - started) / 1000;
    ctx.progress({
      phase: 'restoring', files: live.files, bytes: live.bytes, failed: live.failed, seconds: Math.round(seconds),
      rate: seconds > 0 ? Math.round(live.bytes / seconds) : 0, expectedBytes: expected,
      percent: expected ? Math.min(99, Math.floor((100 * live.bytes) / Math.max(expected, 1))) : null,
      etaSeconds: expected && live.bytes > 0 ? Math.round(((expected - live.bytes) / live.bytes) * seconds) : null,
    });
  });
  try {
    const r = await restore(svc.repo, s.snapshot, {
      target: p.target, ...(p.paths?.length ? { include: p.paths } : {}), signal: ctx.signal,
      onStart: (st) => { live = st; },
    });
    return { snapshot: s.id, target: p.target, ...r.stats, seconds: r.seconds, warnings: r.warnings.length, warningList: r.warnings.slice(0, 50) };
  } finally {
    tick.stop();
  }
}

export { packSlice };
