import { BufferPool, type Chunker, SizedPools, release } from '../../native/index.ts';
import { HoldfastError, errorCode, hasCode } from '../errors/index.ts';
import { type BlobId, BlobReader, BlobType, type Repository, type RepositoryWriter, blobIdOf } from '../repository/index.ts';
import {
  type SnapshotStats, TreeEncoder, type TreeNode, decodeTree, displayName, encodeTree, sameNode,
} from '../snapshot/index.ts';
import { CHANGED_DURING_READ, type ListManyResult, type Source, type SourceEntry, type SourceStat, joinPath } from '../sources/index.ts';
import { Semaphore } from '../limits/index.ts';

/** Files read at once; files larger than SMALL_READ also take one of LARGE_FILES slots. */
const FILES_IN_FLIGHT = 16;
const LARGE_FILES = 2;
/** Read buffers: a small file in one (of two sizes), a large file in pieces of LARGE_READ. */
const TINY_READ = 64 << 10;
const SMALL_READ = 1 << 20;
const LARGE_READ = 4 << 20;
/**
 * Small files (one chunk each) are read and sealed in batches of up to this
 * many files and bytes: two threadpool jobs per batch instead of two per file.
 */
const BATCH_FILES = 64;
const BATCH_BYTES = 960 << 10; // so that a batch's sealing bound fits a 1 MiB buffer
const BATCHES_IN_FLIGHT = 8;
/**
 * Directories walked at once beside the main walk. A directory takes a slot
 * only if one is free, else it is walked in line: no walk ever waits for a
 * slot held by its own ancestor.
 */
const DIRS_IN_FLIGHT = 8;
/** Plaintext bytes handed to sealing and not yet packed. Reading waits beyond this. */
const SEAL_BUDGET = 8 << 20;
/**
 * Directories fetched ahead: when the walk reaches a directory's
 * subdirectories, it asks for the next ones' listings (when the source can
 * list several at once) and parent trees in one request each, instead of
 * one threadpool round trip (or more) per directory when it gets there.
 * A request takes up to AHEAD_DIRS directories and AHEAD_BYTES of their
 * sizes (a directory's st_size grows with its entries, so this bounds what
 * one request holds), and none starts while AHEAD_HELD bytes are fetched
 * and not yet walked.
 */
const AHEAD_DIRS = 16;
const AHEAD_BYTES = 256 << 10;
const AHEAD_HELD = 512 << 10;

export type WarningCode = 'HF_WARN_UNREADABLE' | 'HF_WARN_VANISHED' | 'HF_WARN_CHANGED' | 'HF_WARN_SOURCE';

/** Something skipped or odd in the source; the backup goes on. */
export interface BackupWarning {
  path: string;
  code: WarningCode;
  message: string;
}

/** The live counters of a walk: the source side of a snapshot's statistics. */
export type ArchiveStats = Pick<SnapshotStats, 'files' | 'dirs' | 'bytes' | 'filesRead' | 'filesUnchanged' | 'bytesRead'>;

/** The parent snapshot's listing of a directory: nodes sorted by name bytes (as encodeTree writes them). */
interface Listing {
  id: BlobId;
  nodes: TreeNode[];
}

/**
 * The parent's node for each entry (both sorted by name bytes), by one merge
 * pass: no map of names. A parent tree that is not sorted (damaged, or
 * written by something else) only loses matches: those files are read again.
 */
function matchParent(entries: readonly { name: Buffer }[], parent: Listing | null): (TreeNode | null)[] {
  const out: (TreeNode | null)[] = new Array(entries.length).fill(null);
  if (!parent) return out;
  const p = parent.nodes;
  let j = 0;
  for (let i = 0; i < entries.length && j < p.length; i++) {
    const name = entries[i]!.name;
    let c = -1;
    while (j < p.length && (c = Buffer.compare(p[j]!.name, name)) < 0) j++;
    if (c === 0) out[i] = p[j++]!;
  }
  return out;
}

/** The parent's node of one name (binary search; see matchParent). */
function findParent(parent: Listing | null, name: Buffer): TreeNode | null {
  if (!parent) return null;
  let lo = 0;
  let hi = parent.nodes.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const c = Buffer.compare(parent.nodes[mid]!.name, name);
    if (c === 0) return parent.nodes[mid]!;
    if (c < 0) lo = mid + 1;
    else hi = mid - 1;
  }
  return null;
}

/** What the walk fetched for a directory before reaching it. Neither promise rejects. */
interface Ahead {
  listing: Promise<ListManyResult> | null;
  parent: Promise<{ plain: Buffer } | { error: Error }> | null;
  /** Counted against AHEAD_HELD until the directory is walked. */
  bytes: number;
}

interface BatchItem {
  path: Buffer;
  name: Buffer;
  e: SourceStat;
  resolve: (node: TreeNode | null) => void;
}

interface TrieNode {
  name: Buffer;
  target: boolean;
  children: Map<string, TrieNode>;
}

