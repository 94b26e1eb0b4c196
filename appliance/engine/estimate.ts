// How much a backup has ahead of it, for its progress bar and ETA. A first
// backup has no earlier snapshot to go by, so the engine counts the source
// beside it (as restic's scanner does): a metadata-only walk over the same
// connection, a batch of directories at a time. Only an estimate: entries
// that cannot be listed are skipped, and files may change before the backup
// reaches them.
import type { Source, SourceEntry } from '../sources/index.ts';

const BATCH = 16;

export interface Estimate {
  files: number;
  bytes: number;
  /** The walk has seen everything. */
  complete: boolean;
}

/** Walks paths on source, calling onCount as the totals grow; stops early when signal aborts. */
export async function estimateSource(source: Source, paths: readonly string[], signal: AbortSignal, onCount: (e: Estimate) => void): Promise<Estimate> {
  const e: Estimate = { files: 0, bytes: 0, complete: false };
  const dirs: Buffer[] = [];
  const add = (s: Pick<SourceEntry, 'type' | 'size'>) => {
    if (s.type === 'file') { e.files++; e.bytes += s.size; }
  };
  for (const p of paths) {
    const b = Buffer.from(p);
    const st = await source.stat(b).catch(() => null);
    if (!st) continue;
    if (st.type === 'dir') dirs.push(b);
    else add(st);
  }
  while (dirs.length > 0) {
    if (signal.aborted) return e;
    const batch = dirs.splice(-BATCH);
    const listed = source.listMany
      ? await source.listMany(batch)
      : await Promise.all(batch.map((d) => source.list(d).catch((error: Error) => ({ error }))));
    for (let i = 0; i < batch.length; i++) {
      const l = listed[i]!;
      if ('error' in l) continue;
      const parent = batch[i]!;
      for (const entry of l.entries) {
        if (entry.type === 'dir') dirs.push(Buffer.concat([parent, parent.at(-1) === 0x2f ? Buffer.alloc(0) : Buffer.from('/'), entry.name]));
        else add(entry);
      }
    }
    onCount(e);
  }
  e.complete = true;
  onCount(e);
  return e;
}
