import type { Hasher } from '../../native/index.ts';
import type { ReplicatedType } from '../protocol/index.ts';

export interface StoredFile {
  name: string;
  size: number;
}

export interface TenantUsage {
  files: number;
  bytes: number;
  partialBytes: number;
  trashBytes: number;
}

export interface TrashEntry {
  type: ReplicatedType;
  name: string;
  size: number;
  deletedAt: Date;
}

/**
 * An upload being received: bytes at absolute offsets, then verified and
 * made visible. One partial file per file (tenant, type, name, digest)
 * outlives connections and processes: that is what resume and stateless
 * front-ends rest on. While an upload is open it owns that file alone: a
 * second openUpload of the same file fails with HF_STORE_BUSY until the first
 * is closed or its process is gone, so no upload ever writes into bytes
 * another verified or committed (an upload that keeps no partial bytes, see
 * openUpload's size, needs no such claim).
 */
export interface Upload {
  /** Bytes stored so far (the partial file's length when opened). */
  readonly stored: number;
  /**
   * True when commit checks the digest without the caller's hash (S3: the
   * object store verifies a one-PUT file against it, and the upload's own
   * hash state covers multipart parts): the caller then need not hash the
   * bytes it writes, and passes no `hashed`.
   */
  readonly checksDigest: boolean;
  /**
   * Writes bytes (the pieces in order) at position. Writes come one after
   * another, each starting at or before the end of the bytes written so far:
   * repeating bytes is harmless, a hole is HF_STORE_BAD_OFFSET. A closed
   * upload keeps a prefix of them (a directory every byte, S3 whole parts).
   * `owned`: the caller gives the pieces away (it never writes to them
   * again), so the upload may keep them rather than a copy; otherwise they
   * are the caller's again once the write resolves.
   */
  write(parts: readonly Uint8Array[], position: number, owned?: boolean): Promise<void>;
  /**
   * Prepares to receive the rest of the file from at most `offset` (≤ stored):
   * resolves with where the next write must start (`at` ≤ offset; a directory
   * takes offset itself, S3 the last part boundary at or before it) and a
   * SHA-256 hasher that has consumed the bytes before `at` (a directory reads
   * them back; S3, which cannot read the parts of an incomplete upload,
   * continues from the hash state saved with each part).
   */
  resumeAt(offset: number): Promise<{ at: number; hasher: Hasher }>;
  /**
   * Checks that the partial file holds exactly size bytes hashing to the
   * digest (HF_STORE_DIGEST_MISMATCH otherwise, and the partial file is
   * discarded), makes it durable and visible under its name, and only then
   * resolves. `hashed` is the SHA-256 the caller computed over exactly the
   * bytes now in the file (as they arrived); without it the file is read
   * back and hashed. Committing a file that already exists resolves.
   */
  commit(size: number, hashed?: string): Promise<void>;
  /** Closes and deletes the partial file (its bytes are known to be wrong). */
  discard(): Promise<void>;
  /** Releases handles; the partial file stays for a later resume. */
  close(): Promise<void>;
}

/**
 * Where a store keeps its tenants' files. Implementations: FsStoreBackend (a
 * directory; several store processes may share it) and S3StoreBackend (a
 * bucket of an S3-compatible object store; any number of front-ends). Every method is safe to call from several processes at
 * once; nothing is cached that another front-end could make stale, except
 * usage figures (documented per implementation).
 *
 * - Names are validated by the caller (appliance/protocol) and again here.
 * - A tenant's files are invisible to every other tenant: every method takes
 *   the tenant, and no name can escape the tenant's space.
 * - remove MUST NOT destroy bytes: it moves the file to the tenant's trash,
 *   from which only purge (after the grace period) deletes.
 */
export interface StoreBackend {
  readonly location: string;
  /** Size of a complete file, or null. */
  stat(tenant: string, type: ReplicatedType, name: string): Promise<number | null>;
  /** Bytes stored of an upload in progress, or null when there is none. */
  partial(tenant: string, type: ReplicatedType, name: string, digest: string): Promise<number | null>;
  /**
   * True when an upload of a content-addressed file of this size stores it
   * with one write that fails if the file exists (optional; S3 up to its
   * single-PUT size): the caller need not look for the file first, the
   * commit finds it.
   */
  storesOnce?(size: number): boolean;
  /** partial() of many files at once, in their order (optional: S3 answers them from one listing of its upload states). */
  partials?(tenant: string, files: readonly { type: ReplicatedType; name: string; digest: string }[]): Promise<(number | null)[]>;
  /**
   * Opens (creating when needed) the upload of one file. `size`, when the
   * caller knows it, lets a backend take a cheaper path: S3 buffers a file
   * of at most its single-PUT size and stores it with one conditional PUT,
   * without a claim (such an upload is never HF_STORE_BUSY, and keeps no
   * partial bytes: `stored` is 0).
   */
  openUpload(tenant: string, type: ReplicatedType, name: string, digest: string, size?: number): Promise<Upload>;
  /** Reads a range of a complete file (into the caller's buffer of exactly length bytes, when given); HF_STORE_NOT_FOUND when missing. */
  read(tenant: string, type: ReplicatedType, name: string, offset: number, length: number, into?: Buffer): Promise<Buffer>;
  /** Complete files of a type with names after `after`, in name order, at most limit. */
  list(tenant: string, type: ReplicatedType, after: string | undefined, limit: number): Promise<{ files: StoredFile[]; more: boolean }>;
  /** Moves a file to the trash; resolves with the deletion time, or null when it was missing. */
  remove(tenant: string, type: ReplicatedType, name: string, now: Date): Promise<Date | null>;
  /** Files in the trash of one tenant. */
  trash(tenant: string): Promise<TrashEntry[]>;
  /** Puts trashed files back (all, or those matching); resolves with how many. */
  undelete(tenant: string, match?: (e: TrashEntry) => boolean): Promise<number>;
  /** Deletes for good what was trashed, and partial uploads last written, before `before`, for every tenant; resolves with how many. */
  purge(before: Date): Promise<number>;
  usage(tenant: string): Promise<TenantUsage>;
  /** Tenants that have any file. */
  tenants(): Promise<string[]>;
  close(): Promise<void>;
}
