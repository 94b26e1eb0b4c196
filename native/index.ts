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

export { ReferenceChunker } from './reference-chunker.ts';

interface Binding {
  createChunker(gear: Uint8Array, min: number, avg: number, max: number, idKey: Uint8Array | null): object;
  chunkerUpdate(chunker: object, data: Uint8Array, final: boolean): Promise<Buffer>;
  chunkerReset(chunker: object): void;
  createSealer(encKey: Uint8Array, idKey: Uint8Array, zstdLevel: number): object;
  sealBlob(sealer: object, type: number, plain: Uint8Array, compress: boolean, id: Uint8Array | null): Promise<Buffer>;
  sealData(sealer: object, aad: Uint8Array, plain: Uint8Array, compress: boolean): Promise<Buffer>;
  open(sealer: object, aad: Uint8Array, sealed: Uint8Array, maxPlain: number, expectId: Uint8Array | null): Promise<[Buffer, boolean]>;
  sha256(parts: Uint8Array[]): Promise<Buffer>;
  scandir(path: Uint8Array): Promise<Buffer>;
  setTimes(path: Uint8Array, aSec: number, aNsec: number, mSec: number, mNsec: number, nofollow: boolean): Promise<void>;
  mknod(path: Uint8Array, mode: number, dev: number): Promise<void>;
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

  /** Seals a blob under AAD = type || id; the id is computed when not given. */
  async sealBlob(type: number, plain: Uint8Array, compress: boolean, id: Uint8Array | null): Promise<SealedBlob> {
    const out = await native.sealBlob(this.#handle, type, plain, compress, id);
    return { id: out.subarray(0, 32), sealed: out.subarray(32) };
  }

  /** Seals bytes under an arbitrary AAD (files: the AAD is their magic). */
  sealData(aad: Uint8Array, plain: Uint8Array, compress: boolean): Promise<Buffer> {
    return native.sealData(this.#handle, aad, plain, compress);
  }

  /**
   * Opens a sealed object. Rejects with HF_DECRYPT_FAILED (altered, wrong key or
   * AAD), HF_DECOMPRESS_FAILED (bad frame or larger than maxPlain) or
   * HF_BLOB_ID_MISMATCH (content is not what expectId names).
   */
  async open(aad: Uint8Array, sealed: Uint8Array, maxPlain: number, expectId: Uint8Array | null): Promise<{ plain: Buffer; allZero: boolean }> {
    const [plain, allZero] = await native.open(this.#handle, aad, sealed, maxPlain, expectId);
    return { plain, allZero };
  }
}

/** SHA-256 over the concatenation of parts, on the threadpool. */
export function sha256(parts: Uint8Array[]): Promise<Buffer> {
  return native.sha256(parts);
}

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

/** A directory's entries with lstat data, sorted by name bytes, in one threadpool job. */
export async function scandir(path: Uint8Array): Promise<ScanEntry[]> {
  const b = await native.scandir(path);
  const count = b.readUInt32LE(0);
  const out: ScanEntry[] = new Array(count);
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
      size: Number(b.readBigUInt64LE(o + 32)),
      ino: Number(b.readBigUInt64LE(o + 40)),
      dev: Number(b.readBigUInt64LE(o + 48)),
      nlink: Number(b.readBigUInt64LE(o + 56)),
      rdev: Number(b.readBigUInt64LE(o + 64)),
      mtimeSec: Number(b.readBigInt64LE(o + 72)),
      ctimeSec: Number(b.readBigInt64LE(o + 80)),
      blocks: Number(b.readBigUInt64LE(o + 88)),
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

/** mknod(2): FIFOs (no privilege needed) and device nodes (root). */
export function mknod(path: Uint8Array, mode: number, dev: number): Promise<void> {
  return native.mknod(path, mode, dev);
}

export function versions(): { zstd: string; openssl: string } {
  return native.versions();
}

function codeError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}
