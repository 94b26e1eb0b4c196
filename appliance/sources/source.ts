import type { NodeType, Timespec } from '../snapshot/index.ts';

/** What a source knows about one path (as lstat: symlinks are not followed). */
export interface SourceStat {
  type: NodeType;
  /** Permission bits (st_mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: Timespec;
  ctime: Timespec;
  /** File id on the server (inode, SMB file id), 0 when the source has none. */
  inode: number;
  device: number;
  links: number;
  rdev: number;
  /** Symlink target bytes, for symlinks. */
  target: Buffer | null;
  /** Creation (birth) time, where the source knows it (SMB). */
  btime?: Timespec;
  /** DOS/Windows file attributes (MS-FSCC §2.6), where the source has them (SMB). */
  attributes?: number;
}

export interface SourceEntry extends SourceStat {
  name: Buffer;
}

/** Buffers a caller lends a source to read into (a BufferPool fits). */
export interface ReadBuffers {
  readonly size: number;
  get(): Buffer;
  put(buf: Uint8Array): void;
}

/**
 * What readMany gives per file: its bytes as read (their length is what was
 * read, which may be less than the listed size), or why not.
 */
export type ReadManyResult = { data: Buffer } | { error: Error & { code?: string } };

/** What listMany gives per directory. */
export type ListManyResult = Listing | { error: Error & { code?: string } };

export interface Listing {
  /** Sorted by name bytes. */
  entries: SourceEntry[];
  /** Entries that vanished or could not be examined between listing and stat. */
  problems: { name: Buffer; error: Error }[];
}

/**
 * Where a backup reads from. Paths are absolute, '/'-separated, raw bytes.
 *
 * - stat MUST NOT follow a final symlink; rejects with a coded error
 *   (ENOENT, EACCES, …) when the path cannot be examined.
 * - list MUST return entries sorted by name bytes, without "." and "..";
 *   rejects when the directory itself cannot be read.
 * - read MUST yield the file's bytes in order, in pieces of any size, and
 *   MUST NOT follow a symlink that replaced the file since it was listed;
 *   rejects (before or during iteration) with a coded error. When `buffers`
 *   is given, pieces SHOULD be views of buffers taken from it (the caller
 *   puts them back); any buffer it took and did not yield, it puts back.
 *   Any other piece becomes the caller's: it MUST NOT share its memory
 *   (ArrayBuffer) with anything the source still uses, because the caller
 *   frees that memory (detaches it) as soon as it has stored the bytes.
 *   A source that can tell the file changed while it was read (times or
 *   size differ at the end from the start) SHOULD reject with code
 *   CHANGED_DURING_READ after yielding every byte; the caller reads it
 *   again once, and keeps the second read with a warning if it changed again.
 * - Losing the server: a source that reconnects after a dropped connection
 *   does so with a bounded policy (attempts and waits; a few minutes at
 *   most in all). When that gives up, the call rejects with
 *   HF_SOURCE_DISCONNECTED, and so does every later call, at once, without
 *   another attempt. HF_SOURCE_DISCONNECTED is never a per-path problem:
 *   the caller MUST stop (a backup fails; it keeps what it stored, and
 *   writes no snapshot that would show the rest as empty or missing).
 *   Every other rejection concerns the path asked about.
 * Nothing outside sources/ knows how a source talks to its server.
 */
export interface Source {
  readonly kind: string;
  /** Where it reads from, for snapshot records and messages. */
  readonly location: string;
  stat(path: Buffer): Promise<SourceStat>;
  list(dir: Buffer): Promise<Listing>;
  /**
   * Optional: lists several directories at once (a walk asks for the
   * directories it is about to enter). One result per path, in order: what
   * list() would resolve with, or the error it would reject with.
   * HF_SOURCE_DISCONNECTED rejects the whole call.
   */
  listMany?(dirs: readonly Buffer[]): Promise<ListManyResult[]>;
  read(path: Buffer, sizeHint: number, buffers?: ReadBuffers): AsyncIterable<Buffer>;
  /**
   * Optional: reads many small files at once into `into` (which has room for
   * the sum of their listed sizes). One result per path, in order.
   *
   * - Layout: the files' bytes MUST be laid out in `into` back to back in
   *   the order of `paths`, by the lengths actually read: the first file
   *   read starts at offset 0 and each later one where the one before it
   *   ended; a file that failed takes no room. Each `data` is the view of
   *   its file's bytes there (so `data.length` says how much was read).
   *   The caller MUST take each file's bytes from its `data` (never from
   *   offsets computed from the listed sizes), and may rely on the layout
   *   to store them without copying.
   * - A file is never given more bytes than its listed size: one that grew
   *   past it fails with code EFBIG (the caller reads it with read()); one
   *   that shrank gives what it has. Other failures are per file, with
   *   read()'s codes (ENOENT, EACCES, …); HF_SOURCE_DISCONNECTED rejects
   *   the whole call.
   */
  readMany?(paths: readonly Buffer[], sizes: readonly number[], into: Buffer): Promise<ReadManyResult[]>;
  close(): Promise<void>;
}

/** The code of a read that saw its file change underneath it (see Source.read). */
export const CHANGED_DURING_READ = 'ECHANGED';

/** Maps st_mode's type bits to a node type. */
export function typeOfMode(mode: number): NodeType {
  switch (mode & 0o170000) {
    case 0o100000: return 'file';
    case 0o040000: return 'dir';
    case 0o120000: return 'symlink';
    case 0o010000: return 'fifo';
    case 0o020000: return 'chardev';
    case 0o060000: return 'blockdev';
    default: return 'socket';
  }
}

export function joinPath(dir: Buffer, name: Buffer): Buffer {
  if (dir.length === 1 && dir[0] === 0x2f) return Buffer.concat([dir, name]);
  return Buffer.concat([dir, SLASH, name]);
}

const SLASH = Buffer.from('/');
