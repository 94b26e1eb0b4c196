import { randomInt } from 'node:crypto';

import { sha256 } from '../../native/index.ts';
import { HoldfastError, hasCode } from '../errors/index.ts';
import {
  type BlobId, type BlobLocation, type PackId, type Repository, type SnapshotId, blobAad,
  forEachLimit, idBytes, readPackHeader, shortId,
} from '../repository/index.ts';
import { type SnapshotEntry, type TreeNode, decodeTree, displayName, listSnapshots } from '../snapshot/index.ts';
import { LocalStorage } from '../storage/index.ts';

export interface CheckOptions {
  /**
   * Read and verify pack contents: all packs, a fraction (0..1] chosen at
   * random, or slice `slice` of `of` (the packs whose id, as a number, is
   * slice modulo of): running slices 0…of-1 in turn reads every pack.
   */
  readData?: { fraction: number } | { slice: number; of: number } | null;
  onProgress?: (p: { phase: string; done: number; total: number }) => void;
}

export interface CheckProblem {
  kind: 'index' | 'pack' | 'snapshot' | 'tree' | 'blob';
  id: string;
  message: string;
}

export interface AffectedSnapshot {
  snapshot: SnapshotId;
  time: string;
  /** Files (and directories, for damaged trees) that cannot be fully restored. */
  paths: string[];
}

export interface CheckResult {
  ok: boolean;
  problems: CheckProblem[];
  /** Not errors: leftovers of interrupted writers, and the like. */
  notes: string[];
  damagedPacks: PackId[];
  affected: AffectedSnapshot[];
  stats: { snapshots: number; trees: number; blobs: number; packs: number; packsRead: number; bytesRead: number };
}

/**
 * Checks a repository without changing it (shared lock).
 *
 * Structure: every index file opens; every indexed pack exists, is at least
 * as long as its blobs, and its header lists exactly what the index says;
 * every snapshot and tree opens and is well formed; every blob a tree refers
 * to is indexed. With readData, whole packs are read: the file must hash to
 * its name, and every blob must decrypt, decompress and match its id.
 * Damaged or missing blobs are traced to the snapshots and files they
 * belong to. Packs no index lists (an interrupted backup's) are notes.
 */
export async function check(repo: Repository, options: CheckOptions = {}): Promise<CheckResult> {
  const lock = await repo.lock('shared', 'holdfast check');
  try {
    return await new Checker(repo, options).run();
  } finally {
    await lock.release();
  }
}

class Checker {
  readonly #repo: Repository;
  readonly #options: CheckOptions;
  readonly problems: CheckProblem[] = [];
  readonly notes: string[] = [];
  readonly #badBlobs = new Map<BlobId, string>();
  readonly #badPacks = new Set<PackId>();
  readonly #stats = { snapshots: 0, trees: 0, blobs: 0, packs: 0, packsRead: 0, bytesRead: 0 };

  constructor(repo: Repository, options: CheckOptions) {
    this.#repo = repo;
    this.#options = options;
  }

