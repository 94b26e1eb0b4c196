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

/** What readMany gives per file: its bytes, or why not. */
export type ReadManyResult = { data: Buffer } | { error: Error & { code?: string } };

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
 * Nothing outside sources/ knows how a source talks to its server.
 */
export interface Source {
  readonly kind: string;
  /** Where it reads from, for snapshot records and messages. */
  readonly location: string;
  stat(path: Buffer): Promise<SourceStat>;
  list(dir: Buffer): Promise<Listing>;
  read(path: Buffer, sizeHint: number, buffers?: ReadBuffers): AsyncIterable<Buffer>;
  /**
   * Optional: reads many small files at once into `into` (which has room for
   * the sum of their listed sizes). A file that grew past its listed size
   * fails with code EFBIG (the caller reads it with read()); other failures
   * are per file, with read()'s codes.
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
