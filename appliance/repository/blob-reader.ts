import { BufferPool, SizedPools, release } from '../../native/index.ts';
import { HoldfastError } from '../errors/index.ts';
import { type BlobId, type PackId, idBytes, shortId } from './ids.ts';
import type { BlobLocation } from './master-index.ts';
import { blobAad } from './pack-entry.ts';
import type { Repository } from './repository.ts';

/** A span of a pack read in one go, shared by the blobs inside it. */
interface Window {
  pack: PackId;
  start: number;
  end: number;
  data: Promise<Buffer>;
  /** Blobs being opened from it; it is freed when evicted and unused. */
  users: number;
  evicted: boolean;
}

export interface LoadedBlob {
  plain: Buffer;
  allZero: boolean;
  location: BlobLocation;
}

/**
 * Loads blobs for a long sequential job (restore), reading packs ahead: a
 * request reads a window of up to `window` bytes from the blob onwards, and
 * later blobs inside it (the next files of the same directory, the next
 * chunks of a file) are served without another read. Plaintext lands in
 * pooled buffers; hand each one back with done(). Every blob is checked
 * against its id.
 */
export class BlobReader {
  readonly #repo: Repository;
  readonly #windowSize: number;
  readonly #keep: number;
  readonly #windows: Window[] = [];
  readonly #windowBuffers: BufferPool;
  readonly #outputs: SizedPools;

  constructor(repo: Repository, options: { window?: number; keep?: number } = {}) {
    this.#repo = repo;
    this.#windowSize = options.window ?? 1 << 20;
    this.#keep = options.keep ?? 3;
    this.#windowBuffers = new BufferPool(this.#windowSize, this.#keep + 1);
    this.#outputs = new SizedPools(4 << 10, repo.config.chunker.maxSize, 1 << 20);
  }

  async load(id: BlobId): Promise<LoadedBlob> {
    const loc = this.#repo.locate(id);
    const w = this.#window(loc);
    w.users++;
    let out: Buffer | null = null;
    try {
      const data = await w.data;
      const sealed = data.subarray(loc.offset - w.start, loc.offset - w.start + loc.length);
      out = this.#outputs.get(loc.rawLength);
      const { allZero } = await this.#repo.sealer.openSized(blobAad(loc.type, id), sealed, loc.rawLength, idBytes(id), out)
        .catch((cause: unknown) => {
          throw new HoldfastError('HF_PACK_CORRUPT',
            `pack ${shortId(loc.pack)} in ${this.#repo.storage.location}: blob ${shortId(id)} is damaged ` +
            `(${(cause as Error).message}); run \`holdfast check --read-data\``, { cause });
        });
      return { plain: out, allZero, location: loc };
    } catch (err) {
      if (out) this.done(out);
      throw err;
    } finally {
      w.users--;
      this.#maybeFree(w);
    }
  }

