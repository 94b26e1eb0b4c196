import { HoldfastError } from '../errors/index.ts';
import {
  type BlobId, type BlobLocation, type IndexedPack, type PackId, type Repository, blobAad, encodeIndex, idBytes,
  shortId,
} from '../repository/index.ts';
import { decodeTree, listSnapshots } from '../snapshot/index.ts';
import { LocalStorage } from '../storage/index.ts';

export interface PruneOptions {
  /** Repack a pack whose unused share of bytes is at least this (default 0.2). */
  repackThreshold?: number;
  dryRun?: boolean;
  onProgress?: (p: { phase: string; done: number; total: number }) => void;
}

export interface PruneResult {
  dryRun: boolean;
  packsDeleted: number;
  packsRepacked: number;
  packsWritten: number;
  /** Packs no index listed (left by interrupted backups). */
  strayPacks: number;
  blobsRemoved: number;
  bytesBefore: number;
  bytesAfter: number;
}

/** Blobs per new index file. */
const INDEX_FILE_BLOBS = 100_000;

/**
 * Removes data no snapshot needs (exclusive lock).
 *
 * Marks every blob reachable from every snapshot; refuses to delete anything
 * if a snapshot, tree or referenced blob cannot be read (run check). Packs
 * with no used blob are deleted; packs mostly unused are repacked: their used
 * blobs are verified and copied verbatim into new packs. Crash-safe order:
 * new packs, then a complete new index, then the old index files are
 * removed, then the obsolete packs. At every step each needed blob is in a
 * pack that some index lists.
 */
