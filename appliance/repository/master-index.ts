import { HoldfastError } from '../errors/index.ts';
import type { BlobId, BlobType, IndexId, PackId } from './ids.ts';
import type { IndexedPack } from './index-file.ts';
import type { PackEntry } from './pack-entry.ts';

/** Where a blob is stored. */
export interface BlobLocation extends PackEntry {
  pack: PackId;
}

const ID = 32;
const EMPTY = -1;

/**
 * The union of all index files in memory: blob id -> location, and which
 * index files cover which packs.
 *
 * Blobs live in an open-addressing hash table over typed arrays (about 55
 * bytes per blob, no per-blob JavaScript objects or strings), so a repository
 * of millions of blobs costs tens of MB and little garbage-collection work.
 * Ids are uniformly random (HMAC output), so their first bytes are the hash.
 * When two packs hold the same blob (possible after an interrupted prune),
 * the first one added wins.
 */
export class MasterIndex {
  #count = 0;
  #slots = new Int32Array(1 << 12).fill(EMPTY);
  #ids = new Uint8Array((1 << 11) * ID);
  #pack = new Uint32Array(1 << 11);
  #offset = new Uint32Array(1 << 11);
  #length = new Uint32Array(1 << 11);
  #raw = new Uint32Array(1 << 11);
  #type = new Uint8Array(1 << 11);
  readonly #packIds: PackId[] = [];
  /** Per pack number: where its last blob ends. */
  readonly #packEnds: number[] = [];
  readonly #packNumbers = new Map<PackId, number>();
  readonly #files = new Map<IndexId, PackId[]>();
  readonly #probe = Buffer.alloc(ID);

  /** Records an index file's packs (fileId undefined: packs not yet in a file). */
  add(packs: readonly IndexedPack[], fileId?: IndexId): void {
    if (fileId) this.#files.set(fileId, packs.map((p) => p.pack));
    for (const p of packs) {
      let n = this.#packNumbers.get(p.pack);
      if (n === undefined) {
        n = this.#packIds.length;
        this.#packIds.push(p.pack);
        this.#packNumbers.set(p.pack, n);
        this.#packEnds.push(0);
      }
      for (const e of p.entries) {
        this.#insert(e, n);
        if (e.offset + e.length > this.#packEnds[n]!) this.#packEnds[n] = e.offset + e.length;
      }
    }
  }

  /** Notes that an index file lists these (already added) packs. */
  recordFile(fileId: IndexId, packs: PackId[]): void {
    this.#files.set(fileId, packs);
  }

  #slotOf(id: Buffer | Uint8Array, at: number): number {
    const mask = this.#slots.length - 1;
    let slot = (id[at]! | (id[at + 1]! << 8) | (id[at + 2]! << 16) | (id[at + 3]! << 24)) & mask;
    for (;;) {
      const e = this.#slots[slot]!;
      if (e === EMPTY) return slot;
      if (this.#same(e, id, at)) return slot;
      slot = (slot + 1) & mask;
    }
  }

  #same(entry: number, id: Uint8Array, at: number): boolean {
    const base = entry * ID;
    for (let i = 0; i < ID; i++) if (this.#ids[base + i] !== id[at + i]) return false;
    return true;
  }

  #insert(e: PackEntry, pack: number): void {
    const probe = this.#probe;
    probe.write(e.id, 'hex');
    let slot = this.#slotOf(probe, 0);
    if (this.#slots[slot] !== EMPTY) return; // known: first one wins
    if (this.#count === this.#pack.length) {
      this.#grow();
      slot = this.#slotOf(probe, 0);
    }
    const n = this.#count++;
    this.#ids.set(probe, n * ID);
    this.#pack[n] = pack;
    this.#offset[n] = e.offset;
    this.#length[n] = e.length;
    this.#raw[n] = e.rawLength;
    this.#type[n] = e.type;
    this.#slots[slot] = n;
  }

  #grow(): void {
    const cap = this.#pack.length * 2;
    if (cap > 0x40000000) throw new HoldfastError('HF_INVALID_ARGUMENT', 'index too large for memory');
    const grow32 = (a: Uint32Array) => { const b = new Uint32Array(cap); b.set(a); return b; };
    const ids = new Uint8Array(cap * ID);
    ids.set(this.#ids);
    this.#ids = ids;
    this.#pack = grow32(this.#pack);
    this.#offset = grow32(this.#offset);
    this.#length = grow32(this.#length);
    this.#raw = grow32(this.#raw);
    const type = new Uint8Array(cap);
    type.set(this.#type);
    this.#type = type;
    // Rehash into a table at most half full.
    this.#slots = new Int32Array(cap * 2).fill(EMPTY);
    for (let n = 0; n < this.#count; n++) this.#slots[this.#slotOf(this.#ids, n * ID)] = n;
  }

  #find(id: BlobId): number {
    this.#probe.write(id, 'hex');
    return this.#slots[this.#slotOf(this.#probe, 0)]!;
  }

  /** The blob's entry number (0..blobCount-1), or -1: for compact per-blob marks. */
  entryOf(id: BlobId): number {
    return this.#find(id);
  }

  has(id: BlobId): boolean {
    return this.#find(id) !== EMPTY;
  }

  get(id: BlobId): BlobLocation | undefined {
    const n = this.#find(id);
    return n === EMPTY ? undefined : this.#location(n);
  }

  hasPack(id: PackId): boolean {
    return this.#packNumbers.has(id);
  }

  /** Where the last indexed blob of a pack ends. */
  packDataEnd(id: PackId): number | undefined {
    const n = this.#packNumbers.get(id);
    return n === undefined ? undefined : this.#packEnds[n];
  }

  #location(n: number): BlobLocation {
    return {
      id: Buffer.from(this.#ids.buffer, n * ID, ID).toString('hex') as BlobId,
      pack: this.#packIds[this.#pack[n]!]!,
      type: this.#type[n] as BlobType,
      offset: this.#offset[n]!,
      length: this.#length[n]!,
      rawLength: this.#raw[n]!,
    };
  }

  /** Every indexed blob (made on demand; for check and prune). */
  *locations(): IterableIterator<BlobLocation> {
    for (let n = 0; n < this.#count; n++) yield this.#location(n);
  }

  /** The indexed blobs of each pack, in pack order (one pass; for check and prune). */
  blobsByPack(): Map<PackId, BlobLocation[]> {
    const out = new Map<PackId, BlobLocation[]>(this.#packIds.map((p) => [p, []]));
    for (const loc of this.locations()) out.get(loc.pack)!.push(loc);
    for (const list of out.values()) list.sort((a, b) => a.offset - b.offset);
    return out;
  }

  get packCount(): number {
    return this.#packIds.length;
  }

  get blobCount(): number {
    return this.#count;
  }

  indexFiles(): IterableIterator<[IndexId, PackId[]]> {
    return this.#files.entries();
  }
}