  /**
   * Loads many blobs in one opening job: their plaintexts lie back to back in
   * one pooled buffer (hand it back with done() when finished). A blob that
   * is missing or damaged fails alone, with a coded error.
   */
  async loadMany(ids: readonly BlobId[]): Promise<{ buffer: Buffer; results: (LoadedBlob | { error: HoldfastError })[] }> {
    const locs: (BlobLocation | HoldfastError)[] = ids.map((id) => {
      try {
        return this.#repo.locate(id);
      } catch (err) {
        return err as HoldfastError;
      }
    });
    // Each window is marked in use as soon as it is had: a later one may
    // evict it from the cache, and only unused windows are recycled.
    const windows = locs.map((l) => {
      if (l instanceof HoldfastError) return null;
      const w = this.#window(l);
      w.users++;
      return w;
    });
    let total = 0;
    for (const l of locs) if (!(l instanceof HoldfastError)) total += l.rawLength;
    const buffer = this.#outputs.get(total);
    try {
      const items: { sealed: Buffer; aad: Buffer; rawLength: number }[] = [];
      const order: number[] = [];
      const results: (LoadedBlob | { error: HoldfastError })[] = locs.map((l) => ({ error: l as HoldfastError }));
      for (let i = 0; i < ids.length; i++) {
        const loc = locs[i]!;
        const w = windows[i];
        if (loc instanceof HoldfastError || !w) continue;
        let data: Buffer;
        try {
          data = await w.data;
        } catch (err) {
          results[i] = { error: err instanceof HoldfastError ? err : new HoldfastError('HF_IO', (err as Error).message, { cause: err }) };
          continue;
        }
        items.push({ sealed: data.subarray(loc.offset - w.start, loc.offset - w.start + loc.length), aad: blobAad(loc.type, ids[i]!), rawLength: loc.rawLength });
        order.push(i);
      }
      const opened = items.length > 0 ? await this.#repo.sealer.openBlobs(items, buffer) : [];
      opened.forEach((o, k) => {
        const i = order[k]!;
        const loc = locs[i] as BlobLocation;
        results[i] = 'code' in o
          ? { error: new HoldfastError('HF_PACK_CORRUPT', `pack ${shortId(loc.pack)} in ${this.#repo.storage.location}: blob ${shortId(ids[i]!)} is damaged (${o.code})`) }
          : { plain: o.plain, allZero: o.allZero, location: loc };
      });
      return { buffer, results };
    } catch (err) {
      this.#outputs.put(buffer);
      throw err;
    } finally {
      for (const w of windows) {
        if (!w) continue;
        w.users--;
        this.#maybeFree(w);
      }
    }
  }

  /** Memory a blob of this size occupies once loaded (for the caller's budget). */
  footprint(rawLength: number): number {
    return this.#outputs.sizeFor(rawLength);
  }

  /** Hands a plaintext buffer back (nothing may use it afterwards). */
  done(plain: Buffer): void {
    this.#outputs.put(plain);
  }

  #window(loc: BlobLocation): Window {
    const hit = this.#windows.find((w) => w.pack === loc.pack && w.start <= loc.offset && loc.offset + loc.length <= w.end);
    if (hit) return hit;
    const start = loc.offset;
    const end = Math.max(loc.offset + loc.length, Math.min(loc.offset + this.#windowSize, this.#packDataEnd(loc)));
    // A blob larger than a window gets a read of its own: nothing else is in
    // it, so it is not cached, and its buffer is freed as soon as it is opened.
    const alone = end - start > this.#windowSize;
    const w: Window = {
      pack: loc.pack, start, end, users: 0, evicted: alone,
      data: this.#read(loc.pack, start, end - start),
    };
    w.data.catch(() => undefined);
    if (alone) return w;
    this.#windows.push(w);
    while (this.#windows.length > this.#keep) {
      const old = this.#windows.shift()!;
      old.evicted = true;
      this.#maybeFree(old);
    }
    return w;
  }

  /** Reads a span into a pooled buffer when it fits one (a larger blob gets its own). */
  async #read(pack: PackId, start: number, length: number): Promise<Buffer> {
    if (length > this.#windowBuffers.size) return this.#repo.storage.load('pack', pack, start, length);
    const buf = this.#windowBuffers.get();
    try {
      return await this.#repo.storage.load('pack', pack, start, length, buf.subarray(0, length));
    } catch (err) {
      this.#windowBuffers.put(buf);
      throw err;
    }
  }

  /** Where the pack's blobs end (its size minus header and trailer), as known from the index. */
  #packDataEnd(loc: BlobLocation): number {
    return this.#repo.packDataEnd(loc.pack) ?? loc.offset + loc.length;
  }

  #maybeFree(w: Window): void {
    if (!w.evicted || w.users > 0) return;
    w.data.then((b) => {
      if (this.#windowBuffers.owns(b)) this.#windowBuffers.put(b);
      else release(b);
    }, () => undefined);
  }
}
