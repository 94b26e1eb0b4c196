// What each job does with the repository: run in a job worker process
// (job-worker.ts), never on the engine's event loop. Everything a job needs
// from the engine's state comes in its WorkSpec; what the engine does with
// the result (catalog, metrics, state) is in jobs.ts.
import { backup } from '../backup/index.ts';
import { Catalog } from '../catalog/index.ts';
import { HoldfastError } from '../errors/index.ts';
import { check, forget, prune } from '../maintenance/index.ts';
import { TargetRegistry, replicateTargets, useStreamingHeap } from '../replication/index.ts';
import type { Repository, SnapshotId } from '../repository/index.ts';
import { restore } from '../restore/index.ts';
import { type RetentionPolicy, listSnapshots, resolveSnapshot } from '../snapshot/index.ts';
import { type SourceCredentials, openSource } from '../sources/index.ts';
import { type Estimate, estimateSource } from './estimate.ts';
import type { SourceRecord, SourceSecret } from './state-store.ts';

const PROGRESS_MS = 500;

/** What a job worker is asked to do: a job's kind and everything it needs from the engine's state. */
export type WorkSpec =
  | { kind: 'backup'; source: SourceRecord; secret: SourceSecret; host: string; time: number; cacheDir: string }
  | { kind: 'replicate'; target: string | null }
  | { kind: 'prune'; policy: RetentionPolicy | null; protect: SnapshotId[]; cacheDir: string }
  | { kind: 'catalog'; cacheDir: string }
  | { kind: 'verify'; slice: number; of: number }
  | { kind: 'restore'; snapshot: string; paths: string[]; target: string };

export interface WorkContext {
  repo: Repository;
  signal: AbortSignal;
  progress(p: Record<string, unknown>): void;
}

/** The credentials a stored source connects with. */
export function sourceCredentials(secret: SourceSecret): SourceCredentials {
  return {
    ...(secret.password !== undefined ? { password: secret.password } : {}),
    ...(secret.identityKey !== undefined ? { identityKey: Buffer.from(secret.identityKey) } : {}),
    ...(secret.hostKey !== undefined ? { hostKey: secret.hostKey } : {}),
  };
}

/** Calls report every PROGRESS_MS until stop() is called. */
function ticker(report: () => void): { stop(): void } {
  const t = setInterval(report, PROGRESS_MS);
  t.unref();
  return { stop: () => { clearInterval(t); report(); } };
}

export function work(spec: WorkSpec, ctx: WorkContext): Promise<Record<string, unknown>> {
  switch (spec.kind) {
    case 'backup': return backupWork(spec, ctx);
    case 'replicate': return replicateWork(spec, ctx);
    case 'prune': return pruneWork(spec, ctx);
    case 'verify': return verifyWork(spec, ctx);
    case 'restore': return restoreWork(spec, ctx);
    case 'catalog': return syncCatalog(ctx.repo, spec.cacheDir, ctx.signal, true);
  }
}

/**
 * Brings the engine's catalog (in cacheDir) up to date with the repository.
 * Workers write the catalog, the engine only reads it, so that indexing a
 * large snapshot never holds up the API. A failure is reported in the
 * result, not thrown: the snapshot is stored, and the next sync catches up.
 * `lock`: take a shared repository lock for it (the engine's own catalog
 * worker, which is not a job: so that no prune deletes packs under it).
 */
async function syncCatalog(repo: Repository, cacheDir: string, signal: AbortSignal, lock = false): Promise<{ catalog: { added: number; removed: number; damaged: { id: SnapshotId; error: string }[] } | { error: string } }> {
  let catalog: Catalog | null = null;
  const held = lock ? await repo.lock('shared', 'holdfast engine: catalog').catch((err: unknown) => err as Error) : null;
  if (held instanceof Error) return { catalog: { error: held.message } };
  try {
    catalog = await Catalog.open(cacheDir, repo.id);
    // another worker's sync is waited for (between awaits: a cancel still arrives)
    return { catalog: await catalog.sync(repo, { signal, waitMs: 10 * 60_000 }) };
  } catch (err) {
    return { catalog: { error: err instanceof Error ? err.message : String(err) } };
  } finally {
    await catalog?.close().catch(() => undefined);
    await held?.release().catch(() => undefined);
  }
}

