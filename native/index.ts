/**
 * The native addon's public face: validates input, types results, and turns
 * native failures into errors with a stable `code`. All work happens on the
 * libuv threadpool; every method here returns a promise.
 *
 * Owns: FastCDC chunking (+ HMAC ids in the same pass), sealing/opening of
 * blobs (zstd + AES-256-GCM + HMAC check), SHA-256 of byte lists, batched
 * directory scans, ns-precision times, mknod.
 * Must not: know about repositories, packs or trees.
 */
import { createHmac } from 'node:crypto';
import { createRequire } from 'node:module';
import { constants as osConstants } from 'node:os';
import { isMarkedAsUntransferable } from 'node:worker_threads';

export { ReferenceChunker } from './reference-chunker.ts';

interface Binding {
  createChunker(gear: Uint8Array, min: number, avg: number, max: number, idKey: Uint8Array | null): object;
  chunkerUpdate(chunker: object, data: Uint8Array, final: boolean): Promise<Buffer>;
  chunkerReset(chunker: object): void;
  createSealer(encKey: Uint8Array, idKey: Uint8Array, zstdLevel: number): object;
  sealBound(n: number): number;
  sealBlob(sealer: object, type: number, plain: Uint8Array, compress: boolean, id: Uint8Array | null, out: Uint8Array): Promise<number>;
  sealData(sealer: object, aad: Uint8Array, plain: Uint8Array, compress: boolean, out: Uint8Array): Promise<number>;
  sealBlobs(sealer: object, type: number, plain: Uint8Array, lens: number[], compress: boolean, out: Uint8Array): Promise<Buffer>;
  readFiles(paths: Uint8Array, sizes: number[], out: Uint8Array): Promise<Buffer>;
  openBlobs(sealer: object, sealed: Uint8Array[], aads: Uint8Array, rawLens: number[], out: Uint8Array): Promise<Buffer>;
  writeFiles(paths: Uint8Array, parts: (Uint8Array | null)[], nums: number[]): Promise<Buffer>;
  open(sealer: object, aad: Uint8Array, sealed: Uint8Array, maxPlain: number, expectId: Uint8Array | null, out: Uint8Array | null): Promise<[Buffer | null, boolean]>;
  sha256(parts: Uint8Array[]): Promise<Buffer>;
  createHasher(): object;
  hasherUpdate(hasher: object, parts: Uint8Array[]): Promise<void>;
  hasherDigest(hasher: object): Buffer;
  hasherState(hasher: object): Buffer;
  hasherRestore(hasher: object, state: Uint8Array): void;
  readFile(path: Uint8Array, out: Uint8Array): Promise<number>;
  scandir(path: Uint8Array): Promise<Buffer>;
  scandirMany(paths: Uint8Array): Promise<(Buffer | number)[]>;
  sdNotify(socketName: string, state: Uint8Array): number;
  setTimes(path: Uint8Array, aSec: number, aNsec: number, mSec: number, mNsec: number, nofollow: boolean): Promise<void>;
  mknod(path: Uint8Array, mode: number, dev: number): Promise<void>;
  writeFile(path: Uint8Array, data: Uint8Array | null, size: number, mode: number, uid: number, gid: number, aSec: number, aNsec: number, mSec: number, mNsec: number): Promise<void>;
  setMeta(path: Uint8Array, isLink: boolean, mode: number, uid: number, gid: number, aSec: number, aNsec: number, mSec: number, mNsec: number): Promise<void>;
  versions(): { zstd: string; openssl: string };
}

function load(): Binding {
  const require = createRequire(import.meta.url);
  try {
    return require('./build/Release/holdfast_native.node') as Binding;
  } catch (cause) {
    throw Object.assign(
      new Error('the native addon is not built or cannot load: run `npm install` in the Holdfast checkout', { cause }),
      { code: 'HF_NATIVE_UNAVAILABLE' },
    );
  }
}

