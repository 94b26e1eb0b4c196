import { HoldfastError } from '../errors/index.ts';
import type { Repository, SnapshotId } from '../repository/index.ts';
import { type Decision, type RetentionPolicy, type SnapshotEntry, applyPolicy, listSnapshots, resolveSnapshot } from '../snapshot/index.ts';

export interface ForgetOptions {
  /** A retention policy, or explicit snapshots (ids or prefixes) to forget. */
  policy?: RetentionPolicy;
  snapshots?: string[];
  /** Snapshots kept whatever the policy says (an admin protected them). */
  protect?: readonly SnapshotId[];
  dryRun?: boolean;
}

export interface ForgetResult {
  decisions: Decision[];
  removed: SnapshotId[];
}

/**
 * Forgets snapshots (append lock: backups are excluded, readers are not).
 * Only snapshot files are removed; their data stays until `prune`.
 */
export async function forget(repo: Repository, options: ForgetOptions): Promise<ForgetResult> {
  const lock = await repo.lock('append', 'holdfast forget');
  try {
    const { snapshots } = await listSnapshots(repo);
    let decisions: Decision[];
    if (options.snapshots && options.snapshots.length > 0) {
      const chosen = new Set(options.snapshots.map((ref) => resolveSnapshot(snapshots, ref).id));
      decisions = snapshots.map((entry: SnapshotEntry) => ({
        entry, keep: !chosen.has(entry.id), reasons: chosen.has(entry.id) ? [] : ['not named'],
      }));
    } else if (options.policy) {
      decisions = applyPolicy(snapshots, options.policy);
    } else {
      throw new HoldfastError('HF_USAGE', 'name snapshots to forget, or give a retention policy (--keep-…)');
    }
    const protect = new Set(options.protect ?? []);
    for (const d of decisions) {
      if (d.keep || !protect.has(d.entry.id)) continue;
      d.keep = true;
      d.reasons.push('protected');
    }
    const removed: SnapshotId[] = [];
    if (!options.dryRun) {
      for (const d of decisions) {
        if (d.keep) continue;
        await repo.storage.remove('snapshot', d.entry.id);
        removed.push(d.entry.id);
      }
    }
    return { decisions, removed };
  } finally {
    await lock.release();
  }
}