async function backupWork(spec: Extract<WorkSpec, { kind: 'backup' }>, ctx: WorkContext): Promise<Record<string, unknown>> {
  const src = spec.source;
  // The last snapshot of this source says how much to expect (for the
  // progress bar and ETA); a first backup counts the source beside it.
  const { snapshots } = await listSnapshots(ctx.repo);
  const previous = snapshots.filter((s) => s.snapshot.tags.includes(`source:${src.name}`)).at(-1) ?? null;
  let expected = previous?.snapshot.stats.bytes ?? null;
  let counted: Estimate | null = null;
  const started = performance.now();
  ctx.progress({ phase: 'connecting', source: src.name });
  const source = await openSource(src.spec, sourceCredentials(spec.secret));
  const counting = new AbortController();
  const estimate = previous ? null : estimateSource(source, src.spec.paths, AbortSignal.any([ctx.signal, counting.signal]), (e) => {
    counted = e;
    if (e.complete) expected = e.bytes;
  }).catch(() => null);
  let live: { archive: { files: number; bytes: number; bytesRead: number; filesRead: number }; writer: { bytesAdded: number } } | null = null;
  const report = () => {
    if (!live) return;
    const seconds = (performance.now() - started) / 1000;
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
    const r = await backup(ctx.repo, source, {
      paths: src.spec.paths, tags: [`source:${src.name}`], host: spec.host, signal: ctx.signal,
      onStart: (l) => { live = l; }, command: `holdfast engine: backup ${src.name}`, time: new Date(spec.time),
    });
    tick.stop();
    ctx.progress({ phase: 'cataloguing', source: src.name, percent: 100 });
    const { catalog } = await syncCatalog(ctx.repo, spec.cacheDir, ctx.signal);
    const st = r.snapshot.stats;
    return {
      snapshot: r.id, files: st.files, bytes: st.bytes, bytesRead: st.bytesRead, bytesAdded: st.bytesAdded,
      seconds: st.seconds, warnings: r.warnings.length, warningList: r.warnings.slice(0, 50), adoptedPacks: r.adopted.packs,
      ...('error' in catalog ? { catalogError: catalog.error } : { catalogDamaged: catalog.damaged.map((d) => d.id) }),
    };
  } finally {
    tick.stop();
    counting.abort();
    await estimate;
    await source.close();
  }
}

async function replicateWork(spec: Extract<WorkSpec, { kind: 'replicate' }>, ctx: WorkContext): Promise<Record<string, unknown>> {
  const registry = new TargetRegistry(ctx.repo.storage.location);
  const all = await registry.list();
  const targets = spec.target ? all.filter((t) => t.name === spec.target) : all;
  if (spec.target && targets.length === 0) throw new HoldfastError('HF_TARGET_NOT_FOUND', `no replication target named ${spec.target}`);
  if (targets.length === 0) return { targets: [] };
  useStreamingHeap(); // (this job's process only)
  const per: Record<string, { bytes: number; bytesTotal: number }> = {};
  const runs = await replicateTargets(ctx.repo.storage, registry, targets, {
    signal: ctx.signal,
    onProgress: (target, p) => {
      per[target] = { bytes: p.bytes, bytesTotal: p.bytesTotal };
      const sent = Object.values(per).reduce((a, x) => a + x.bytes, 0);
      const total = Object.values(per).reduce((a, x) => a + x.bytesTotal, 0);
      ctx.progress({ phase: p.phase, targets: per, bytes: sent, bytesTotal: total, percent: total ? Math.floor((100 * sent) / total) : null });
    },
  });
  const failed = runs.filter((r) => !r.ok);
  const result = { targets: runs.map((r) => ({ target: r.target, ok: r.ok, error: r.error ?? null, sentBytes: r.result?.sent ?? 0, sentFiles: r.result?.sentFiles ?? 0 })) };
  if (failed.length > 0) {
    throw new HoldfastError((failed[0]!.error?.code ?? 'HF_TARGET_UNREACHABLE') as 'HF_TARGET_UNREACHABLE',
      failed.map((f) => `${f.target}: ${f.error?.message ?? 'failed'}`).join('; '), { details: result });
  }
  return result;
}