const native = load();

/** Bytes of one sealed object's envelope: nonce(12) + encoding(1) + tag(16). */
export const SEAL_OVERHEAD = 29;
export const ID_LENGTH = 32;

export interface ChunkerParams {
  minSize: number;
  avgSize: number;
  maxSize: number;
}

export interface Chunk {
  /** Bytes in the chunk. */
  length: number;
  /** HMAC-SHA-256 of the chunk under the id key (all zero when the chunker has none). */
  id: Buffer;
}

/** Derives the 256-entry gear table (2048 bytes, little-endian u64) from a secret. */
export function deriveGearTable(secret: Uint8Array): Buffer {
  if (secret.length < 16) throw codeError('HF_INVALID_ARGUMENT', 'gear secret must be at least 16 bytes');
  const out = Buffer.alloc(2048);
  for (let i = 0; i < 64; i++) {
    createHmac('sha256', secret).update('holdfast gear v1').update(Buffer.from([i])).digest().copy(out, i * 32);
  }
  return out;
}

export function validateChunkerParams(p: ChunkerParams): void {
  const ok =
    Number.isInteger(p.minSize) && Number.isInteger(p.avgSize) && Number.isInteger(p.maxSize) &&
    p.minSize >= 64 && p.minSize < p.avgSize && p.avgSize < p.maxSize && p.maxSize <= 64 << 20 &&
    p.avgSize >= 256 && (p.avgSize & (p.avgSize - 1)) === 0;
  if (!ok) {
    throw codeError('HF_INVALID_ARGUMENT',
      `chunk sizes ${p.minSize}/${p.avgSize}/${p.maxSize} invalid: need 64 <= min < avg < max <= 64 MiB, avg a power of two`);
  }
}

/**
 * A content-defined chunker over one stream at a time. Feed the stream in any
 * split with update(); pass final=true with the last piece (possibly empty).
 * Boundaries do not depend on the split. One update at a time per instance.
 */
export class Chunker {
  readonly #handle: object;

  constructor(gear: Uint8Array, params: ChunkerParams, idKey: Uint8Array | null) {
    validateChunkerParams(params);
    if (gear.length !== 2048) throw codeError('HF_INVALID_ARGUMENT', 'gear table must be 2048 bytes');
    if (idKey !== null && idKey.length !== 32) throw codeError('HF_INVALID_ARGUMENT', 'id key must be 32 bytes');
    this.#handle = native.createChunker(gear, params.minSize, params.avgSize, params.maxSize, idKey);
  }

