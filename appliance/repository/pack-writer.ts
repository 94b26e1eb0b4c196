import { type BufferPool, Hasher, type Sealer, release } from '../../native/index.ts';
import type { FileWriter, Storage } from '../storage/index.ts';
import { Magic } from './envelope.ts';
import { type BlobId, type BlobType, type PackId, blobIdOf } from './ids.ts';
import { type PackEntry, encodeEntries } from './pack-entry.ts';

/** Trailer: u32 LE sealed-header length, then "HFPE". */
export const TRAILER_MAGIC = Buffer.from('HFPE', 'latin1');
export const TRAILER_SIZE = 8;

export interface FinishedPack {
  id: PackId;
  size: number;
  entries: PackEntry[];
}

/**
 * Writes one pack of blobs of one type, streaming to a temporary file:
 *   "HFPACK\0\1" || blob… || sealed header || u32 header length || "HFPE"
 * The header lists (id, type, offset, length, raw length) per blob and is
 * sealed with the magic "HFPKHD\0\1" as AAD. The pack id is the SHA-256 of
 * the whole file, computed as it is written; the file becomes visible under
 * that id only when finish() commits it (fsync, rename, directory fsync).
 *
 * Sealed blobs are copied into batch buffers (from a pool) that are written
 * and hashed when full, so the caller may reuse a blob's buffer as soon as
 * add() returns.
 */
export class PackWriter {
  readonly type: BlobType;
  readonly #storage: Storage;
  readonly #batches: BufferPool;
  readonly #hasher = new Hasher();
  readonly #entries: PackEntry[] = [];
  #file: Promise<FileWriter> | null = null;
  #batch: Buffer | null = null;
  #used = 0;
  #size = 0;
  #chain: Promise<void> = Promise.resolve();

  constructor(storage: Storage, type: BlobType, batches: BufferPool) {
    this.#storage = storage;
    this.type = type;
    this.#batches = batches;
  }

  /** Bytes of magic and blobs so far (0 before the first blob). */
  get size(): number {
    return this.#size;
  }

  get count(): number {
    return this.#entries.length;
  }

  /**
   * Adds a sealed blob (copied; the caller keeps its buffer). When a batch
   * fills up it is written; the returned promise then settles once it is
   * (backpressure), and rejects if writing fails.
   */
  add(id: BlobId, sealed: Uint8Array, rawLength: number): Promise<void> | undefined {
    if (this.#size === 0) void this.#append(Magic.pack);
    this.#entries.push({ id, type: this.type, offset: this.#size, length: sealed.length, rawLength });
    return this.#append(sealed);
  }

  #append(bytes: Uint8Array): Promise<void> | undefined {
    let written: Promise<void> | undefined;
    this.#size += bytes.length;
    if (this.#batch && this.#used + bytes.length > this.#batch.length) written = this.#flush();
    if (bytes.length > this.#batches.size) {
      // larger than a batch (an incompressible big chunk, a huge tree): written from a copy of its own
      return this.#write([Buffer.from(bytes)], null);
    }
    this.#batch ??= this.#batches.get();
    this.#batch.set(bytes, this.#used);
    this.#used += bytes.length;
    return written;
  }

  #flush(): Promise<void> | undefined {
    const batch = this.#batch;
    if (!batch || this.#used === 0) return undefined;
    const used = this.#used;
    this.#batch = null;
    this.#used = 0;
    return this.#write([batch.subarray(0, used)], batch);
  }

  #write(parts: Buffer[], batch: Buffer | null): Promise<void> {
    this.#file ??= this.#storage.create('pack');
    const file = this.#file;
    this.#chain = this.#chain.then(async () => {
      const f = await file;
      await Promise.all([f.write(parts), this.#hasher.update(parts)]);
      if (batch) this.#batches.put(batch);
      else for (const p of parts) release(p);
    });
    return this.#chain;
  }

  async finish(sealer: Sealer): Promise<FinishedPack> {
    const header = await sealer.sealData(Magic.packHeader, encodeEntries(this.#entries), false);
    const trailer = Buffer.alloc(TRAILER_SIZE);
    trailer.writeUInt32LE(header.length, 0);
    TRAILER_MAGIC.copy(trailer, 4);
    void this.#append(header);
    void this.#append(trailer);
    try {
      this.#flush();
      await this.#chain;
    } catch (err) {
      await this.abort();
      throw err;
    }
    const id = blobIdOf(this.#hasher.digest()) as string as PackId;
    await (await this.#file!).commit(id);
    return { id, size: this.#size, entries: this.#entries };
  }

  /** Discards the temporary file. */
  async abort(): Promise<void> {
    await this.#chain.catch(() => undefined);
    const f = await this.#file?.catch(() => null);
    await f?.abort();
  }
}
