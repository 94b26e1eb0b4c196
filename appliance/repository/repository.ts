import { hkdfSync, randomBytes } from 'node:crypto';

import { BufferPool, Chunker, Sealer, SizedPools, deriveGearTable, release, sealBlobSize, sealBlobsSize, sha256 } from '../../native/index.ts';
import { HoldfastError, hasCode } from '../errors/index.ts';
import { forEachLimit } from '../limits/index.ts';
import { LocalStorage, type Storage } from '../storage/index.ts';
import { DEFAULT_CHUNKER, DEFAULT_COMPRESSION, DEFAULT_PACK_SIZE, type RepoConfig, parseConfig } from './config.ts';
import { MAX_FILE_PLAIN, sealFile, openFile } from './envelope.ts';
import { type BlobId, BlobType, type IndexId, type PackId, type SnapshotId, blobIdOf, idBytes, shortId } from './ids.ts';
import { decodeIndex, encodePackSection, joinPackSections } from './index-file.ts';
import {
  type Credentials, type KeyFile, type WorkingKeys, deriveWorkingKeys, makePassphraseKey, makeRecoveryKey,
  parseKeyFile, unlockMasterKey,
} from './keys.ts';
import { Lock, type LockMode } from './lock.ts';
import { type BlobLocation, MasterIndex } from './master-index.ts';
import { type PackEntry, blobAad } from './pack-entry.ts';
import { readPackHeader } from './pack-reader.ts';
import { type FinishedPack, PackWriter } from './pack-writer.ts';
import { newRecoveryKey } from './recovery-key.ts';

export interface InitOptions {
  chunker?: RepoConfig['chunker'];
  compression?: number;
  packSize?: number;
}

export interface IndexedPackEntries {
  pack: PackId;
  entries: PackEntry[];
}

/** Packs written before an index file is written mid-backup (a checkpoint). */
export const CHECKPOINT_PACKS = 32;
/** Packs being finished (header, fsync, rename) while the next one fills. */
const MAX_FINISHING = 2;

/**
 * An open, unlocked repository: the read side. Writing needs a lock and a
 * RepositoryWriter (writer()). Storage layout and formats: docs/DESIGN.md.
 */
export class Repository {
  readonly storage: Storage;
  readonly config: RepoConfig;
  readonly sealer: Sealer;
  #index = new MasterIndex();
  /** Index files that could not be read (their packs are read from headers instead). */
  #damagedIndexFiles: { name: IndexId; error: Error }[] = [];
  /** Packs known from their own headers because their index file is damaged. */
  #fromHeaders = new Set<PackId>();
  readonly #masterKey: Buffer;
  readonly #keys: WorkingKeys;
  readonly #gear: Buffer;
  #indexLoading: Promise<void> | null = null;
  #refreshing: Promise<void> | null = null;
  #refreshChain: Promise<void> = Promise.resolve();
  /**
   * Other processes write to this repository while it is open (the engine's
   * job workers): a blob the index does not know makes it read the index
   * files written since, once, before the blob counts as missing.
   */
  followWriters = false;

  private constructor(storage: Storage, config: RepoConfig, masterKey: Buffer) {
    this.storage = storage;
    this.config = config;
    this.#masterKey = masterKey;
    const keys = deriveWorkingKeys(masterKey, config.id);
    this.#keys = keys;
    this.#gear = deriveGearTable(keys.gearSecret);
    this.sealer = new Sealer(keys.encKey, keys.idKey, config.compression);
  }

  get id(): string {
    return this.config.id;
  }

  /** Creates a repository; returns it open, with the recovery key to print once. */
  static async init(storage: Storage, password: string, options: InitOptions = {}): Promise<{ repo: Repository; recoveryKey: string }> {
    if (storage instanceof LocalStorage) await storage.initialize();
    else if ((await storage.list('config')).length > 0) {
      throw new HoldfastError('HF_REPO_EXISTS', `a repository already exists at ${storage.location}`);
    }
    const repoId = randomBytes(32).toString('hex');
    const masterKey = randomBytes(32);
    const recovery = newRecoveryKey();
    const keyFiles: KeyFile[] = [
      await makePassphraseKey(masterKey, repoId, password),
      makeRecoveryKey(masterKey, repoId, recovery.bytes),
    ];
    const config: RepoConfig = {
      version: 1,
      id: repoId,
      created: new Date().toISOString(),
      chunker: { ...(options.chunker ?? DEFAULT_CHUNKER) },
      compression: options.compression ?? DEFAULT_COMPRESSION,
      packSize: options.packSize ?? DEFAULT_PACK_SIZE,
    };
    parseConfig(Buffer.from(JSON.stringify(config))); // validates the options
    for (const k of keyFiles) {
      await storage.save('key', `${k.kind}-${randomBytes(4).toString('hex')}`, [Buffer.from(JSON.stringify(k, null, 2))]);
    }
    const repo = new Repository(storage, config, masterKey);
    // The config is written last: its presence marks a complete repository.
    await storage.save('config', 'config', await sealFile(repo.sealer, 'config', Buffer.from(JSON.stringify(config))));
    return { repo, recoveryKey: recovery.text };
  }