export async function prune(repo: Repository, options: PruneOptions = {}): Promise<PruneResult> {
  const threshold = options.repackThreshold ?? 0.2;
  const lock = await repo.lock('exclusive', 'holdfast prune');
  try {
    await repo.loadIndex();
    const index = repo.index;
    const stored = new Map((await repo.storage.list('pack')).map((p) => [p.name as PackId, p.size]));

    // 1. Mark what the snapshots use.
    const used = new Uint8Array(index.blobCount);
    const { snapshots, damaged } = await listSnapshots(repo);
    if (damaged.length > 0) {
      throw new HoldfastError('HF_REPO_CORRUPT',
        `prune stopped, nothing deleted: snapshot ${shortId(damaged[0]!.id)} is unreadable (${damaged[0]!.error.message}); run \`holdfast check\``);
    }
    const mark = (id: BlobId, what: string): boolean => {
      const n = index.entryOf(id);
      if (n < 0) {
        throw new HoldfastError('HF_BLOB_MISSING',
          `prune stopped, nothing deleted: blob ${shortId(id)} of ${what} is in no pack; run \`holdfast check\``);
      }
      if (used[n]) return false;
      used[n] = 1;
      return true;
    };
    let done = 0;
    for (const s of snapshots) {
      options.onProgress?.({ phase: 'mark', done: done++, total: snapshots.length });
      const stack: BlobId[] = [];
      if (mark(s.snapshot.tree, `snapshot ${shortId(s.id)}`)) stack.push(s.snapshot.tree);
      while (stack.length > 0) {
        const tree = stack.pop()!;
        const nodes = decodeTree(await repo.loadBlob(tree), `tree ${shortId(tree)}`);
        for (const n of nodes) {
          for (const c of n.content ?? []) mark(c, `a file in snapshot ${shortId(s.id)}`);
          if (n.subtree && mark(n.subtree, `a directory in snapshot ${shortId(s.id)}`)) stack.push(n.subtree);
        }
      }
    }

    // 2. Decide per pack.
    const byPack = index.blobsByPack();
    const remove = new Set<PackId>();
    const repack: PackId[] = [];
    let blobsRemoved = 0;
    for (const [pack, blobs] of byPack) {
      const size = stored.get(pack) ?? 0;
      const usedBlobs = blobs.filter((b) => used[index.entryOf(b.id)]);
      blobsRemoved += blobs.length - usedBlobs.length;
      const usedBytes = usedBlobs.reduce((a, b) => a + b.length, 0);
      if (usedBlobs.length === 0) remove.add(pack);
      else if (size > 0 && 1 - usedBytes / size >= threshold) repack.push(pack);
    }
    const stray = [...stored.keys()].filter((p) => !byPack.has(p));
    const bytesBefore = [...stored.values()].reduce((a, b) => a + b, 0);
    const result: PruneResult = {
      dryRun: options.dryRun ?? false,
      packsDeleted: remove.size,
      packsRepacked: repack.length,
      packsWritten: 0,
      strayPacks: stray.length,
      blobsRemoved,
      bytesBefore,
      bytesAfter: bytesBefore,
    };
    if (options.dryRun || (remove.size === 0 && repack.length === 0 && stray.length === 0)) {
      const repackedUnused = repack.reduce((a, p) => a + (stored.get(p) ?? 0) - byPack.get(p)!
        .filter((b) => used[index.entryOf(b.id)]).reduce((x, b) => x + b.length, 0), 0);
      result.bytesAfter = bytesBefore - [...remove, ...stray].reduce((a, p) => a + (stored.get(p) ?? 0), 0) - repackedUnused;
      return result;
    }

    // 3. Copy the used blobs of mostly-unused packs, verified, into new packs.
    const writer = repo.writer({ keepEntries: true });
    done = 0;
    for (const pack of repack) {
      options.onProgress?.({ phase: 'repack', done: done++, total: repack.length });
      const bytes = await repo.storage.load('pack', pack);
      for (const b of byPack.get(pack)!) {
        if (!used[index.entryOf(b.id)]) continue;
        const sealed = bytes.subarray(b.offset, b.offset + b.length);
        await verify(repo, b, sealed);
        await writer.addSealed(b.type, b.id, sealed, b.rawLength);
      }
    }
    await writer.flush();
    result.packsWritten = writer.written!.length;

    // 4. A complete new index: kept packs as they are, plus the new packs.
    const repacked = new Set(repack);
    const kept: IndexedPack[] = [];
    for (const [pack, blobs] of byPack) {
      if (!remove.has(pack) && !repacked.has(pack)) kept.push({ pack, entries: blobs });
    }
    kept.push(...writer.written!);
    const newIndexFiles = new Set<string>();
    for (const group of groupPacks(kept, INDEX_FILE_BLOBS)) {
      newIndexFiles.add(await repo.saveFile('index', encodeIndex(group)));
    }

    // 5. Only now remove the other index files (the old ones, and the interim
    // one flush() wrote for the new packs), then the packs nothing lists.
    for (const f of await repo.storage.list('index')) {
      if (!newIndexFiles.has(f.name)) await repo.storage.remove('index', f.name);
    }
    for (const pack of [...remove, ...repack, ...stray]) await repo.storage.remove('pack', pack);
    if (repo.storage instanceof LocalStorage) await repo.storage.clearTemporary();
    result.bytesAfter = (await repo.storage.list('pack')).reduce((a, p) => a + p.size, 0);
    return result;
  } finally {
    await lock.release();
  }
}

async function verify(repo: Repository, b: BlobLocation, sealed: Buffer): Promise<void> {
  try {
    await repo.sealer.openSized(blobAad(b.type, b.id), sealed, b.rawLength, idBytes(b.id));
  } catch (cause) {
    throw new HoldfastError('HF_PACK_CORRUPT',
      `prune stopped before deleting anything: blob ${shortId(b.id)} in pack ${shortId(b.pack)} is damaged ` +
      `(${(cause as Error).message}); run \`holdfast check --read-data\``, { cause });
  }
}

function* groupPacks(packs: IndexedPack[], maxBlobs: number): Generator<IndexedPack[]> {
  let group: IndexedPack[] = [];
  let count = 0;
  for (const p of packs) {
    if (count > 0 && count + p.entries.length > maxBlobs) {
      yield group;
      group = [];
      count = 0;
    }
    group.push(p);
    count += p.entries.length;
  }
  if (group.length > 0) yield group;
}