  #problem(kind: CheckProblem['kind'], id: string, message: string): void {
    this.problems.push({ kind, id, message });
  }

  async run(): Promise<CheckResult> {
    const repo = this.#repo;
    await this.#loadIndex();
    const byPack = repo.index.blobsByPack();
    this.#stats.packs = byPack.size;
    this.#stats.blobs = repo.index.blobCount;

    const stored = new Map((await repo.storage.list('pack')).map((p) => [p.name as PackId, p.size]));
    await this.#checkPacks(byPack, stored);
    const unindexed = (await repo.unindexedPacks()).map((p) => p.name).filter((p) => !byPack.has(p));
    if (unindexed.length > 0) {
      this.notes.push(`${unindexed.length} pack(s) are in no index: left by an interrupted backup; ` +
        'the next backup takes them in, `holdfast prune` removes them');
    }
    if (repo.storage instanceof LocalStorage) {
      const tmp = await repo.storage.listTemporary();
      if (tmp.length > 0) this.notes.push(`${tmp.length} temporary file(s) in tmp/ from an interrupted writer; the next backup removes them`);
    }

    const { snapshots, damaged } = await listSnapshots(repo);
    for (const d of damaged) this.#problem('snapshot', d.id, d.error.message);
    this.#stats.snapshots = snapshots.length;
    await this.#checkTrees(snapshots);

    if (this.#options.readData) await this.#readData(byPack, stored, this.#options.readData);

    const affected = this.#badBlobs.size > 0 ? await this.#trace(snapshots) : [];
    return {
      ok: this.problems.length === 0,
      problems: this.problems,
      notes: this.notes,
      damagedPacks: [...this.#badPacks],
      affected,
      stats: this.#stats,
    };
  }

  async #loadIndex(): Promise<void> {
    await this.#repo.loadIndex();
    for (const d of this.#repo.damagedIndexFiles) {
      const reason = d.error.message.replace(/; run `holdfast check`$/, '');
      this.#problem('index', d.name, `${reason}. Its packs are read from their own headers meanwhile; the next backup ` +
        'writes a new index for them, and `holdfast prune` then removes the damaged file');
    }
  }

  #damage(pack: PackId, blobs: Iterable<BlobLocation>, why: string): void {
    this.#badPacks.add(pack);
    for (const b of blobs) if (!this.#badBlobs.has(b.id)) this.#badBlobs.set(b.id, why);
  }

  async #checkPacks(byPack: Map<PackId, BlobLocation[]>, stored: Map<PackId, number>): Promise<void> {
    const packs = [...byPack];
    let done = 0;
    await forEachLimit(packs, 8, async ([pack, blobs]) => {
      this.#options.onProgress?.({ phase: 'packs', done: done++, total: packs.length });
      const size = stored.get(pack);
      const what = `pack ${shortId(pack)}`;
      if (size === undefined) {
        this.#problem('pack', pack, `${what} is missing from storage; ${blobs.length} blob(s) in it are lost`);
        this.#damage(pack, blobs, 'its pack is missing');
        return;
      }
      const end = Math.max(...blobs.map((b) => b.offset + b.length));
      if (size < end) {
        this.#problem('pack', pack, `${what} is ${size} bytes, shorter than its blobs (${end}): truncated`);
        this.#damage(pack, blobs.filter((b) => b.offset + b.length > size), 'its pack is truncated');
        return;
      }
      try {
        const header = await readPackHeader(this.#repo.storage, this.#repo.sealer, pack, size);
        const inHeader = new Map(header.map((e) => [e.id, e]));
        for (const b of blobs) {
          const h = inHeader.get(b.id);
          if (!h || h.offset !== b.offset || h.length !== b.length || h.rawLength !== b.rawLength || h.type !== b.type) {
            this.#problem('pack', pack, `${what}: blob ${shortId(b.id)} is not where the index says`);
            this.#damage(pack, [b], 'the index and the pack disagree');
          }
        }
      } catch (err) {
        this.#problem('pack', pack, (err as Error).message);
        this.#badPacks.add(pack);
      }
    });
  }

  /** Opens every tree of every snapshot (each once) and checks that its blobs are indexed. */
  async #checkTrees(snapshots: SnapshotEntry[]): Promise<void> {
    const seen = new Set<BlobId>();
    const visit = async (id: BlobId, where: string): Promise<void> => {
      if (seen.has(id)) return;
      seen.add(id);
      this.#stats.trees++;
      let nodes: TreeNode[];
      try {
        nodes = decodeTree(await this.#repo.loadBlob(id), `tree ${shortId(id)}`);
      } catch (err) {
        this.#problem('tree', id, `tree ${shortId(id)} (${where}): ${(err as Error).message}`);
        this.#badBlobs.set(id, 'tree unreadable');
        return;
      }
      const subtrees: [BlobId, string][] = [];
      for (const n of nodes) {
        const p = `${where === '/' ? '' : where}/${displayName(n.name)}`;
        if (n.content) {
          for (const c of n.content) {
            if (!this.#repo.index.has(c)) {
              this.#problem('blob', c, `blob ${shortId(c)} of ${p} is in no pack`);
              this.#badBlobs.set(c, 'missing');
            }
          }
        }
        if (n.subtree) subtrees.push([n.subtree, p]);
      }
      for (const [t, p] of subtrees) await visit(t, p);
    };
    for (const s of snapshots) await visit(s.snapshot.tree, '/');
  }

  async #readData(byPack: Map<PackId, BlobLocation[]>, stored: Map<PackId, number>,
    which: NonNullable<CheckOptions['readData']>): Promise<void> {
    let packs = [...byPack.keys()].filter((p) => stored.has(p));
    if ('slice' in which) {
      packs = packs.filter((p) => packSlice(p, which.of) === which.slice);
    } else if (which.fraction < 1) {
      const fraction = which.fraction;
      for (let i = packs.length - 1; i > 0; i--) {
        const j = randomInt(i + 1);
        [packs[i], packs[j]] = [packs[j]!, packs[i]!];
      }
      packs = packs.slice(0, Math.max(1, Math.ceil(packs.length * fraction)));
    }
    let done = 0;
    await forEachLimit(packs, 2, async (pack) => {
      this.#options.onProgress?.({ phase: 'read-data', done: done++, total: packs.length });
      const what = `pack ${shortId(pack)}`;
      let bytes: Buffer;
      try {
        bytes = await this.#repo.storage.load('pack', pack);
      } catch (err) {
        this.#problem('pack', pack, `${what} cannot be read: ${(err as Error).message}`);
        this.#damage(pack, byPack.get(pack)!, 'its pack cannot be read');
        return;
      }
      this.#stats.packsRead++;
      this.#stats.bytesRead += bytes.length;
      const digest = (await sha256([bytes])).toString('hex');
      if (digest !== pack) {
        this.#problem('pack', pack, `${what}: content hash is ${shortId(digest)}, not its name: the file was altered`);
        this.#badPacks.add(pack);
      }
      const bad: BlobLocation[] = [];
      for (const b of byPack.get(pack)!) {
        try {
          const sealed = bytes.subarray(b.offset, b.offset + b.length);
          await this.#repo.sealer.openSized(blobAad(b.type, b.id), sealed, b.rawLength, idBytes(b.id));
        } catch (err) {
          bad.push(b);
          if (!hasCode(err, 'HF_DECRYPT_FAILED') && !hasCode(err, 'HF_DECOMPRESS_FAILED') && !hasCode(err, 'HF_BLOB_ID_MISMATCH')) {
            throw new HoldfastError('HF_IO', `${what}: ${(err as Error).message}`, { cause: err });
          }
        }
      }
      if (bad.length > 0) {
        this.#problem('pack', pack, `${what}: ${bad.length} blob(s) damaged (${bad.slice(0, 3).map((b) => shortId(b.id)).join(', ')}${bad.length > 3 ? ', …' : ''})`);
        this.#damage(pack, bad, 'damaged');
      }
    });
  }

  /** Which files of which snapshots use a damaged or missing blob. */
  async #trace(snapshots: SnapshotEntry[]): Promise<AffectedSnapshot[]> {
    const out: AffectedSnapshot[] = [];
    const memo = new Map<BlobId, string[]>(); // tree -> affected relative paths
    const walk = async (id: BlobId): Promise<string[]> => {
      const cached = memo.get(id);
      if (cached) return cached;
      let found: string[] = [];
      if (this.#badBlobs.has(id)) {
        found = ['']; // the whole directory listing is unreadable
      } else {
        let nodes: TreeNode[];
        try {
          nodes = decodeTree(await this.#repo.loadBlob(id), `tree ${shortId(id)}`);
        } catch {
          nodes = [];
          found = [''];
        }
        for (const n of nodes) {
          const name = `/${displayName(n.name)}`;
          if (n.content?.some((c) => this.#badBlobs.has(c))) found.push(name);
          if (n.subtree) for (const sub of await walk(n.subtree)) found.push(name + sub);
        }
      }
      memo.set(id, found);
      return found;
    };
    for (const s of snapshots) {
      const paths = await walk(s.snapshot.tree);
      if (paths.length > 0) out.push({ snapshot: s.id, time: s.snapshot.time, paths: paths.map((p) => p || '/') });
    }
    return out;
  }
}

/** Which of `of` slices a pack falls in (its id's first 48 bits, modulo of). */
export function packSlice(pack: PackId, of: number): number {
  return Number.parseInt(pack.slice(0, 12), 16) % of;
}