async function pruneWork(spec: Extract<WorkSpec, { kind: 'prune' }>, ctx: WorkContext): Promise<Record<string, unknown>> {
  if (!spec.policy) return { forgotten: 0, note: 'no retention policy is set: nothing is forgotten' };
  ctx.progress({ phase: 'forgetting' });
  const f = await forget(ctx.repo, { policy: spec.policy, protect: spec.protect });
  if (ctx.signal.aborted) throw ctx.signal.reason;
  const p = await prune(ctx.repo, { onProgress: (x) => ctx.progress({ phase: x.phase, done: x.done, total: x.total }) });
  ctx.progress({ phase: 'cataloguing' });
  const { catalog } = await syncCatalog(ctx.repo, spec.cacheDir, ctx.signal);
  return { ...('error' in catalog ? { catalogError: catalog.error } : {}), forgotten: f.removed.length, kept: f.decisions.filter((d) => d.keep).length, packsDeleted: p.packsDeleted, packsRepacked: p.packsRepacked, bytesBefore: p.bytesBefore, bytesAfter: p.bytesAfter };
}

async function verifyWork(spec: Extract<WorkSpec, { kind: 'verify' }>, ctx: WorkContext): Promise<Record<string, unknown>> {
  const { slice, of } = spec;
  const r = await check(ctx.repo, {
    readData: { slice, of },
    onProgress: (p) => ctx.progress({ phase: p.phase, done: p.done, total: p.total, slice, of }),
  });
  const summary = {
    slice, of, packsRead: r.stats.packsRead, bytesRead: r.stats.bytesRead, problems: r.problems.length,
    damagedPacks: r.damagedPacks, affected: r.affected.slice(0, 20), notes: r.notes,
  };
  if (!r.ok) {
    throw new HoldfastError('HF_CHECK_FAILED',
      `verify found ${r.problems.length} problem(s): ${r.problems.slice(0, 3).map((p) => p.message).join('; ')}`, { details: summary });
  }
  return summary;
}

async function restoreWork(spec: Extract<WorkSpec, { kind: 'restore' }>, ctx: WorkContext): Promise<Record<string, unknown>> {
  const { snapshots } = await listSnapshots(ctx.repo);
  const s = resolveSnapshot(snapshots, spec.snapshot);
  const expected = spec.paths.length === 0 ? s.snapshot.stats.bytes : null;
  const started = performance.now();
  let live: { files: number; bytes: number; failed: number } | null = null;
  const tick = ticker(() => {
    if (!live) return;
    const seconds = (performance.now() - started) / 1000;
    ctx.progress({
      phase: 'restoring', files: live.files, bytes: live.bytes, failed: live.failed, seconds: Math.round(seconds),
      rate: seconds > 0 ? Math.round(live.bytes / seconds) : 0, expectedBytes: expected,
      percent: expected ? Math.min(99, Math.floor((100 * live.bytes) / Math.max(expected, 1))) : null,
      etaSeconds: expected && live.bytes > 0 ? Math.round(((expected - live.bytes) / live.bytes) * seconds) : null,
    });
  });
  try {
    const r = await restore(ctx.repo, s.snapshot, {
      target: spec.target, ...(spec.paths.length > 0 ? { include: spec.paths } : {}), signal: ctx.signal,
      onStart: (st) => { live = st; },
    });
    return { snapshot: s.id, target: spec.target, ...r.stats, seconds: r.seconds, warnings: r.warnings.length, warningList: r.warnings.slice(0, 50) };
  } finally {
    tick.stop();
  }
}