const EMPTY = Buffer.alloc(0);
const ROOT = Buffer.from('/');

/**
 * A read buffer and the count of its users (the read loop, chunks being
 * sealed, a carried tail). The last user hands it back to its pool, or frees
 * it at once, instead of leaving it to the garbage collector: the backup's
 * memory stays flat.
 */
class Held {
  readonly buf: Buffer;
  readonly #pool: BufferPool | SizedPools | null;
  #users = 1;

  constructor(buf: Buffer, pool: BufferPool | SizedPools | null) {
    this.buf = buf;
    this.#pool = pool?.owns(buf) ? pool : null;
  }

  retain(): this {
    this.#users++;
    return this;
  }

  drop(): void {
    if (--this.#users > 0) return;
    if (this.#pool) this.#pool.put(this.buf);
    else release(this.buf);
  }
}

const PENDING = Symbol('pending');

/** Whether names strictly increase (the order Source.list promises, and tree blobs use). */
function strictlySorted(entries: readonly { name: Buffer }[]): boolean {
  for (let i = 1; i < entries.length; i++) if (Buffer.compare(entries[i - 1]!.name, entries[i]!.name) >= 0) return false;
  return true;
}

/**
 * A directory's nodes as the walk makes them, in listing order: values, or
 * promises (files being read, directories being walked; null: left out).
 * When the listing is sorted (Source.list's contract), nodes are compared
 * with the parent's as they arrive (in order), and the moment one differs
 * the tree is encoded node by node from then on (the equal ones before it
 * first), each node dropped once encoded: a directory of many thousand
 * entries is held as its encoded bytes, not as node objects, and an
 * unchanged one is never encoded at all. An unsorted listing (a source
 * breaking the contract) is kept and sorted at the end instead.
 */
class TreeSink {
  readonly #parent: Listing | null;
  readonly #sorted: boolean;
  readonly #expected: number;
  readonly #kept: TreeNode[] = [];
  readonly #slots: (TreeNode | null | typeof PENDING)[] = [];
  readonly #promises: Promise<unknown>[] = [];
  #encoder: TreeEncoder | null = null;
  #next = 0;
  /** Nodes so far, all equal to the parent's at the same positions (while #encoder is null). */
  #matched = 0;
  #error: unknown = null;

  constructor(parent: Listing | null, sorted: boolean, expected: number) {
    this.#parent = parent;
    this.#sorted = sorted;
    this.#expected = expected;
  }

  push(v: TreeNode | null | Promise<TreeNode | null>): void {
    if (!(v instanceof Promise)) {
      this.#slots.push(v);
      this.#drain();
      return;
    }
    const i = this.#slots.length;
    this.#slots.push(PENDING);
    // Settles with v; a rejection is the walk's failure (v's owner records it), reported by finish().
    this.#promises.push(v);
    v.then((n) => {
      this.#slots[i] = n;
      this.#drain();
    }, () => undefined);
  }

  /**
   * Once every node is known: the parent's tree id when the listing equals
   * it, else the new tree's bytes (not yet stored), or (unsorted) its nodes.
   */
  async finish(): Promise<{ same: BlobId } | { nodes: TreeNode[] } | { bytes: Buffer }> {
    await Promise.all(this.#promises);
    this.#drain();
    if (this.#error) throw this.#error;
    if (!this.#sorted) return { nodes: this.#kept };
    const p = this.#parent;
    if (!this.#encoder && p && this.#matched === p.nodes.length) return { same: p.id };
    return { bytes: this.#encoderFrom().finish() };
  }

  /** The encoder, started (with the matched prefix, the parent's equal nodes) on first use. */
  #encoderFrom(): TreeEncoder {
    if (!this.#encoder) {
      this.#encoder = new TreeEncoder(this.#expected);
      for (let k = 0; k < this.#matched; k++) this.#encoder.add(this.#parent!.nodes[k]!);
    }
    return this.#encoder;
  }

  #drain(): void {
    while (this.#next < this.#slots.length && this.#error === null) {
      const n = this.#slots[this.#next]!;
      if (n === PENDING) return;
      this.#slots[this.#next++] = null; // handed over: no longer held here
      if (n === null) continue;
      if (!this.#sorted) {
        this.#kept.push(n);
        continue;
      }
      if (!this.#encoder && this.#parent) {
        const pn = this.#parent.nodes[this.#matched];
        if (pn !== undefined && (pn === n || sameNode(n, pn))) {
          this.#matched++;
          continue;
        }
      }
      try {
        this.#encoderFrom().add(n);
      } catch (err) {
        this.#error = err;
      }
    }
  }
}

/** Builds the tree of directories leading to the paths to back up. */
function buildTrie(paths: readonly string[]): TrieNode {
  const root: TrieNode = { name: EMPTY, target: false, children: new Map() };
  for (const p of paths) {
    let node = root;
    for (const part of p.split('/').filter(Boolean)) {
      const name = Buffer.from(part, 'utf8');
      const key = name.toString('latin1');
      let next = node.children.get(key);
      if (!next) {
        next = { name, target: false, children: new Map() };
        node.children.set(key, next);
      }
      node = next;
    }
    node.target = true;
  }
  return root;
}

/** Unchanged since the parent: same size, mtime, ctime and file id. */
function reusable(e: SourceStat, p: TreeNode | null): p is TreeNode {
  return p !== null && p.type === 'file' && p.content !== undefined && p.size === e.size &&
    p.mtime[0] === e.mtime[0] && p.mtime[1] === e.mtime[1] && p.ctime[0] === e.ctime[0] && p.ctime[1] === e.ctime[1] &&
    p.inode === e.inode;
}

/**
 * Whether the parent's node p records exactly what nodeOf(name, e, extra)
 * would (same name assumed): then p itself is the node, and nothing is
 * allocated for an unchanged entry. extra: a file's content or a
 * directory's subtree, which must be the parent's too.
 */
function sameAsParent(e: SourceStat, p: TreeNode, extra: { content?: BlobId[]; subtree?: BlobId }): boolean {
  if (p.type !== e.type || p.mode !== e.mode || p.uid !== e.uid || p.gid !== e.gid ||
      p.mtime[0] !== e.mtime[0] || p.mtime[1] !== e.mtime[1] || p.ctime[0] !== e.ctime[0] || p.ctime[1] !== e.ctime[1] ||
      p.size !== (e.type === 'file' ? e.size : 0) || p.inode !== e.inode || p.device !== e.device || p.links !== e.links ||
      p.content !== extra.content || p.subtree !== extra.subtree || p.attributes !== e.attributes ||
      p.btime?.[0] !== e.btime?.[0] || p.btime?.[1] !== e.btime?.[1]) {
    return false;
  }
  if (e.type === 'symlink') return p.target !== undefined && p.target.equals(e.target ?? EMPTY);
  if (p.target !== undefined) return false;
  if (e.type === 'chardev' || e.type === 'blockdev') return p.rdev === e.rdev;
  return p.rdev === undefined;
}

function nodeOf(name: Buffer, e: SourceStat, extra: Partial<TreeNode>): TreeNode {
  const n: TreeNode = {
    name, type: e.type, mode: e.mode, uid: e.uid, gid: e.gid, mtime: e.mtime, ctime: e.ctime,
    size: e.type === 'file' ? e.size : 0, inode: e.inode, device: e.device, links: e.links,
    ...extra,
  };
  if (e.type === 'symlink') n.target = e.target ?? EMPTY;
  if (e.type === 'chardev' || e.type === 'blockdev') n.rdev = e.rdev;
  if (e.btime) n.btime = e.btime;
  if (e.attributes !== undefined) n.attributes = e.attributes;
  return n;
}

function warningCode(err: unknown): WarningCode {
  const c = errorCode(err);
  if (c === 'EACCES' || c === 'EPERM') return 'HF_WARN_UNREADABLE';
  if (c === 'ENOENT' || c === 'ENOTDIR' || c === 'ELOOP') return 'HF_WARN_VANISHED';
  return 'HF_WARN_SOURCE';
}

/**
 * Walks a source and stores what changed. Directories are walked depth
 * first, several at a time (DIRS_IN_FLIGHT); files are read and chunked concurrently
 * (FILES_IN_FLIGHT), and reading waits while SEAL_BUDGET bytes are queued for
 * sealing. A file unchanged since the parent snapshot reuses its chunk list
 * unread; a directory whose listing equals the parent's reuses its tree.
 * Source problems become warnings; repository failures, and a source that
 * lost its server for good (HF_SOURCE_DISCONNECTED), abort.
 */
export class Archiver {
  readonly stats: ArchiveStats = { files: 0, dirs: 0, bytes: 0, filesRead: 0, filesUnchanged: 0, bytesRead: 0 };
  readonly warnings: BackupWarning[] = [];
  readonly #repo: Repository;
  readonly #writer: RepositoryWriter;
  readonly #source: Source;
  readonly #force: boolean;
  readonly #signal: AbortSignal | undefined;
  readonly #onWarning: ((w: BackupWarning) => void) | undefined;
  readonly #fileSlots = new Semaphore(FILES_IN_FLIGHT);
  readonly #largeSlots = new Semaphore(LARGE_FILES);
  readonly #sealBudget = new Semaphore(SEAL_BUDGET);
  readonly #tinyReads = new BufferPool(TINY_READ, FILES_IN_FLIGHT);
  readonly #smallReads = new BufferPool(SMALL_READ, 2);
  readonly #largeReads = new BufferPool(LARGE_READ, LARGE_FILES);
  readonly #batchReads = new BufferPool(BATCH_BYTES, BATCHES_IN_FLIGHT);
  /** Chunks spanning two reads are joined into these. */
  readonly #joins = new SizedPools(256 << 10, 4 << 20, 8 << 20);
  readonly #batchSlots = new Semaphore(BATCHES_IN_FLIGHT);
  readonly #dirSlots = new Semaphore(DIRS_IN_FLIGHT);
  readonly #chunkers: Chunker[] = [];
  readonly #hardlinks = new Map<string, Promise<BlobId[] | null>>();
  readonly #trees: BlobReader;
  #aheadHeld = 0;
  readonly #tasks = new Set<Promise<unknown>>();
  #failure: unknown = null;

  constructor(repo: Repository, writer: RepositoryWriter, source: Source, options: {
    force?: boolean; signal?: AbortSignal; onWarning?: (w: BackupWarning) => void;
  } = {}) {
    this.#repo = repo;
    this.#writer = writer;
    this.#source = source;
    this.#force = options.force ?? false;
    this.#signal = options.signal;
    this.#onWarning = options.onWarning;
    this.#trees = new BlobReader(repo, { window: 256 << 10, keep: 2 });
  }

  /** Archives the paths (absolute) and returns the root tree id. */
  async run(paths: readonly string[], parentRoot: BlobId | null): Promise<BlobId> {
    try {
      const trie = buildTrie(paths);
      if (!trie.target) return await this.#intermediate(ROOT, trie, parentRoot);
      const root = await this.#source.stat(ROOT);
      return await this.#dir(ROOT, parentRoot, [`${root.device}:${root.inode}`]);
    } catch (err) {
      this.#failure ??= err;
      throw err;
    } finally {
      // Nothing may still be writing when the caller flushes or gives up.
      await Promise.allSettled([...this.#tasks]);
    }
  }

  #warn(path: Buffer, err: unknown, code: WarningCode = warningCode(err), message?: string): void {
    const w: BackupWarning = {
      path: displayName(path),
      code,
      message: message ?? (err instanceof Error ? err.message : String(err)),
    };
    this.warnings.push(w);
    this.#onWarning?.(w);
  }

  /**
   * Throws when the source has lost its server for good
   * (HF_SOURCE_DISCONNECTED, see Source): that is no per-path warning, the
   * backup stops, or it would record everything not yet read as empty.
   */
  #sourceLost(err: unknown): void {
    if (!hasCode(err, 'HF_SOURCE_DISCONNECTED')) return;
    this.#failure ??= err;
    throw err;
  }

  #checkAbort(): void {
    if (this.#failure) throw this.#failure;
    if (this.#signal?.aborted) {
      throw new HoldfastError('HF_INTERRUPTED',
        'backup interrupted; what was stored is kept and the next backup reuses it');
    }
  }

  /** The parent snapshot's listing of a directory (fetched ahead, or now); null when there is none or it is unreadable (a warning). */
  async #parentListing(id: BlobId | null | undefined, path: Buffer, ahead: Ahead['parent'] = null): Promise<Listing | null> {
    if (!id || this.#force) return null;
    try {
      let plain: Buffer;
      if (ahead) {
        const r = await ahead;
        if ('error' in r) throw r.error;
        plain = r.plain;
      } else {
        plain = await this.#repo.loadBlob(id);
      }
      let nodes: TreeNode[];
      try {
        nodes = decodeTree(plain, `parent tree of ${displayName(path)}`);
      } finally {
        release(plain); // the nodes hold copies
      }
      return { id, nodes };
    } catch (err) {
      this.#warn(path, err, 'HF_WARN_SOURCE', `parent snapshot's tree unreadable, reading everything here: ${(err as Error).message}`);
      return null;
    }
  }

  /**
   * Fetches ahead (see AHEAD_DIRS) for the directories among entries from
   * index `from` on: their listings in one request, when the source can,
   * and their parent trees in one request. Records each in `into`; returns
   * the index after the last entry considered.
   */
  #fetchAhead(dir: Buffer, entries: readonly (SourceEntry | undefined)[], from: number, first: SourceEntry, firstParent: TreeNode | null,
    pnodes: readonly (TreeNode | null)[], into: Map<SourceEntry, Ahead>): number {
    const dirs: { e: SourceEntry; path: Buffer; tree: BlobId | null }[] = [];
    let bytes = 0;
    let i = from;
    for (; i < entries.length && dirs.length < AHEAD_DIRS; i++) {
      // entries[from] (the directory being started) is no longer in the list: it is `first`
      const e = i === from ? first : entries[i]!;
      if (e.type !== 'dir') continue;
      if (dirs.length > 0 && bytes + e.size > AHEAD_BYTES) break;
      const pnode = i === from ? firstParent : pnodes[i];
      const tree = !this.#force && pnode?.type === 'dir' ? pnode.subtree! : null;
      dirs.push({ e, path: joinPath(dir, e.name), tree });
      bytes += e.size;
    }
    if (dirs.length === 0 || this.#aheadHeld >= AHEAD_HELD) return i;
    const listMany = this.#source.listMany?.bind(this.#source);
    const listings = listMany
      ? listMany(dirs.map((d) => d.path)).then((r) => r, (error: Error) => dirs.map(() => ({ error })))
      : null;
    const ids = dirs.map((d) => d.tree).filter((t): t is BlobId => t !== null);
    const trees = ids.length > 0 ? this.#loadTrees(ids) : null;
    let k = 0;
    for (const [j, d] of dirs.entries()) {
      const treeIndex = d.tree !== null ? k++ : -1;
      const share = d.e.size + (d.tree !== null ? this.#repo.index.get(d.tree)?.rawLength ?? 0 : 0);
      this.#aheadHeld += share;
      into.set(d.e, {
        listing: listings ? listings.then((r) => r[j]!) : null,
        parent: trees && treeIndex >= 0 ? trees.then((r) => r[treeIndex]!) : null,
        bytes: share,
      });
    }
    return i;
  }

  /** Loads tree blobs in one request; each result is the tree's bytes (a copy) or why not. Never rejects. */
  async #loadTrees(ids: BlobId[]): Promise<({ plain: Buffer } | { error: Error })[]> {
    try {
      const { buffer, results } = await this.#trees.loadMany(ids);
      try {
        return results.map((r) => ('error' in r ? r : { plain: Buffer.from(r.plain) }));
      } finally {
        this.#trees.done(buffer);
      }
    } catch (err) {
      return ids.map(() => ({ error: err as Error }));
    }
  }

  async #saveTree(nodes: TreeNode[], parent: Listing | null): Promise<BlobId> {
    if (parent && parent.nodes.length === nodes.length && nodes.every((n, i) => n === parent.nodes[i] || sameNode(n, parent.nodes[i]!))) {
      return parent.id;
    }
    const { id } = await this.#writer.saveBlob(BlobType.tree, encodeTree(nodes), null);
    return id;
  }

  /** A directory on the way to a path being backed up: only the chosen children. */
  async #intermediate(path: Buffer, trie: TrieNode, parentTree: BlobId | null): Promise<BlobId> {
    const parent = await this.#parentListing(parentTree, path);
    const children = [...trie.children.values()].sort((a, b) => Buffer.compare(a.name, b.name));
    const nodes: (TreeNode | Promise<TreeNode | null> | null)[] = [];
    for (const child of children) {
      this.#checkAbort();
      const childPath = joinPath(path, child.name);
      const pnode = findParent(parent, child.name);
      let st: SourceStat;
      try {
        st = await this.#source.stat(childPath);
      } catch (err) {
        this.#sourceLost(err);
        this.#warn(childPath, err);
        continue;
      }
      if (child.target) {
        nodes.push((await this.#start(childPath, child.name, st, pnode)).node);
      } else if (st.type === 'dir') {
        this.stats.dirs++;
        const subtree = await this.#intermediate(childPath, child, pnode?.type === 'dir' ? pnode.subtree! : null);
        nodes.push(nodeOf(child.name, st, { subtree }));
      } else {
        this.#warn(childPath, null, 'HF_WARN_VANISHED', 'not a directory, so the paths below it were not backed up');
      }
    }
    return this.#saveTree(await this.#settle(nodes), parent);
  }

  async #settle(nodes: (TreeNode | Promise<TreeNode | null> | null)[]): Promise<TreeNode[]> {
    const done = await Promise.all(nodes);
    this.#checkAbort();
    return done.filter((n): n is TreeNode => n !== null);
  }

  /**
   * Walks a directory. `ancestors` holds the identities (device:inode) of
   * the directories above it and itself: a server that follows symlinks for
   * its clients (Samba, Windows junctions) can show a directory inside
   * itself, and that must not be walked forever.
   */
  async #dir(path: Buffer, parentTree: BlobId | null, ancestors: readonly string[], ahead: Ahead | null = null): Promise<BlobId> {
    if (ahead) this.#aheadHeld -= ahead.bytes;
    // The listing and the parent's tree, at once.
    const [listed, parent] = await Promise.all([
      ahead?.listing ?? this.#source.list(path).then((l): ListManyResult => l, (error: Error) => ({ error })),
      this.#parentListing(parentTree, path, ahead?.parent),
    ]);
    if ('error' in listed) {
      this.#sourceLost(listed.error);
      this.#warn(path, listed.error, warningCode(listed.error), `directory not read: ${listed.error.message}`);
      return this.#saveTree([], null);
    }
    const listing = listed;
    for (const p of listing.problems) this.#sourceLost(p.error);
    for (const p of listing.problems) this.#warn(joinPath(path, p.name), p.error);
    const entries: (SourceEntry | undefined)[] = listing.entries;
    const pnodes = matchParent(listing.entries, parent);
    const nodes = new TreeSink(parent, strictlySorted(listing.entries), entries.length);
    const fetched = new Map<SourceEntry, Ahead>();
    let fetchedUpTo = 0;
    let batch: BatchItem[] = [];
    let batchBytes = 0;
    for (let i = 0; i < entries.length; i++) {
      this.#checkAbort();
      const e = entries[i]!;
      // Walked entries are dropped as the walk goes (a large directory's listing is not held to its end).
      entries[i] = undefined;
      const pnode = this.#force ? null : pnodes[i]!;
      pnodes[i] = null;
      const p = joinPath(path, e.name);
      if (this.#batchable(e, pnode)) {
        if (batch.length >= BATCH_FILES || batchBytes + e.size > BATCH_BYTES) {
          await this.#startBatch(batch);
          batch = [];
          batchBytes = 0;
        }
        this.stats.files++;
        nodes.push(new Promise<TreeNode | null>((resolve) => batch.push({ path: p, name: e.name, e, resolve })));
        batchBytes += e.size;
        continue;
      }
      if (e.type === 'dir' && i >= fetchedUpTo) fetchedUpTo = this.#fetchAhead(path, entries, i, e, pnode, pnodes, fetched);
      const pre = fetched.get(e) ?? null;
      fetched.delete(e);
      nodes.push((await this.#start(p, e.name, e, pnode, ancestors, pre)).node);
    }
    // Flushed before the listing is awaited: its nodes wait on this batch.
    if (batch.length > 0) await this.#startBatch(batch);
    const done = await nodes.finish();
    this.#checkAbort();
    if ('same' in done) return done.same;
    if ('nodes' in done) return this.#saveTree(done.nodes, parent);
    return (await this.#writer.saveBlob(BlobType.tree, done.bytes, null)).id;
  }

  /** A file to read in a batch: new or changed, one chunk, one link, and a source that can. */
  #batchable(e: SourceStat, pnode: TreeNode | null): boolean {
    return e.type === 'file' && e.links === 1 && e.size < this.#repo.config.chunker.minSize &&
      e.size <= BATCH_BYTES && this.#source.readMany !== undefined && (this.#force || !reusable(e, pnode));
  }

  async #startBatch(items: BatchItem[]): Promise<void> {
    await this.#batchSlots.acquire();
    const task = this.#runBatch(items)
      .catch((err: unknown) => {
        this.#failure ??= err;
        for (const it of items) it.resolve(null);
      })
      .finally(() => {
        this.#batchSlots.release();
        this.#tasks.delete(task);
      });
    this.#tasks.add(task);
  }

  /**
   * Reads a batch of small files in one job and seals them in one job. A
   * file that grew past its listed size goes the usual way; a file that
   * cannot be read is a warning, like any other. Each file's bytes are
   * taken from the view its result gives (Source.readMany): they are sealed
   * from the front of the buffer, back to back, and a source that left them
   * anywhere else has them moved there first.
   */
  async #runBatch(items: BatchItem[]): Promise<void> {
    const buf = this.#batchReads.get();
    try {
      const results = await this.#source.readMany!(items.map((i) => i.path), items.map((i) => i.e.size), buf);
      if (results.length !== items.length) {
        throw new HoldfastError('HF_SOURCE_PROTOCOL', `${this.#source.location}: readMany gave ${results.length} results for ${items.length} files`);
      }
      const done: { item: BatchItem; length: number }[] = [];
      const lens: number[] = [];
      let total = 0;
      for (const [k, r] of results.entries()) {
        const item = items[k]!;
        if ('data' in r && r.data.length <= item.e.size) {
          const n = r.data.length;
          // In order and not overlapping (the contract), so moving each to
          // the end of the ones before never overwrites one still to come.
          if (n > 0 && !(r.data.buffer === buf.buffer && r.data.byteOffset === buf.byteOffset + total)) r.data.copy(buf, total);
          done.push({ item, length: n });
          if (n > 0) lens.push(n);
          total += n;
        } else if ('data' in r || r.error.code === 'EFBIG' || r.error.code === 'EINVAL') {
          // it grew, or is no longer a regular file: the usual path decides
          item.resolve(await this.#file(item.path, item.name, item.e).catch((err: unknown) => { this.#failure ??= err; return null; }));
        } else {
          this.#sourceLost(r.error);
          this.#warn(item.path, r.error, warningCode(r.error), `file not backed up: ${describeSourceError(r.error)}`);
          item.resolve(null);
        }
      }
      this.stats.bytesRead += total;
      let ids: BlobId[] = [];
      if (lens.length > 0) {
        await this.#sealBudget.acquire(Math.min(total, SEAL_BUDGET));
        try {
          ids = await this.#writer.saveBlobs(BlobType.data, buf.subarray(0, total), lens);
        } finally {
          this.#sealBudget.release(Math.min(total, SEAL_BUDGET));
        }
      }
      let next = 0;
      for (const { item, length } of done) {
        const content = length > 0 ? [ids[next++]!] : [];
        if (length !== item.e.size) {
          this.#warn(item.path, null, 'HF_WARN_CHANGED',
            `file changed while being read (listed with ${item.e.size} bytes, read ${length}); stored as read`);
        }
        this.stats.filesRead++;
        this.stats.bytes += length;
        item.resolve(nodeOf(item.name, item.e, { content, size: length }));
      }
    } finally {
      this.#batchReads.put(buf);
    }
  }

  /**
   * Starts one entry. A directory is walked beside this one when a slot is
   * free (its node comes later), else before this resolves; a file resolves
   * once it has a reading slot, its node later.
   */
  async #start(path: Buffer, name: Buffer, e: SourceStat, pnode: TreeNode | null, ancestors: readonly string[] = [], ahead: Ahead | null = null): Promise<{ node: TreeNode | null | Promise<TreeNode | null> }> {
    if (e.type === 'dir') {
      this.stats.dirs++;
      const parentTree = pnode?.type === 'dir' ? pnode.subtree! : null;
      const identity = `${e.device}:${e.inode}`;
      if (e.inode !== 0 && ancestors.includes(identity)) {
        if (ahead) this.#aheadHeld -= ahead.bytes;
        this.#warn(path, null, 'HF_WARN_SOURCE',
          'directory loop: this is a directory above it again (a symlink or junction on the server points back up); recorded empty, not walked');
        return { node: nodeOf(name, e, { subtree: await this.#saveTree([], null) }) };
      }
      const chain = [...ancestors, identity];
      if (!this.#dirSlots.tryAcquire()) {
        const subtree = await this.#dir(path, parentTree, chain, ahead);
        return { node: pnode && sameAsParent(e, pnode, { subtree }) ? pnode : nodeOf(name, e, { subtree }) };
      }
      const task = this.#dir(path, parentTree, chain, ahead)
        .then((subtree) => (pnode && sameAsParent(e, pnode, { subtree }) ? pnode : nodeOf(name, e, { subtree })))
        .finally(() => {
          this.#dirSlots.release();
          this.#tasks.delete(task);
        });
      this.#tasks.add(task);
      task.catch((err: unknown) => { this.#failure ??= err; });
      return { node: task };
    }
    if (e.type !== 'file') return { node: pnode && sameAsParent(e, pnode, {}) ? pnode : nodeOf(name, e, {}) };
    this.stats.files++;
    if (!this.#force && reusable(e, pnode)) {
      this.stats.filesUnchanged++;
      this.stats.bytes += e.size;
      return { node: sameAsParent(e, pnode, { content: pnode.content! }) ? pnode : nodeOf(name, e, { content: pnode.content! }) };
    }
    await this.#fileSlots.acquire();
    const large = e.size > SMALL_READ;
    if (large) await this.#largeSlots.acquire();
    const task = this.#file(path, name, e).finally(() => {
      this.#fileSlots.release();
      if (large) this.#largeSlots.release();
      this.#tasks.delete(task);
    });
    this.#tasks.add(task);
    task.catch((err: unknown) => { this.#failure ??= err; });
    return { node: task };
  }

  async #file(path: Buffer, name: Buffer, e: SourceStat): Promise<TreeNode | null> {
    let settleLink: ((c: BlobId[] | null) => void) | null = null;
    if (e.links > 1) {
      const key = `${e.device}:${e.inode}`;
      const first = this.#hardlinks.get(key);
      if (first) {
        const content = await first;
        if (content) return nodeOf(name, e, { content });
      } else {
        this.#hardlinks.set(key, new Promise((resolve) => { settleLink = resolve; }));
      }
    }
    let result: { content: BlobId[]; size: number; changed: boolean } | null = null;
    try {
      result = await this.#readFile(path, e);
      if (result?.changed) {
        // Changed while being read: the bytes may mix old and new. Once more;
        // what the first read stored is left for prune.
        result = await this.#readFile(path, e);
        if (result?.changed) {
          this.#warn(path, null, 'HF_WARN_CHANGED',
            'file changed while being read, twice; stored as read the second time, which may be inconsistent');
        }
      }
    } finally {
      (settleLink as ((c: BlobId[] | null) => void) | null)?.(result?.content ?? null);
    }
    if (!result) return null;
    this.stats.filesRead++;
    this.stats.bytes += result.size;
    return nodeOf(name, e, { content: result.content, size: result.size });
  }

  /**
   * Reads, chunks and stores one file; null when the source failed (a
   * warning). A file shorter than the minimum chunk size is one chunk by
   * definition: it skips the chunker, and its id is computed in the same
   * threadpool job that seals it.
   */
  async #readFile(path: Buffer, e: SourceStat): Promise<{ content: BlobId[]; size: number; changed: boolean } | null> {
    const minSize = this.#repo.config.chunker.minSize;
    let chunker: Chunker | null = null;
    const content: BlobId[] = [];
    const stores: Promise<unknown>[] = [];
    let head: Held[] = [];
    let headLen = 0;
    let carry: { held: Held; view: Buffer }[] = [];
    let carryLen = 0;
    let total = 0;
    let sourceError: unknown = null;
    let changed = false;
    let clean = false;
    /** Stores one chunk (data lies in held); id null: computed while sealing. */
    const store = async (id: BlobId | null, data: Buffer, held: Held) => {
      const slot = content.length;
      content.push(id as BlobId);
      if (id !== null && this.#writer.known(id)) return;
      await this.#sealBudget.acquire(data.length);
      held.retain();
      stores.push(this.#writer.saveBlob(BlobType.data, data, id)
        .then((r) => { content[slot] = r.id; })
        .finally(() => {
          this.#sealBudget.release(data.length);
          held.drop();
        }));
    };
    /** One buffer holding all of parts (the parts are dropped). */
    const join = (parts: Held[], length: number): Held => {
      if (parts.length === 1) return parts[0]!;
      const joined = new Held(this.#joins.concat(parts.map((p) => p.buf), length), this.#joins);
      for (const p of parts) p.drop();
      return joined;
    };
    const pool = e.size <= TINY_READ ? this.#tinyReads : e.size <= SMALL_READ ? this.#smallReads : this.#largeReads;
    const it = this.#source.read(path, e.size, pool)[Symbol.asyncIterator]();
    try {
      for (;;) {
        this.#checkAbort();
        let r: IteratorResult<Buffer>;
        try {
          r = await it.next();
        } catch (err) {
          // Every byte came; the source saw the file change meanwhile.
          if (errorCode(err) === CHANGED_DURING_READ) changed = true;
          else sourceError = err;
          break;
        }
        if (r.done) break;
        total += r.value.length;
        this.stats.bytesRead += r.value.length;
        let piece = new Held(r.value, pool);
        if (chunker === null) {
          head.push(piece);
          headLen += piece.buf.length;
          if (headLen < minSize) continue;
          piece = join(head, headLen);
          head = [];
          chunker = this.#chunkers.pop() ?? this.#repo.chunker();
        }
        const buf = piece.buf;
        const chunks = await chunker.update(buf, false);
        let off = 0;
        for (const c of chunks) {
          const need = c.length - carryLen;
          if (carryLen === 0) {
            await store(blobIdOf(c.id), buf.subarray(off, off + need), piece);
          } else {
            const joined = new Held(this.#joins.concat([...carry.map((x) => x.view), buf.subarray(off, off + need)], c.length), this.#joins);
            for (const x of carry) x.held.drop();
            await store(blobIdOf(c.id), joined.buf, joined);
            joined.drop();
          }
          off += need;
          carry = [];
          carryLen = 0;
        }
        if (off < buf.length) {
          carry.push({ held: piece.retain(), view: buf.subarray(off) });
          carryLen += buf.length - off;
        }
        piece.drop();
      }
      if (!sourceError) {
        if (chunker) {
          const [last] = await chunker.update(EMPTY, true);
          if (last) {
            let tail: { held: Held; view: Buffer };
            if (carry.length === 1) {
              tail = carry[0]!;
            } else {
              const joined = new Held(this.#joins.concat(carry.map((x) => x.view), carryLen), this.#joins);
              for (const x of carry) x.held.drop();
              tail = { held: joined, view: joined.buf };
            }
            await store(blobIdOf(last.id), tail.view, tail.held);
            tail.held.drop();
            carry = [];
          }
        } else if (headLen > 0) {
          const whole = join(head, headLen);
          await store(null, whole.buf, whole);
          whole.drop();
          head = [];
        }
        clean = true;
      }
    } finally {
      if (!clean) {
        chunker?.reset();
        if (!sourceError) await it.return?.(undefined).catch(() => undefined); // closes the file
      }
      if (chunker) this.#chunkers.push(chunker);
      // Chunks already handed over are valid blobs either way; their failure is fatal.
      await Promise.all(stores);
    }
    if (sourceError) {
      this.#sourceLost(sourceError);
      this.#warn(path, sourceError, warningCode(sourceError), `file not backed up: ${describeSourceError(sourceError)}`);
      return null;
    }
    if (total !== e.size && !changed) {
      this.#warn(path, null, 'HF_WARN_CHANGED',
        `file changed while being read (listed with ${e.size} bytes, read ${total}); stored as read`);
    }
    return { content, size: total, changed };
  }
}

/** A source failure in words an admin can act on. */
function describeSourceError(err: unknown): string {
  switch (errorCode(err)) {
    case 'EACCES':
    case 'EPERM':
      return 'permission denied (give the backup user read access, or run it as root)';
    case 'ENOENT':
      return 'it was deleted while the backup ran';
    case 'ELOOP':
      return 'it was replaced by a symlink while the backup ran';
    case 'EINVAL':
      return 'it is no longer a regular file';
    case 'EILSEQ':
      return 'the server lists this name but will not open it (characters Windows does not allow, such as : * ? " < > | or a newline); rename it on the server, or map such names there (Samba: vfs_catia, or `mangled names = illegal`)';
    case 'EBUSY':
      return 'another program on the server has it locked (it is tried again at the next backup)';
    case 'EAGAIN':
      return 'it changed while the connection to the server was re-established (it is read again at the next backup)';
    default:
      return err instanceof Error ? err.message : String(err);
  }
}