  static async open(storage: Storage, creds: Credentials): Promise<Repository> {
    if (storage instanceof LocalStorage) await storage.assertExists();
    const keyFiles: KeyFile[] = [];
    for (const f of await storage.list('key')) {
      keyFiles.push(parseKeyFile(f.name, await storage.load('key', f.name)));
    }
    const ids = new Set(keyFiles.map((k) => k.repository));
    if (ids.size !== 1) {
      throw new HoldfastError('HF_REPO_CORRUPT',
        `${storage.location}: ${ids.size === 0 ? 'no key files' : 'key files of different repositories'} in keys/`);
    }
    const repoId = [...ids][0]!;
    const masterKey = await unlockMasterKey(keyFiles, repoId, creds);
    const keys = deriveWorkingKeys(masterKey, repoId);
    const boot = new Sealer(keys.encKey, keys.idKey, DEFAULT_COMPRESSION);
    let configBytes: Buffer;
    try {
      configBytes = await storage.load('config', 'config');
    } catch (err) {
      if (hasCode(err, 'HF_STORAGE_NOT_FOUND')) {
        throw new HoldfastError('HF_REPO_NOT_FOUND', `no repository config at ${storage.location}`, { cause: err });
      }
      throw err;
    }
    const config = parseConfig(await openFile(boot, 'config', configBytes, `config of ${storage.location}`));
    if (config.id !== repoId) {
      throw new HoldfastError('HF_REPO_CORRUPT', `${storage.location}: config and key files belong to different repositories`);
    }
    return new Repository(storage, config, masterKey);
  }