  /** Chunks that end within `data` (or at the end of the stream when final). */
  async update(data: Uint8Array, final: boolean): Promise<Chunk[]> {
    const packed = await native.chunkerUpdate(this.#handle, data, final);
    const chunks: Chunk[] = [];
    for (let o = 0; o < packed.length; o += 36) {
      chunks.push({ length: packed.readUInt32LE(o), id: packed.subarray(o + 4, o + 36) });
    }
    return chunks;
  }

  /** Forgets a partly fed stream. */
  reset(): void {
    native.chunkerReset(this.#handle);
  }
}

/** Bytes sealBlobs needs for blobs of these sizes. */
export function sealBlobsSize(lens: readonly number[]): number {
  let n = 0;
  for (const l of lens) n += native.sealBound(l);
  return n;
}

/** Bytes sealBlob needs for a blob of n bytes: its id and the worst-case sealed size. */
export function sealBlobSize(n: number): number {
  return ID_LENGTH + native.sealBound(n);
}

/** A sealed blob with its id. */
export interface SealedBlob {
  id: Buffer;
  sealed: Buffer;
}

/**
 * Seals and opens objects under one repository's keys.
 * sealed = nonce(12) || AES-256-GCM(encoding(1) || payload) || tag(16).
 */
export class Sealer {
  readonly #handle: object;

  constructor(encKey: Uint8Array, idKey: Uint8Array, zstdLevel: number) {
    if (!Number.isInteger(zstdLevel) || zstdLevel < 1 || zstdLevel > 19) {
      throw codeError('HF_INVALID_ARGUMENT', `zstd level ${zstdLevel} is not in 1..19`);
    }
    this.#handle = native.createSealer(encKey, idKey, zstdLevel);
  }

  /**
   * Seals a blob under AAD = type || id; the id is computed when not given.
   * The result views `out` when given (it must hold sealBlobSize(plain.length)
   * bytes), else a fresh buffer.
   */
  async sealBlob(type: number, plain: Uint8Array, compress: boolean, id: Uint8Array | null, out?: Buffer): Promise<SealedBlob> {
    out ??= Buffer.allocUnsafe(sealBlobSize(plain.length));
    const n = await native.sealBlob(this.#handle, type, plain, compress, id, out);
    return { id: out.subarray(0, ID_LENGTH), sealed: out.subarray(ID_LENGTH, n) };
  }

  /**
   * Seals many blobs of one type in one job: plain holds them back to back
   * (lens), ids are computed. `out` (at least sealBlobsSize(lens) bytes)
   * receives the sealed blobs back to back; the results say where.
   */
  async sealBlobs(type: number, plain: Uint8Array, lens: number[], compress: boolean, out: Buffer): Promise<{ id: Buffer; sealed: Buffer }[]> {
    const recs = await native.sealBlobs(this.#handle, type, plain, lens, compress, out);
    const results: { id: Buffer; sealed: Buffer }[] = [];
    for (let o = 0; o < recs.length; o += 40) {
      const at = recs.readUInt32LE(o);
      results.push({ id: recs.subarray(o + 8, o + 40), sealed: out.subarray(at, at + recs.readUInt32LE(o + 4)) });
    }
    return results;
  }

  /**
   * Opens many blobs in one job, each into `out` back to back (exactly its
   * raw length), checking each against the id in its AAD (type || id). One
   * failure does not stop the others: per blob, the plaintext or the code.
   */
  async openBlobs(items: { sealed: Uint8Array; aad: Uint8Array; rawLength: number }[], out: Buffer): Promise<({ plain: Buffer; allZero: boolean } | { code: string })[]> {
    const recs = await native.openBlobs(this.#handle, items.map((i) => i.sealed), Buffer.concat(items.map((i) => i.aad)),
      items.map((i) => i.rawLength), out);
    const codes = ['', 'HF_DECRYPT_FAILED', 'HF_DECOMPRESS_FAILED', 'HF_BLOB_ID_MISMATCH', 'HF_NATIVE_ERROR'];
    let at = 0;
    return items.map((item, i) => {
      const plain = out.subarray(at, at + item.rawLength);
      at += item.rawLength;
      const status = recs[i * 2 + 1]!;
      return status === 0 ? { plain, allZero: recs[i * 2] === 1 } : { code: codes[status] ?? 'HF_NATIVE_ERROR' };
    });
  }

  /** Seals bytes under an arbitrary AAD (files: the AAD is their magic). */
  async sealData(aad: Uint8Array, plain: Uint8Array, compress: boolean): Promise<Buffer> {
    const out = Buffer.allocUnsafe(native.sealBound(plain.length));
    return out.subarray(0, await native.sealData(this.#handle, aad, plain, compress, out));
  }

  /**
   * Opens a sealed object of unknown size (at most maxPlain bytes). Rejects
   * with HF_DECRYPT_FAILED (altered, wrong key or AAD), HF_DECOMPRESS_FAILED
   * (bad frame, or too large) or HF_BLOB_ID_MISMATCH (content is not what
   * expectId names).
   */
  async open(aad: Uint8Array, sealed: Uint8Array, maxPlain: number, expectId: Uint8Array | null): Promise<{ plain: Buffer; allZero: boolean }> {
    const [plain, allZero] = await native.open(this.#handle, aad, sealed, maxPlain, expectId, null);
    return { plain: plain!, allZero };
  }

  /**
   * Opens a sealed object whose plaintext is exactly `size` bytes, into `out`
   * (exactly size bytes) or a fresh buffer.
   */
  async openSized(aad: Uint8Array, sealed: Uint8Array, size: number, expectId: Uint8Array | null, out?: Buffer): Promise<{ plain: Buffer; allZero: boolean }> {
    const plain = out ?? Buffer.allocUnsafe(size);
    if (plain.length !== size) throw codeError('HF_INVALID_ARGUMENT', `output buffer holds ${plain.length} bytes, not ${size}`);
    const [, allZero] = await native.open(this.#handle, aad, sealed, size, expectId, plain);
    return { plain, allZero };
  }
}

/** SHA-256 over the concatenation of parts, on the threadpool. */
export function sha256(parts: Uint8Array[]): Promise<Buffer> {
  return native.sha256(parts);
}

/** Incremental SHA-256; one update at a time (await each). */
export class Hasher {
  readonly #handle = native.createHasher();

  /** A hasher that continues from a state() another hasher (maybe in another process) gave. */
  static fromState(state: Uint8Array): Hasher {
    const h = new Hasher();
    native.hasherRestore(h.#handle, state);
    return h;
  }

  update(parts: Uint8Array[]): Promise<void> {
    return native.hasherUpdate(this.#handle, parts);
  }

  /** The digest of everything so far; the hasher then starts over. */
  digest(): Buffer {
    return native.hasherDigest(this.#handle);
  }

  /**
   * The state after everything so far, as 109 plain bytes (version 1,
   * SHA-256 words, bit count, buffered block), for Hasher.fromState.
   * Secret only as far as the bytes hashed are.
   */
  state(): Buffer {
    return native.hasherState(this.#handle);
  }
}

/**
 * Reads a whole regular file into out in one threadpool job (open without
 * following symlinks, O_NOATIME where permitted, read, close) and resolves
 * with the bytes read. Rejects with the errno code; EINVAL when it is not a
 * regular file, EFBIG when it holds more than out.length bytes.
 */
export function readFile(path: Uint8Array, out: Uint8Array): Promise<number> {
  return native.readFile(path, out);
}

/**
 * Reads many small regular files into out, back to back, in one threadpool
 * job; each gets room for its listed size. Per file: where its bytes are, or
 * the errno code (EFBIG: it grew past its listed size; EINVAL: not a regular
 * file any more; ENOENT, EACCES, ELOOP, …).
 */
export async function readFiles(paths: readonly Uint8Array[], sizes: readonly number[], out: Buffer): Promise<({ data: Buffer } | { errno: number })[]> {
  const joined = Buffer.concat(paths.flatMap((p) => [p, NUL]));
  const recs = await native.readFiles(joined, [...sizes], out);
  const results: ({ data: Buffer } | { errno: number })[] = [];
  for (let o = 0; o < recs.length; o += 12) {
    const errno = recs.readInt32LE(o + 8);
    const at = recs.readUInt32LE(o);
    results.push(errno ? { errno } : { data: out.subarray(at, at + recs.readUInt32LE(o + 4)) });
  }
  return results;
}
const NUL = Buffer.alloc(1);

export interface ScanEntry {
  name: Buffer;
  /** 0, or the errno of lstat/readlink for this entry (it vanished, or is unreadable). */
  errno: number;
  /** st_mode: type and permission bits. */
  mode: number;
  uid: number;
  gid: number;
  size: number;
  ino: number;
  dev: number;
  nlink: number;
  rdev: number;
  mtimeSec: number;
  mtimeNsec: number;
  ctimeSec: number;
  ctimeNsec: number;
  /** 512-byte blocks allocated. */
  blocks: number;
  /** Symlink target bytes (symlinks only). */
  target: Buffer | null;
}

const SCAN_HEADER = 96;
const TWO_32 = 0x1_0000_0000;

/** A directory's entries with lstat data, sorted by name bytes, in one threadpool job. */
export async function scandir(path: Uint8Array): Promise<ScanEntry[]> {
  return decodeScan(await native.scandir(path));
}

/**
 * scandir for several directories in one threadpool job: per path, its
 * entries or the errno of opening or reading it.
 */
export async function scandirMany(paths: readonly Uint8Array[]): Promise<(ScanEntry[] | { errno: number })[]> {
  if (paths.length === 0) return [];
  const joined = Buffer.concat(paths.flatMap((p) => [p, NUL]));
  return (await native.scandirMany(joined)).map((r) => (typeof r === 'number' ? { errno: r } : decodeScan(r)));
}

/** The records of a scandir buffer (layout: native/src/posix.h). 64-bit fields are read as two halves, not as BigInts. */
function decodeScan(b: Buffer): ScanEntry[] {
  const count = b.readUInt32LE(0);
  const out: ScanEntry[] = new Array(count);
  const u64 = (o: number) => b.readUInt32LE(o) + b.readUInt32LE(o + 4) * TWO_32;
  const i64 = (o: number) => b.readUInt32LE(o) + b.readInt32LE(o + 4) * TWO_32;
  let o = 8;
  for (let i = 0; i < count; i++) {
    const nameLen = b.readUInt32LE(o);
    const targetLen = b.readUInt32LE(o + 28);
    const nameStart = o + SCAN_HEADER;
    out[i] = {
      name: b.subarray(nameStart, nameStart + nameLen),
      errno: b.readInt32LE(o + 4),
      mode: b.readUInt32LE(o + 8),
      uid: b.readUInt32LE(o + 12),
      gid: b.readUInt32LE(o + 16),
      mtimeNsec: b.readUInt32LE(o + 20),
      ctimeNsec: b.readUInt32LE(o + 24),
      size: u64(o + 32),
      ino: u64(o + 40),
      dev: u64(o + 48),
      nlink: u64(o + 56),
      rdev: u64(o + 64),
      mtimeSec: i64(o + 72),
      ctimeSec: i64(o + 80),
      blocks: u64(o + 88),
      target: targetLen ? b.subarray(nameStart + nameLen, nameStart + nameLen + targetLen) : null,
    };
    o += (SCAN_HEADER + nameLen + targetLen + 7) & ~7;
  }
  return out;
}

/** utimensat with nanoseconds; nofollow sets a symlink's own times. */
export function setTimes(path: Uint8Array, atime: readonly [number, number], mtime: readonly [number, number], nofollow: boolean): Promise<void> {
  return native.setTimes(path, atime[0], atime[1], mtime[0], mtime[1], nofollow);
}

/** Ownership (uid -1: leave as is), permission bits and times to apply. */
export interface FileMeta {
  mode: number;
  uid: number;
  gid: number;
  atime: readonly [number, number];
  mtime: readonly [number, number];
}

/**
 * Creates or truncates a regular file (replacing, never following, a symlink
 * at the path), writes data (null: leaves a hole), sets its size and
 * metadata, closes it: one threadpool job. EISDIR when a directory is there.
 */
export function writeFile(path: Uint8Array, data: Uint8Array | null, size: number, m: FileMeta): Promise<void> {
  return native.writeFile(path, data, size, m.mode, m.uid, m.gid, m.atime[0], m.atime[1], m.mtime[0], m.mtime[1]);
}

/** One entry of writeFiles: a regular file (data null: a hole of size bytes) or a symlink. */
export type WriteEntry =
  | { path: Uint8Array; kind?: 'file'; data: Uint8Array | null; size: number; meta: FileMeta }
  | { path: Uint8Array; kind: 'symlink'; target: Uint8Array; meta: FileMeta };

/**
 * writeFile for many small files, and symlinks, in one job. A symlink
 * replaces a file, link or special file in its place (a directory there is
 * EISDIR) and gets its owner and times, not following it. Each entry gets
 * null or an errno name, in order. The data buffers are read in place.
 */
export async function writeFiles(entries: readonly WriteEntry[]): Promise<(string | null)[]> {
  const parts: (Uint8Array | null)[] = [];
  const nums: number[] = [];
  const paths: Uint8Array[] = [];
  for (const f of entries) {
    const m = f.meta;
    paths.push(f.path, NUL);
    if (f.kind === 'symlink') {
      parts.push(f.target);
      nums.push(1, f.target.length, m.mode, m.uid, m.gid, m.atime[0], m.atime[1], m.mtime[0], m.mtime[1]);
    } else {
      parts.push(f.data);
      nums.push(0, f.size, m.mode, m.uid, m.gid, m.atime[0], m.atime[1], m.mtime[0], m.mtime[1]);
    }
  }
  const recs = await native.writeFiles(Buffer.concat(paths), parts, nums);
  return entries.map((_, i) => {
    const e = recs.readInt32LE(i * 4);
    return e === 0 ? null : ERRNO_NAMES.get(e) ?? `E${e}`;
  });
}
const ERRNO_NAMES = new Map<number, string>(Object.entries(osConstants.errno).map(([k, v]) => [v, k]));

/** Applies owner, mode (not for symlinks) and ns times without following a final symlink. */
export function setMeta(path: Uint8Array, isLink: boolean, m: FileMeta): Promise<void> {
  return native.setMeta(path, isLink, m.mode, m.uid, m.gid, m.atime[0], m.atime[1], m.mtime[0], m.mtime[1]);
}

/** mknod(2): FIFOs (no privilege needed) and device nodes (root). */
export function mknod(path: Uint8Array, mode: number, dev: number): Promise<void> {
  return native.mknod(path, mode, dev);
}

/**
 * Sends an sd_notify(3) state ("READY=1", "STATUS=…", "WATCHDOG=1", several
 * lines at once) to the socket systemd named in NOTIFY_SOCKET, from this
 * process (so NotifyAccess=main accepts it): false when there is no
 * socket (not started by systemd), an errno name when sending failed.
 */
export function sdNotify(state: string, socketName = process.env.NOTIFY_SOCKET): boolean | string {
  if (!socketName) return false;
  const e = native.sdNotify(socketName, Buffer.from(state));
  return e === 0 ? true : ERRNO_NAMES.get(e) ?? `E${e}`;
}

export function versions(): { zstd: string; openssl: string } {
  return native.versions();
}

/**
 * Frees the memory behind a buffer now rather than at some later garbage
 * collection, by detaching its ArrayBuffer: every view of it becomes empty.
 * Call only when nothing will touch the bytes again, and never before a
 * native job that reads them has settled. Buffers in Node's shared
 * allocation pool (small ones; the pool is marked untransferable) are left to
 * the GC.
 */
export function release(buf: Uint8Array): void {
  const ab = buf.buffer;
  if (ab instanceof ArrayBuffer && !ab.detached && !isMarkedAsUntransferable(ab)) ab.transfer(0);
}

/**
 * Idle buffers of all pools of the process, oldest first: together they
 * stay within IDLE_CAP, the least recently returned freed first. So a pool
 * in use keeps what it reuses, while buffers of a pool whose phase is over
 * (the large reads after a run of small files, say) are freed, instead of
 * every pool holding its worst case at once. Fresh large buffers are not
 * cheap: each is an mmap faulted in page by page, and their external
 * memory drives V8's full collections.
 */
const IDLE_CAP = 16 << 20;
const idleBuffers = new Map<Buffer, BufferPool>();
let idleBytes = 0;

function trimIdle(): void {
  for (const [buf, pool] of idleBuffers) {
    if (idleBytes <= IDLE_CAP) return;
    pool.evict(buf);
  }
}

/**
 * Reusable buffers of one size, so that the hot paths do not churn large
 * allocations through malloc and the garbage collector. get() hands out a
 * whole buffer; put() takes it (or any view of it) back. Beyond `keep` idle
 * buffers returned ones are freed at once; idle buffers also go, least
 * recently returned first, when all pools together hold more than IDLE_CAP.
 */
export class BufferPool {
  readonly size: number;
  readonly #keep: number;
  readonly #idle: Buffer[] = [];
  readonly #mine = new WeakSet<ArrayBuffer>();

  constructor(size: number, keep: number) {
    this.size = size;
    this.#keep = keep;
  }

  get(): Buffer {
    const b = this.#idle.pop();
    if (b) {
      idleBuffers.delete(b);
      idleBytes -= this.size;
      return b;
    }
    const fresh = Buffer.allocUnsafeSlow(this.size);
    this.#mine.add(fresh.buffer as ArrayBuffer);
    return fresh;
  }

  /** Whether buf is (a view of) one of this pool's buffers. */
  owns(buf: Uint8Array): boolean {
    return buf.buffer instanceof ArrayBuffer && this.#mine.has(buf.buffer);
  }

  /** Takes back a buffer (or a view of one); nothing may use it afterwards. */
  put(buf: Uint8Array): void {
    const ab = buf.buffer as ArrayBuffer;
    if (!this.#mine.has(ab) || ab.detached) return;
    if (this.#idle.length >= this.#keep) {
      release(buf);
      return;
    }
    const whole = Buffer.from(ab, 0, this.size);
    this.#idle.push(whole);
    idleBuffers.set(whole, this);
    idleBytes += this.size;
    trimIdle();
  }

  /** Frees one of its idle buffers (the process-wide cap is reached). */
  evict(buf: Buffer): void {
    const i = this.#idle.indexOf(buf);
    if (i >= 0) this.#idle.splice(i, 1);
    idleBuffers.delete(buf);
    idleBytes -= this.size;
    release(buf);
  }
}

/**
 * Reusable buffers in power-of-two size classes from `min` bytes up, the
 * last class exactly `max` bytes: get(n) hands out (a view of) the smallest
 * class that holds n, so a buffer is never more than twice what it holds.
 * Each class keeps about `keepBytes` idle (at least one buffer), within the
 * process-wide cap. Larger requests get a buffer of their own, freed when
 * put back.
 */
export class SizedPools {
  readonly #pools: BufferPool[] = [];

  constructor(min: number, max: number, keepBytes: number) {
    for (let size = min; ; size *= 2) {
      const s = Math.min(size, max);
      this.#pools.push(new BufferPool(s, Math.max(1, Math.floor(keepBytes / s))));
      if (s >= max) break;
    }
  }

  /** Bytes a request for n bytes occupies (for memory budgets). */
  sizeFor(n: number): number {
    return this.#pools.find((p) => p.size >= n)?.size ?? n;
  }

  /** A buffer of exactly n bytes. */
  get(n: number): Buffer {
    const pool = this.#pools.find((p) => p.size >= n);
    return pool ? pool.get().subarray(0, n) : Buffer.allocUnsafeSlow(n);
  }

  /** Whether buf is (a view of) one of these pools' buffers. */
  owns(buf: Uint8Array): boolean {
    return this.#pools.some((p) => p.owns(buf));
  }

  /** Takes back what get() gave (nothing may use it afterwards). */
  put(buf: Uint8Array): void {
    const pool = this.#pools.find((p) => p.owns(buf));
    if (pool) pool.put(buf);
    else release(buf);
  }

  /** One buffer holding parts back to back (length bytes in all), from these pools. */
  concat(parts: readonly Uint8Array[], length: number): Buffer {
    const out = this.get(length);
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }
}

function codeError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}