  /**
   * Replaces the passphrase: a new passphrase key file is written first, then
   * the other passphrase key files are removed (the recovery key stays).
   */
  async changePassphrase(passphrase: string): Promise<void> {
    const before = (await this.storage.list('key')).map((f) => f.name).filter((n) => n.startsWith('passphrase-'));
    const key = await makePassphraseKey(this.#masterKey, this.id, passphrase);
    const name = `passphrase-${randomBytes(4).toString('hex')}`;
    await this.storage.save('key', name, [Buffer.from(JSON.stringify(key, null, 2))]);
    for (const old of before) if (old !== name) await this.storage.remove('key', old);
  }

  /**
   * A key that authenticates something kept outside the repository but
   * belonging to it (the configuration escrow): HKDF-SHA-256(master key,
   * salt = repository id, info "holdfast v1 <purpose>"), like the working
   * keys. Whoever can open the repository (passphrase or recovery key) can
   * derive it; nobody else can.
   */
  authKey(purpose: 'config escrow mac'): Buffer {
    return Buffer.from(hkdfSync('sha256', this.#masterKey, Buffer.from(this.id, 'hex'), `holdfast v1 ${purpose}`, 32));
  }

  /** A chunker with this repository's keyed gear table and id key. */
  chunker(): Chunker {
    return new Chunker(this.#gear, this.config.chunker, this.#keys.idKey);
  }

  lock(mode: LockMode, command: string): Promise<Lock> {
    return Lock.acquire(this.storage, mode, command);
  }

  /** Where every indexed blob is (loadIndex() fills it). */
  get index(): MasterIndex {
    return this.#index;
  }

  /** Index files that could not be read (their packs are read from headers instead). */
  get damagedIndexFiles(): readonly { name: IndexId; error: Error }[] {
    return this.#damagedIndexFiles;
  }

  /**
   * Loads every index file into the master index (once). A damaged index
   * file loses nothing: it is recorded in damagedIndexFiles, and the packs
   * that no readable index lists are read from their own headers instead
   * (a writer then gives them a new index file: adoptUnindexedPacks).
   * Newer format versions and I/O errors still fail.
   */
  loadIndex(): Promise<void> {
    this.#indexLoading ??= this.#buildIndex(new MasterIndex(), []).then((b) => this.#useIndex(b), (err: unknown) => {
      this.#indexLoading = null;
      throw err;
    });
    return this.#indexLoading;
  }

  /**
   * Catches up with index files another process wrote since the index was
   * loaded (the engine's job workers): new ones are added; when one went
   * away (a prune replaced it) or one was damaged, the whole index is read
   * again. Readers keep the old index until the new one is complete.
   */
  refreshIndex(): Promise<void> {
    // one at a time, each after the last: the newest listing is installed last
    const run = this.#refreshChain.catch(() => undefined).then(() => this.#refreshOnce());
    this.#refreshChain = run;
    return run;
  }

  async #refreshOnce(): Promise<void> {
    if (!this.#indexLoading) return this.loadIndex();
    await this.#indexLoading;
    const present = new Set((await this.storage.list('index')).map((f) => f.name));
    const known = new Set<string>([...this.#index.indexFiles()].map(([id]) => id));
    const rebuild = this.#damagedIndexFiles.length > 0 || [...known].some((id) => !present.has(id));
    const fresh = rebuild ? await this.#buildIndex(new MasterIndex(), []) : null;
    if (fresh) {
      this.#useIndex(fresh);
      return;
    }
    const added = [...present].filter((name) => !known.has(name));
    if (added.length === 0) return;
    const more = await this.#buildIndex(this.#index, added);
    // A new index file that cannot be read: read everything again, as at open.
    if (more.damaged.length > 0) this.#useIndex(await this.#buildIndex(new MasterIndex(), []));
  }

  /** One refresh for all the readers that missed meanwhile. */
  async #catchUp(): Promise<void> {
    this.#refreshing ??= this.refreshIndex().finally(() => { this.#refreshing = null; });
    await this.#refreshing;
  }

  #useIndex(b: { index: MasterIndex; damaged: { name: IndexId; error: Error }[]; fromHeaders: Set<PackId> }): void {
    this.#index = b.index;
    this.#damagedIndexFiles = b.damaged;
    this.#fromHeaders = b.fromHeaders;
  }

  /** Adds index files (all of them when `only` is empty) to `index`; packs no readable file lists come from their headers. */
  async #buildIndex(index: MasterIndex, only: string[]): Promise<{ index: MasterIndex; damaged: { name: IndexId; error: Error }[]; fromHeaders: Set<PackId> }> {
    const files = only.length > 0 ? only.map((name) => ({ name })) : await this.storage.list('index');
    const damaged: { name: IndexId; error: Error }[] = [];
    const fromHeaders = new Set<PackId>(only.length > 0 ? this.#fromHeaders : []);
    await forEachLimit(files, 8, async (f) => {
      try {
        const packs = decodeIndex(await this.loadFile('index', f.name), `index ${shortId(f.name)}`);
        index.add(packs, f.name as IndexId);
      } catch (err) {
        // listed, then removed (a prune in another process replaced it): its packs are in the new one
        if (hasCode(err, 'HF_STORAGE_NOT_FOUND')) return;
        if (!hasCode(err, 'HF_REPO_CORRUPT')) throw err;
        damaged.push({ name: f.name as IndexId, error: err as Error });
      }
    });
    if (damaged.length > 0 && only.length === 0) {
      for (const p of await this.storage.list('pack')) {
        if (index.hasPack(p.name as PackId)) continue;
        try {
          index.add([{ pack: p.name as PackId, entries: await readPackHeader(this.storage, this.sealer, p.name as PackId, p.size) }]);
          fromHeaders.add(p.name as PackId);
        } catch {
          // an unreadable pack is check's to report
        }
      }
    }
    return { index, damaged, fromHeaders };
  }

  /**
   * Packs that no readable index file lists: left by an interrupted writer,
   * or listed only by a damaged index file.
   */
  async unindexedPacks(): Promise<{ name: PackId; size: number }[]> {
    await this.loadIndex();
    return (await this.storage.list('pack'))
      .filter((p) => !this.index.hasPack(p.name as PackId) || this.#fromHeaders.has(p.name as PackId))
      .map((p) => ({ name: p.name as PackId, size: p.size }));
  }

  locate(id: BlobId): BlobLocation {
    const loc = this.index.get(id);
    if (!loc) {
      throw new HoldfastError('HF_BLOB_MISSING',
        `blob ${shortId(id)} is in no pack of ${this.storage.location}; run \`holdfast check\``);
    }
    return loc;
  }

  /** Where the blobs of a pack end, from the index. */
  packDataEnd(pack: PackId): number | undefined {
    return this.index.packDataEnd(pack);
  }

  /** Loads, decrypts, decompresses and verifies one blob. */
  async loadBlob(id: BlobId): Promise<Buffer> {
    return (await this.loadBlobChecked(id)).plain;
  }

  async loadBlobChecked(id: BlobId): Promise<{ plain: Buffer; allZero: boolean; location: BlobLocation }> {
    if (this.followWriters && !this.#index.has(id)) await this.#catchUp();
    let loc = this.locate(id);
    let sealed: Buffer;
    try {
      sealed = await this.storage.load('pack', loc.pack, loc.offset, loc.length);
    } catch (err) {
      // a prune in another process moved the blob to a new pack and deleted the old one
      if (!this.followWriters || !hasCode(err, 'HF_STORAGE_NOT_FOUND')) throw err;
      await this.#catchUp();
      loc = this.locate(id);
      sealed = await this.storage.load('pack', loc.pack, loc.offset, loc.length);
    }
    try {
      const r = await this.sealer.openSized(blobAad(loc.type, id), sealed, loc.rawLength, idBytes(id));
      return { ...r, location: loc };
    } catch (cause) {
      throw new HoldfastError('HF_PACK_CORRUPT',
        `pack ${shortId(loc.pack)} in ${this.storage.location}: blob ${shortId(id)} is damaged ` +
        `(${(cause as Error).message}); run \`holdfast check --read-data\``, { cause });
    } finally {
      release(sealed); // read for this call only: freed now, not at some later collection
    }
  }

  /** Seals and stores a content-addressed file (index or snapshot); returns its id. */
  async saveFile(kind: 'index' | 'snapshot', plain: Buffer): Promise<string> {
    const parts = await sealFile(this.sealer, kind, plain);
    const id = (await sha256(parts)).toString('hex');
    await this.storage.save(kind, id, parts);
    return id;
  }

  /** Loads a content-addressed file, checks its name is its SHA-256, opens it. */
  async loadFile(kind: 'index' | 'snapshot', id: string): Promise<Buffer> {
    const bytes = await this.storage.load(kind, id);
    const digest = (await sha256([bytes])).toString('hex');
    if (digest !== id) {
      throw new HoldfastError('HF_REPO_CORRUPT',
        `${kind} ${shortId(id)} in ${this.storage.location} is damaged (its content hash is ${shortId(digest)}); run \`holdfast check\``);
    }
    if (bytes.length > MAX_FILE_PLAIN + 64) {
      throw new HoldfastError('HF_REPO_CORRUPT', `${kind} ${shortId(id)} is implausibly large`);
    }
    return openFile(this.sealer, kind, bytes, `${kind} ${shortId(id)}`);
  }

  async listSnapshotIds(): Promise<SnapshotId[]> {
    return (await this.storage.list('snapshot')).map((f) => f.name as SnapshotId);
  }

  /**
   * A writer; the caller must hold an append or exclusive lock. With
   * keepEntries, the entries of every pack it writes are kept (prune).
   */
  writer(options: { keepEntries?: boolean } = {}): RepositoryWriter {
    return new RepositoryWriter(this, options.keepEntries ?? false);
  }

  close(): Promise<void> {
    return this.storage.close();
  }
}

export interface WriterStats {
  blobsAdded: number;
  treesAdded: number;
  /** Plaintext bytes of new blobs. */
  rawAdded: number;
  /** Bytes written to the repository (sealed blobs, pack headers, index files). */
  bytesAdded: number;
  packsWritten: number;
  indexFilesWritten: number;
}

/**
 * Adds blobs and files. Blobs are packed in memory, written as packs, and
 * listed in index files every CHECKPOINT_PACKS packs and at flush(). Only
 * after flush() resolves are all blobs saved so far durable and indexed;
 * a snapshot that references them may be written then, never before.
 */
export class RepositoryWriter {
  readonly stats: WriterStats = { blobsAdded: 0, treesAdded: 0, rawAdded: 0, bytesAdded: 0, packsWritten: 0, indexFilesWritten: 0 };
  readonly #repo: Repository;
  readonly #packers: Map<BlobType, PackWriter>;
  /** Pack write batches (a larger sealed blob is written from its own copy). */
  readonly #batches: BufferPool;
  /** Sealing outputs by size class (small blobs use throwaway buffers). */
  readonly #outputs: SizedPools;
  /** Blobs being sealed or sitting in an unwritten pack. */
  readonly #pending = new Set<BlobId>();
  readonly #finishing = new Set<Promise<void>>();
  /** Packs written but in no index file yet, as encoded index sections. */
  #unindexed: { pack: PackId; section: Buffer }[] = [];
  #failure: unknown = null;
  /** Entries of the packs written, when asked for (prune builds a new index from them). */
  readonly written: IndexedPackEntries[] | null;

  constructor(repo: Repository, keepEntries = false) {
    this.#repo = repo;
    this.written = keepEntries ? [] : null;
    const maxChunk = repo.config.chunker.maxSize;
    this.#batches = new BufferPool(2 << 20, 2);
    // Enough of each class for the sealing jobs in flight (the threadpool's four, and the queue).
    this.#outputs = new SizedPools(4 << 10, sealBlobSize(maxChunk), 8 << 20);
    this.#packers = new Map([
      [BlobType.data, new PackWriter(repo.storage, BlobType.data, this.#batches)],
      [BlobType.tree, new PackWriter(repo.storage, BlobType.tree, this.#batches)],
    ]);
  }

  /** Whether the repository has (or is about to have) this blob. */
  known(id: BlobId): boolean {
    return this.#repo.index.has(id) || this.#pending.has(id);
  }

  /**
   * Stores a blob unless it is known. With id null (trees) the id is computed.
   * Resolves once the blob is in a pack being built; rejects with the first
   * failure of any background pack write.
   */
  async saveBlob(type: BlobType, plain: Buffer, id: BlobId | null): Promise<{ id: BlobId; added: boolean }> {
    this.#throwIfFailed();
    if (id !== null) {
      if (this.known(id)) return { id, added: false };
      this.#pending.add(id);
    }
    const out = this.#outputs.get(sealBlobSize(plain.length));
    let sealed: { id: Buffer; sealed: Buffer };
    try {
      sealed = await this.#repo.sealer.sealBlob(type, plain, true, id === null ? null : idBytes(id), out);
    } catch (err) {
      if (id !== null) this.#pending.delete(id);
      this.#outputs.put(out);
      throw err;
    }
    const blobId = id ?? blobIdOf(sealed.id);
    if (id === null && this.known(blobId)) {
      this.#outputs.put(out);
      return { id: blobId, added: false };
    }
    if (id === null) this.#pending.add(blobId);
    const written = this.#append(type, blobId, sealed.sealed, plain.length);
    this.#outputs.put(out); // the packer copied it
    await this.#backpressure(type, written);
    return { id: blobId, added: true };
  }

  /**
   * Stores many small blobs of one type (plain holds them back to back) in
   * one sealing job; ids are computed. Returns each blob's id; known blobs
   * are not stored again.
   */
  async saveBlobs(type: BlobType, plain: Buffer, lens: number[]): Promise<BlobId[]> {
    this.#throwIfFailed();
    const out = this.#outputs.get(sealBlobsSize(lens));
    try {
      const sealed = await this.#repo.sealer.sealBlobs(type, plain, lens, true, out);
      const ids: BlobId[] = [];
      let written: Promise<void> | undefined;
      for (let i = 0; i < sealed.length; i++) {
        const id = blobIdOf(sealed[i]!.id);
        ids.push(id);
        if (this.known(id)) continue;
        this.#pending.add(id);
        written = this.#append(type, id, sealed[i]!.sealed, lens[i]!) ?? written;
      }
      await this.#backpressure(type, written);
      return ids;
    } finally {
      this.#outputs.put(out); // the packer copied what it kept
    }
  }

  /** Puts a sealed blob (copied) into the open pack of its type. */
  #append(type: BlobType, id: BlobId, sealed: Buffer, rawLength: number): Promise<void> | undefined {
    const written = this.#packers.get(type)!.add(id, sealed, rawLength);
    this.stats.blobsAdded++;
    if (type === BlobType.tree) this.stats.treesAdded++;
    this.stats.rawAdded += rawLength;
    this.stats.bytesAdded += sealed.length;
    return written;
  }

  /** Rotates a full pack, and waits while too many are being written. */
  async #backpressure(type: BlobType, written: Promise<void> | undefined): Promise<void> {
    if (this.#packers.get(type)!.size >= this.#repo.config.packSize) {
      this.#rotate(type);
      while (this.#finishing.size >= MAX_FINISHING) await Promise.race(this.#finishing);
    } else if (written) {
      await written.catch((err: unknown) => { this.#failure ??= err; });
    }
    this.#throwIfFailed();
  }

  /**
   * Adds a blob sealed elsewhere (prune copying a verified blob verbatim: its
   * AAD binds type and id, not the pack). The sealed bytes are copied.
   */
  async addSealed(type: BlobType, id: BlobId, sealed: Buffer, rawLength: number): Promise<void> {
    this.#throwIfFailed();
    this.#pending.add(id);
    await this.#backpressure(type, this.#append(type, id, sealed, rawLength));
  }

  #throwIfFailed(): void {
    if (this.#failure) throw this.#failure;
  }

  #rotate(type: BlobType): void {
    const packer = this.#packers.get(type)!;
    if (packer.count === 0) return;
    this.#packers.set(type, new PackWriter(this.#repo.storage, type, this.#batches));
    const task = this.#writePack(packer).catch((err: unknown) => {
      this.#failure ??= err;
    });
    this.#finishing.add(task);
    void task.finally(() => this.#finishing.delete(task));
  }

  async #writePack(packer: PackWriter): Promise<void> {
    const pack: FinishedPack = await packer.finish(this.#repo.sealer);
    this.stats.packsWritten++;
    this.stats.bytesAdded += pack.size - pack.entries.reduce((n, e) => n + e.length, 0);
    const indexed = { pack: pack.id, entries: pack.entries };
    this.#repo.index.add([indexed]);
    this.written?.push(indexed);
    for (const e of pack.entries) this.#pending.delete(e.id);
    this.#unindexed.push({ pack: pack.id, section: encodePackSection(indexed) });
    if (this.#unindexed.length >= CHECKPOINT_PACKS) await this.#writeIndex();
  }

  async #writeIndex(): Promise<void> {
    const packs = this.#unindexed;
    if (packs.length === 0) return;
    this.#unindexed = [];
    try {
      const plain = joinPackSections(packs.map((p) => p.section));
      const id = await this.#repo.saveFile('index', plain);
      this.#repo.index.recordFile(id as IndexId, packs.map((p) => p.pack));
      this.stats.indexFilesWritten++;
      this.stats.bytesAdded += plain.length;
    } catch (err) {
      this.#unindexed.unshift(...packs);
      throw err;
    }
  }

  /** Discards packs being built (after a failure; their blobs are not stored). */
  async abort(): Promise<void> {
    for (const p of this.#packers.values()) await p.abort();
    await Promise.allSettled([...this.#finishing]);
  }

  /** Writes every open pack and an index for all packs not yet in one. */
  async flush(): Promise<void> {
    this.#throwIfFailed();
    for (const type of this.#packers.keys()) this.#rotate(type);
    while (this.#finishing.size > 0) await Promise.all([...this.#finishing]);
    this.#throwIfFailed();
    await this.#writeIndex();
  }

  /**
   * Adds packs that are in storage but in no index (from an interrupted
   * writer) to the index, so their blobs are reused. Returns how many were
   * adopted and which could not be read.
   */
  async adoptUnindexedPacks(): Promise<{ adopted: number; blobs: number; unreadable: { pack: PackId; error: Error }[] }> {
    const packs = await this.#repo.unindexedPacks();
    const unreadable: { pack: PackId; error: Error }[] = [];
    let blobs = 0;
    for (const p of packs) {
      try {
        const entries = await readPackHeader(this.#repo.storage, this.#repo.sealer, p.name, p.size);
        const indexed = { pack: p.name, entries };
        this.#repo.index.add([indexed]);
        this.#unindexed.push({ pack: p.name, section: encodePackSection(indexed) });
        blobs += entries.length;
      } catch (err) {
        unreadable.push({ pack: p.name, error: err as Error });
      }
    }
    await this.#writeIndex();
    return { adopted: packs.length - unreadable.length, blobs, unreadable };
  }

  /** Seals and stores a snapshot record; call only after flush(). */
  async saveSnapshot(plain: Buffer): Promise<SnapshotId> {
    this.#throwIfFailed();
    if (this.#pending.size > 0 || this.#unindexed.length > 0) {
      throw new HoldfastError('HF_INVALID_ARGUMENT', 'saveSnapshot before flush: blobs are not durable yet');
    }
    return (await this.#repo.saveFile('snapshot', plain)) as SnapshotId;
  }
}

/** Runs fn over items with at most `limit` in flight. */
export { forEachLimit };

